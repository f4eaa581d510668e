"""Zero-shot evaluation of a CLIP-style encoder on the tasks' held-out sets (paper §4).

Classification: class-name prompts from the task's templates, text embeddings averaged per class and
re-normalised, top-1 accuracy, and top-5 for tasks with more than 5 classes — over the classes the training pool's
captions name (`NAMING_RULE`; given a `Vocabulary`). Retrieval: image→text and text→image recall@1 and @5 with hits
by caption identity (the distinct captions are the text queries and the image→text gallery). Every figure comes
with its chance level (`tads_assets.core.metrics`); the held-out sets are read by `tads_assets.core.io.eval_sets`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tads_assets.core.io.eval_sets import EvalSet
from tads_assets.core.metrics import (NAMING_RULE, RETRIEVAL_RULE, TOP5_RULE, TaskScores, named_items,
                                      score_classification, score_retrieval)


METRICS_VERSION = 3  # 2-3: classification over the classes the pool names (NAMING_RULE); runs cached before are rescored


MIN_NAME_EXPOSURES = 30  # a class is named when each token of its name is seen this many times in training, expected


@dataclass(frozen=True)
class Vocabulary:
    """The words a model trained on a pool can know: how many of the pool's captions hold each token id, as the
    model's tokenizer cuts them (so nothing past its context length), and the tokenizer to cut class names with."""

    counts: dict[int, int]
    n_captions: int
    tokenize: Callable

    @classmethod
    def of_captions(cls, captions: Sequence[str], tokenize: Callable, batch_size: int = 4096) -> "Vocabulary":
        """`tokenize`: open_clip's tokenizer (texts -> a padded LongTensor of token ids); the ids it gives the empty
        text (start, end, padding) are not words."""
        special = set(_ids(tokenize([""])[0])) | {0}
        counts: dict[int, int] = {}
        for i in range(0, len(captions), batch_size):
            rows = np.asarray(tokenize(list(captions[i : i + batch_size])))
            for row in rows:
                for t in set(row.tolist()) - special:
                    counts[t] = counts.get(t, 0) + 1
        return cls(counts, len(captions), tokenize)

    def unnamed(self, names: Sequence[str], samples_seen: int) -> list[str]:
        """The names with a token a model trained for `samples_seen` samples drawn from this pool meets fewer than
        MIN_NAME_EXPOSURES times, expected (share of the captions holding it × samples seen): its embedding stays
        near its random start. "top" in seven captions about coffee seen "from the top" names no garment."""
        special = set(_ids(self.tokenize([""])[0]))
        rows = np.asarray(self.tokenize(list(names)))
        need = MIN_NAME_EXPOSURES * self.n_captions / max(int(samples_seen), 1)
        return [n for n, row in zip(names, rows)
                if any(self.counts.get(t, 0) < need for t in set(_ids(row)) - special)]


def unnamed_classes(tasks, vocabulary: Vocabulary, samples_seen: int) -> dict[str, list[str]]:
    """Per classification task, the class names a model trained for `samples_seen` samples on the vocabulary's pool
    has no word for (NAMING_RULE): the classes the benchmark leaves out of its score. Algorithm 1 scores its
    validation sets the same way (`proxy.validation_tasks`), so the selection is chosen on the metric it is
    reported with."""
    return {t.name: vocabulary.unnamed(list(t.classes), samples_seen) for t in tasks if t.kind == "classification"}


def _ids(row) -> list[int]:
    return [int(t) for t in np.asarray(row) if int(t) != 0]


def evaluate_task(task: dict, eval_set: EvalSet, encode_images: Callable, encode_texts: Callable,
                  vocabulary: Vocabulary | None = None, samples_seen: int = 0,
                  unnamed: Sequence[str] | None = None) -> TaskScores:
    """Score one task (a task entry of the task file, docs/architecture.md) on one of its held-out sets. With a
    `vocabulary` (and the model's `samples_seen`), a classification task is scored over the classes its training
    named (NAMING_RULE); `unnamed`: those left out, decided already (`unnamed_classes`)."""
    if task["kind"] == "classification":
        classes, templates = list(task["classes"]), list(task["templates"])
        if (eval_set.labels < 0).any():
            raise ValueError(f"task {task['name']}: {int((eval_set.labels < 0).sum())} samples have no class label")
        if unnamed is None:
            unnamed = vocabulary.unnamed(classes, samples_seen) if vocabulary is not None else []
        named, items = named_items(classes, eval_set.labels, unnamed)
        info = {"unnamed_classes": ", ".join(unnamed)} if unnamed else {}
        if len(named) < 2:
            return TaskScores(task["name"], "classification", {}, {}, 0,
                              {"classes": len(classes), **info, "definition": NAMING_RULE})
        labels = np.searchsorted(named, eval_set.labels[items])  # named is sorted: class index -> its position
        prompts = [t.format(classes[i]) for i in named for t in templates]
        scores = score_classification(task["name"], encode_images([eval_set.images[i] for i in items]), labels,
                                      encode_texts(prompts), len(named), len(templates))
        scores.info.update(info, **({"items_left_out": len(eval_set.labels) - len(items)} if unnamed else {}))
        return scores
    image_emb = encode_images(eval_set.images)
    if task["kind"] == "retrieval":
        if any(not c for c in eval_set.captions):
            raise ValueError(f"task {task['name']}: retrieval samples need a caption (KEY.txt)")
        return score_retrieval(task["name"], image_emb, encode_texts(eval_set.captions), eval_set.captions)
    raise ValueError(f"task {task['name']}: unknown kind {task['kind']!r} (classification or retrieval)")


# The Table 1 columns per task kind (the paper reports top-1/top-5 and image→text / text→image R@1); a task
# shows those of them defined for it (no top5 with 5 classes or fewer).
HEADLINE_METRICS = {"classification": ("top1", "top5"), "retrieval": ("i2t_r1", "t2i_r1")}


def evaluate_model(tasks: Sequence, eval_sets: dict[str, EvalSet], encode_images: Callable,
                   encode_texts: Callable, vocabulary: Vocabulary | None = None, samples_seen: int = 0,
                   unnamed: dict[str, Sequence[str]] | None = None) -> list[TaskScores]:
    return [evaluate_task(t.as_dict(), eval_sets[t.name], encode_images, encode_texts, vocabulary, samples_seen,
                          unnamed.get(t.name, []) if unnamed is not None else None)
            for t in tasks]


def _row(scores: Sequence[TaskScores], field: str) -> dict[str, float]:
    """`field`'s value (metrics or chance) of each headline metric defined for its task, and their mean."""
    row = {f"{s.task}/{m}": 100.0 * getattr(s, field)[m] for s in scores for m in HEADLINE_METRICS[s.kind]
           if m in s.metrics}
    row["average"] = float(np.mean(list(row.values()))) if row else float("nan")
    return row


def headline(scores: Sequence[TaskScores]) -> dict[str, float]:
    """Table 1 columns of one model, in percent: `task/metric` for each headline metric defined for the task, and
    `average` (their mean)."""
    return _row(scores, "metrics")


def mean_over_runs(rows: Sequence[dict[str, float]]) -> dict:
    """One subset's Table 1 columns from several CLIPs trained on it (training seeds): each column's mean, the
    number of runs (`repeats`), their averages (`average_runs`) and the standard deviation of those (`average_sd`,
    None for one run). The runs must share their columns: they see the same samples, so the naming rule names the
    same classes."""
    if not rows:
        raise ValueError("mean_over_runs: no runs")
    columns = list(rows[0])
    if any(list(r) != columns for r in rows[1:]):
        raise ValueError(f"mean_over_runs: the runs' columns differ ({[list(r) for r in rows]})")
    averages = [r["average"] for r in rows]
    return {**{c: float(np.mean([r[c] for r in rows])) for c in columns}, "repeats": len(rows),
            "average_sd": float(np.std(averages, ddof=1)) if len(rows) > 1 else None, "average_runs": averages}


def chance_row(scores: Sequence[TaskScores]) -> dict[str, float]:
    """The same columns for a guess (each metric's chance level)."""
    return _row(scores, "chance")


def definitions(scores: Sequence[TaskScores]) -> dict:
    """How the metrics were defined, for a report: the rules, and per task what its scores rest on (classes;
    images, distinct captions, queries each way)."""
    return {"top5": TOP5_RULE, "naming": NAMING_RULE, "retrieval": RETRIEVAL_RULE,
            "tasks": {s.task: {"kind": s.kind, **s.info} for s in scores}}
