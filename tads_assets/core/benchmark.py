"""Zero-shot evaluation of a CLIP-style encoder on the tasks' held-out sets (paper §4).

Classification: class-name prompts from the task's templates, text embeddings averaged per class and
re-normalised, top-1/top-5 accuracy. Retrieval: image→text and text→image recall@1 and @5 over the
paired set. Every figure comes with its chance level. Pure functions on arrays; `read_eval_set` reads a
task's WebDataset tar (members KEY.jpg|png, KEY.cls, KEY.txt).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tads_assets.core.encoder import l2_normalize as _unit
from tads_assets.core.formats import decode_rgb


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


@dataclass
class EvalSet:
    keys: list[str]
    images: list[Image.Image]
    labels: np.ndarray  # class index per image (-1 where the set has no label)
    captions: list[str]


def read_eval_set(path: str | Path, classes: Sequence[str] = ()) -> EvalSet:
    """A task's held-out WebDataset tar: KEY.jpg|png with KEY.cls (class index or name) and/or KEY.txt."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            key, _, ext = m.name.rpartition("/")[2].partition(".")
            members.setdefault(key, {})[ext.lower()] = tar.extractfile(m).read()
    keys, images, labels, captions = [], [], [], []
    index = {c: i for i, c in enumerate(classes)}
    for key in sorted(members):
        rec = members[key]
        blob = rec.get("jpg") or rec.get("jpeg") or rec.get("png") or rec.get("webp")
        if blob is None:
            raise ValueError(f"{path}: sample {key!r} has no image member")
        images.append(decode_rgb(blob))
        cls = rec.get("cls", b"").decode().strip()
        labels.append(int(cls) if cls.lstrip("-").isdigit() else index.get(cls, -1) if cls else -1)
        captions.append(rec.get("txt", b"").decode().strip())
        keys.append(key)
    return EvalSet(keys, images, np.asarray(labels, np.int64), captions)


def evaluate_task(task: dict, eval_set: EvalSet, encode_images: Callable, encode_texts: Callable) -> TaskScores:
    """Score one task (a DESIGN.md task entry) on one of its held-out sets."""
    image_emb = encode_images(eval_set.images)
    if task["kind"] == "classification":
        classes, templates = list(task["classes"]), list(task["templates"])
        if (eval_set.labels < 0).any():
            raise ValueError(f"task {task['name']}: {int((eval_set.labels < 0).sum())} samples have no class label")
        prompts = [t.format(c) for c in classes for t in templates]
        return score_classification(task["name"], image_emb, eval_set.labels, encode_texts(prompts), len(classes),
                                    len(templates))
    if task["kind"] == "retrieval":
        if any(not c for c in eval_set.captions):
            raise ValueError(f"task {task['name']}: retrieval samples need a caption (KEY.txt)")
        return score_retrieval(task["name"], image_emb, encode_texts(eval_set.captions))
    raise ValueError(f"task {task['name']}: unknown kind {task['kind']!r} (classification or retrieval)")


# The Table 1 columns per task kind (the paper reports top-1/top-5 and image→text / text→image R@1).
HEADLINE_METRICS = {"classification": ("top1", "top5"), "retrieval": ("i2t_r1", "t2i_r1")}


def load_eval_sets(tasks: Sequence, split: str) -> dict[str, EvalSet]:
    """Each task's held-out set of one split ("validation" or "test"), read once."""
    return {t.name: read_eval_set(t.sets[split], t.classes) for t in tasks}


def evaluate_model(tasks: Sequence, eval_sets: dict[str, EvalSet], encode_images: Callable,
                   encode_texts: Callable) -> list[TaskScores]:
    return [evaluate_task(t.as_dict(), eval_sets[t.name], encode_images, encode_texts) for t in tasks]


def headline(scores: Sequence[TaskScores]) -> dict[str, float]:
    """Table 1 columns of one model, in percent: `task/metric` for each headline metric, and `average`."""
    row = {f"{s.task}/{m}": 100.0 * s.metrics[m] for s in scores for m in HEADLINE_METRICS[s.kind]}
    row["average"] = float(np.mean(list(row.values()))) if row else float("nan")
    return row


def chance_row(scores: Sequence[TaskScores]) -> dict[str, float]:
    row = {f"{s.task}/{m}": 100.0 * s.chance[m] for s in scores for m in HEADLINE_METRICS[s.kind]}
    row["average"] = float(np.mean(list(row.values()))) if row else float("nan")
    return row
