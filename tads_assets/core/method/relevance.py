"""§3.2.2 task relevance: how close a sample sits to each downstream task's textual prototypes.

A task's support set S_k is a list of texts: for classification, every template filled with every class
name; for retrieval, a seeded sample of the captions of its *validation* set (never the test set). A
sample is represented by its image and caption embeddings; by default its relevance to a prototype is the
mean of the two cosines (`modality="both"`), so a garment photo with a vague caption and a well-captioned
one both register.

How the prototypes combine (`aggregate`): eq. 10 as printed averages the cosines to every prototype
(`"mean"`). Every prompt of a classification task shares its template words ("a photo of a ..."), so their
mean is mostly the template, and a caption that says nothing ("photo", "image", "IMG_0042.jpg") sits closer to it
than a faithful caption does (measured across the zoo: a vague caption's relevance above a clean pair's). The
default, `"nearest"`, is a deliberate variant: a classification task's prototypes are its classes (each the mean
of its templates, as a zero-shot classifier builds them), a retrieval task's are its captions, and r_k(x) is the
cosine to the nearest one — "is this pair one of the things the task asks about".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tads_assets.core.vectors import l2_normalize as _unit

MODALITIES = ("image", "text", "both")
AGGREGATES = ("nearest", "mean")


@dataclass
class RelevanceParams:
    """Eq. 10-11 settings: which embedding of a sample meets the prototypes, and the retrieval support size."""

    modality: str = "both"  # image, text or both (mean of the two cosines)
    # "nearest": cosine to the nearest prototype (a class's templates averaged; each retrieval caption); "mean": eq. 10
    # as printed, the mean over every prototype (dominated by the templates' shared words; see the module docstring)
    aggregate: str = "nearest"
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


def task_prototypes(kind: str, support: np.ndarray, n_classes: int = 0, aggregate: str = "nearest") -> np.ndarray:
    """The prototype vectors of one task from its embedded support set (`support_texts`' order): under "nearest", a
    classification task's n_classes class prototypes (the unit mean of each class's templates); otherwise the support
    vectors themselves (unit length)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    support = _unit(np.asarray(support, np.float32))
    if kind != "classification" or aggregate == "mean":
        return support
    if n_classes < 1 or len(support) % n_classes:
        raise ValueError(f"{len(support)} prompts do not split into {n_classes} classes")
    return _unit(support.reshape(n_classes, len(support) // n_classes, -1).mean(axis=1))


def relevance_scores(image_vec: np.ndarray, text_vec: np.ndarray, prototypes: Sequence[np.ndarray],
                     modality: str = "both", aggregate: str = "mean", chunk: int = 8192) -> np.ndarray:
    """r_k(x), one column per task (n × K), with E(x) the image's, the caption's or (both) the mean of the two
    cosines. "mean": eq. 10, r_k(x) = (1/|S_k|) Σ_{p∈S_k} cos(E(x), E(p)) — the mean of cosines to unit prototypes
    equals the dot with their mean vector, which is how it is computed (O(n·d) per task). "nearest": max over the
    prototypes p of cos(E(x), E(p)) (in row blocks of `chunk`)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    img, txt = _unit(image_vec), _unit(text_vec)
    weights = {"image": (1.0, 0.0), "text": (0.0, 1.0), "both": (0.5, 0.5)}[modality]
    out = np.zeros((len(img), len(prototypes)), np.float32)
    for k, protos in enumerate(prototypes):
        protos = _unit(np.asarray(protos, np.float32))
        if aggregate == "mean":
            centre = protos.mean(axis=0)
            out[:, k] = weights[0] * (img @ centre) + weights[1] * (txt @ centre)
            continue
        for a in range(0, len(img), chunk):
            sims = weights[0] * (img[a : a + chunk] @ protos.T) + weights[1] * (txt[a : a + chunk] @ protos.T)
            out[a : a + chunk, k] = sims.max(axis=1)
    return out


def relevance_vector(scores: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Eq. 11: h_r(x) = v / (‖v‖₂ + ε), v = [r_1(x), …, r_K(x)]."""
    v = np.asarray(scores, np.float32)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + eps)
