"""The target model of Algorithm 1's task alignment: a CLIP trained from scratch on a selection the way
trained_clip trains one, scored on the tasks' validation items the way the head proxy is scored."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from tads_assets.core.atomic import write_json_atomic

from tads_assets.core.harness import clip_train
from tads_assets.core.method import proxy


def target_scores(images: Sequence[bytes], captions: Sequence[str], tasks, model: str, budget_samples_seen: int,
                  validation_items: int, seed: int, device: str,
                  progress: Callable[[str], None] = lambda m: None,
                  unnamed: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Eval_k per task of `model` trained from a seeded initialisation on the given pairs for
    `budget_samples_seen` samples seen (`clip_train.TrainParams`' other defaults, as trained_clip); a
    classification task over the classes the benchmark scores (`unnamed` left out, `proxy.validation_tasks`)."""
    torch.manual_seed(seed)
    net, preprocess, tokenizer = clip_train.create_model(model, device)
    params = clip_train.TrainParams(model=model, budget_samples_seen=budget_samples_seen, seed=seed)
    progress(f"task alignment: training {model} from scratch on {len(images)} samples "
             f"({params.budget_samples_seen} samples seen)")
    res = clip_train.train_on_tensors(net, clip_train.preprocess_images(list(images), preprocess, progress),
                                      tokenizer(list(captions)), params, device, progress=progress)
    enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer, device)
    val = proxy.validation_tasks(tasks, enc.encode_images, enc.encode_texts, "validation", validation_items, seed,
                                unnamed)
    return proxy.evaluate_embeddings(val, lambda x: x, lambda x: x)


log = logging.getLogger(__name__)


def target_key(uids: Sequence[str], tasks_sha256: str, model: str, budget_samples_seen: int, validation_items: int,
               seed: int, device: str, unnamed: Mapping[str, Sequence[str]] | None = None) -> str:
    """What the target's scores depend on: the selection (its uids: the pool's content enters through them), the
    task file, the training recipe, where it runs (CPU training is deterministic for a thread count) and the
    classes each task is scored over (`unnamed` left out)."""
    left_out = {k: sorted(v) for k, v in sorted((unnamed or {}).items()) if v}
    return clip_train.training_key(hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest(), device,
                                   tasks_sha256=tasks_sha256, model=model, budget_samples_seen=budget_samples_seen,
                                   validation_items=validation_items, seed=seed,
                                   **({"unnamed": left_out} if left_out else {}))  # every class scored: the key of before


def cached_target_scores(cache_dir: str | Path, key: str, compute: Callable[[], dict[str, float]],
                         progress: Callable[[str], None] = log.info) -> tuple[dict[str, float], bool]:
    """The target's Eval_k for `key` from `cache_dir`, else `compute()` and store it: (scores, hit). Re-running
    trained_dvn on the same pool and task set (a rematerialization, the task-change job after an edit that is
    undone) then skips the from-scratch training."""
    path = Path(cache_dir) / f"{key}.json"
    if path.exists():
        try:
            scores = json.loads(path.read_text())["scores"]
            progress(f"task alignment: target scores from the cache ({path.name})")
            return {k: float(v) for k, v in scores.items()}, True
        except (ValueError, KeyError, TypeError) as err:  # a damaged entry is recomputed, never trusted
            progress(f"task alignment: ignoring the damaged cache entry {path} ({err})")
    scores = compute()
    write_json_atomic({"key": key, "scores": scores}, path)
    return scores, False
