"""Zero-shot metrics on embeddings, shared by the benchmark (test sets) and Algorithm 1's reward (validation
sets, eq. 15): class prototypes from prompt embeddings, top-k accuracy, recall@k, each with its chance level."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tads_assets.core.vectors import l2_normalize as _unit


def class_prototypes(text_emb: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """Average each class's prompt embeddings (rows ordered class-major: class 0's templates first) and
    re-normalise: the zero-shot classifier's weights."""
    emb = _unit(text_emb).reshape(n_classes, n_templates, -1).mean(axis=1)
    return _unit(emb)


def topk_accuracy(image_emb: np.ndarray, prototypes: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k classes with the highest cosine."""
    if len(labels) == 0:
        return float("nan")
    scores = _unit(image_emb) @ prototypes.T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def recall_at_k(query_emb: np.ndarray, gallery_emb: np.ndarray, k: int) -> float:
    """Share of queries i whose own item i is among the k most similar gallery items."""
    n = len(query_emb)
    if n == 0:
        return float("nan")
    sims = _unit(query_emb) @ _unit(gallery_emb).T
    own = sims[np.arange(n), np.arange(n)]
    rank = (sims > own[:, None]).sum(axis=1)  # items strictly better than the right one
    return float((rank < k).mean())


@dataclass
class TaskScores:
    task: str
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    n: int = 0


def score_classification(name: str, image_emb: np.ndarray, labels: np.ndarray, class_text_emb: np.ndarray,
                         n_classes: int, n_templates: int) -> TaskScores:
    protos = class_prototypes(class_text_emb, n_classes, n_templates)
    k5 = min(5, n_classes)
    return TaskScores(name, "classification",
                      {"top1": topk_accuracy(image_emb, protos, labels, 1), "top5": topk_accuracy(image_emb, protos, labels, k5)},
                      {"top1": 1.0 / n_classes, "top5": k5 / n_classes}, len(labels))


def score_retrieval(name: str, image_emb: np.ndarray, text_emb: np.ndarray) -> TaskScores:
    n = len(image_emb)
    m = {"i2t_r1": recall_at_k(image_emb, text_emb, 1), "i2t_r5": recall_at_k(image_emb, text_emb, 5),
         "t2i_r1": recall_at_k(text_emb, image_emb, 1), "t2i_r5": recall_at_k(text_emb, image_emb, 5)}
    chance = {"i2t_r1": min(1.0, 1 / n), "i2t_r5": min(1.0, 5 / n), "t2i_r1": min(1.0, 1 / n), "t2i_r5": min(1.0, 5 / n)}
    return TaskScores(name, "retrieval", m, chance, n)


def eval_k(scores: TaskScores) -> float:
    """Eval_k of one task's scores (eq. 15): top-1 (classification), mean of the two R@1 (retrieval)."""
    m = scores.metrics
    return float(m["top1"]) if "top1" in m else 0.5 * float(m["i2t_r1"] + m["t2i_r1"])
