"""§3.2.2 task relevance: how close a sample sits to each downstream task's textual prototypes.

A task's support set S_k is a list of texts: for classification, every template filled with every class
name; for retrieval, a seeded sample of the captions of its *validation* set (never the test set). A
sample is represented by its image and caption embeddings; by default its relevance to a prototype is the
mean of the two cosines (`modality="both"`), so a garment photo with a vague caption and a well-captioned
one both register.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tads_assets.core.vectors import l2_normalize as _unit

MODALITIES = ("image", "text", "both")


@dataclass
class RelevanceParams:
    """Eq. 10-11 settings: which embedding of a sample meets the prototypes, and the retrieval support size."""

    modality: str = "both"  # image, text or both (mean of the two cosines)
    max_support_captions: int = 256  # validation captions sampled as a retrieval task's prototypes
    seed: int = 0


def support_texts(kind: str, templates: Sequence[str], classes: Sequence[str] = (),
                  captions: Sequence[str] = (), max_captions: int = 256, seed: int = 0) -> list[str]:
    """The textual prototypes of one task (S_k)."""
    if kind == "classification":
        return [t.format(c) for c in classes for t in templates]
    if kind == "retrieval":
        captions = [c for c in captions if c]
        if not captions:
            raise ValueError("a retrieval task needs captions in its validation set to build its support set")
        idx = np.random.default_rng(seed).permutation(len(captions))[:max_captions]
        return [templates[0].format(captions[i]) if templates else captions[i] for i in sorted(idx)]
    raise ValueError(f"unknown task kind {kind!r}")


def relevance_scores(image_vec: np.ndarray, text_vec: np.ndarray, prototypes: Sequence[np.ndarray],
                     modality: str = "both") -> np.ndarray:
    """Eq. 10: r_k(x) = (1/|S_k|) Σ_{p∈S_k} cos(E(x), E(p)), one column per task (n × K).
    The mean of cosines to unit prototypes equals the cosine-weighted dot with their mean vector, which
    is how it is computed (O(n·d) per task, whatever |S_k|)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    img, txt = _unit(image_vec), _unit(text_vec)
    out = np.zeros((len(img), len(prototypes)), np.float32)
    for k, protos in enumerate(prototypes):
        centre = _unit(np.asarray(protos, np.float32)).mean(axis=0)
        if modality == "image":
            out[:, k] = img @ centre
        elif modality == "text":
            out[:, k] = txt @ centre
        else:
            out[:, k] = 0.5 * (img @ centre + txt @ centre)
    return out


def relevance_vector(scores: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Eq. 11: h_r(x) = v / (‖v‖₂ + ε), v = [r_1(x), …, r_K(x)]."""
    v = np.asarray(scores, np.float32)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + eps)
