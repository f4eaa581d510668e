"""Zero-shot metrics on embeddings, shared by the benchmark (test sets) and Algorithm 1's reward (validation
sets, eq. 15): class prototypes from prompt embeddings, top-k accuracy, recall@k, each with its chance level.

Only metrics that can tell models apart are defined: top-5 only with more than 5 classes (with 5 or fewer every
model scores 100 %), and retrieval hits by caption identity, so that images sharing one caption (templated
product titles) are not counted as misses of one another."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from tads_assets.core.vectors import l2_normalize as _unit

TOP5_RULE = "top5 only for tasks with more than 5 classes"
NAMING_RULE = ("classification over the classes the training pool's captions name: each token of the class name (as "
               "the trained model's tokenizer cuts it) met at least 30 times in training, expected (the share of the "
               "pool's captions holding it times the samples seen); a model trained from scratch has no word for the "
               "others, so their prompts are near-random embeddings and their test items are left out; with fewer "
               "than 2 such classes the task has no zero-shot metric")
RETRIEVAL_RULE = ("retrieval hits by caption identity (distinct captions as text queries): captions compared "
                  "stripped, whitespace collapsed and lower-cased; text→image ranks all images for each distinct "
                  "caption, a hit is any image with that caption; image→text ranks the distinct captions, a hit is "
                  "the image's own")


def named_items(classes: Sequence[str], labels: np.ndarray, unnamed: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """NAMING_RULE's cut of a labelled set: the classes scored (indices into `classes` of those not in `unnamed`,
    ascending) and the items labelled with one of them. `np.searchsorted(named, labels[items])` maps their labels
    onto the classes scored."""
    left_out = set(unnamed)
    named = [i for i, c in enumerate(classes) if c not in left_out]
    return named, np.flatnonzero(np.isin(labels, named))


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


def caption_groups(captions: Sequence[str] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the index of each of n items' distinct caption, the first item of each distinct caption): captions are the
    same when equal stripped, with runs of whitespace collapsed and lower-cased; numbered by first appearance.
    None: every item its own caption (0..n-1)."""
    if captions is None:
        return np.arange(n), np.arange(n)
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} items")
    ids: dict[str, int] = {}
    group = np.asarray([ids.setdefault(" ".join(c.split()).lower(), len(ids)) for c in captions], np.int64)
    return group, np.unique(group, return_index=True)[1]


def recall_at_k(query_emb: np.ndarray, gallery_emb: np.ndarray, k: int, query_ids: np.ndarray | None = None,
                gallery_ids: np.ndarray | None = None) -> float:
    """Share of queries with a hit among the k most similar gallery items; a hit is a gallery item whose id is the
    query's (default: query i's only hit is gallery item i). A query's rank is the number of gallery items strictly
    more similar than its best hit, so ties count for the query."""
    n = len(query_emb)
    if n == 0:
        return float("nan")
    sims = _unit(query_emb) @ _unit(gallery_emb).T
    qid = np.arange(n) if query_ids is None else np.asarray(query_ids)
    gid = np.arange(sims.shape[1]) if gallery_ids is None else np.asarray(gallery_ids)
    best = np.where(qid[:, None] == gid[None, :], sims, -np.inf).max(axis=1)
    rank = (sims > best[:, None]).sum(axis=1)
    return float((rank < k).mean())


def retrieval_chance(group: np.ndarray, k: int) -> dict[str, float]:
    """R@k of a random ranking for items with distinct-caption indices `group` (`caption_groups`): text→image, a
    caption shared by m of n images has one of them in a random top k with probability 1 − C(n−m, k)/C(n, k),
    averaged over the distinct captions; image→text, one hit among g distinct captions: min(1, k/g). Computed
    exactly (fractions): with all captions distinct both are min(1, k/n)."""
    counts = np.bincount(group)
    n, g, kk = len(group), len(counts), min(k, len(group))
    if g == 0:
        return {f"i2t_r{k}": float("nan"), f"t2i_r{k}": float("nan")}
    sizes, how_many = np.unique(counts, return_counts=True)
    t2i = sum(int(c) * (1 - Fraction(math.comb(n - int(m), kk), math.comb(n, kk))) for m, c in zip(sizes, how_many))
    return {f"i2t_r{k}": min(1.0, k / g), f"t2i_r{k}": float(t2i / g)}


@dataclass
class TaskScores:
    task: str
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)  # only the metrics defined for the task
    chance: dict[str, float] = field(default_factory=dict)  # the same keys
    n: int = 0
    info: dict[str, object] = field(default_factory=dict)  # how the metrics were defined (the report states it)


def score_classification(name: str, image_emb: np.ndarray, labels: np.ndarray, class_text_emb: np.ndarray,
                         n_classes: int, n_templates: int) -> TaskScores:
    """top1, and top5 only with more than 5 classes."""
    protos = class_prototypes(class_text_emb, n_classes, n_templates)
    ks = (1, 5) if n_classes > 5 else (1,)
    return TaskScores(name, "classification", {f"top{k}": topk_accuracy(image_emb, protos, labels, k) for k in ks},
                      {f"top{k}": k / n_classes for k in ks}, len(labels),
                      {"classes": n_classes, "definition": TOP5_RULE})


def score_retrieval(name: str, image_emb: np.ndarray, text_emb: np.ndarray,
                    captions: Sequence[str] | None = None) -> TaskScores:
    """R@1 and R@5 both ways with hits by caption identity (RETRIEVAL_RULE). `text_emb`: one row per image, its
    caption's embedding; `captions`: the images' captions (None: all distinct, image i's only match caption i)."""
    n = len(image_emb)
    if len(text_emb) != n:
        raise ValueError(f"{n} images but {len(text_emb)} caption embeddings")
    group, first = caption_groups(captions, n)
    cap_emb, cap_ids = np.asarray(text_emb)[first], np.arange(len(first))
    metrics, chance = {}, {}
    for k in (1, 5):
        metrics[f"i2t_r{k}"] = recall_at_k(image_emb, cap_emb, k, group, cap_ids)
        metrics[f"t2i_r{k}"] = recall_at_k(cap_emb, image_emb, k, cap_ids, group)
        chance.update(retrieval_chance(group, k))
    info = {"images": n, "distinct_captions": len(first), "i2t_queries": n, "t2i_queries": len(first),
            "definition": RETRIEVAL_RULE}
    return TaskScores(name, "retrieval", metrics, chance, n, info)


def eval_k(scores: TaskScores) -> float:
    """Eval_k of one task's scores (eq. 15): top-1 (classification), mean of the two R@1 (retrieval)."""
    m = scores.metrics
    return float(m["top1"]) if "top1" in m else 0.5 * float(m["i2t_r1"] + m["t2i_r1"])
