"""The target model of Algorithm 1's task alignment: a CLIP trained from scratch on a selection the way
trained_clip trains one, scored on the tasks' validation items the way the head proxy is scored."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tads_assets.core.harness import clip_train
from tads_assets.core.method import proxy


def target_scores(images: Sequence[bytes], captions: Sequence[str], tasks, model: str, budget_samples_seen: int,
                  validation_items: int, seed: int, device: str,
                  progress: Callable[[str], None] = lambda m: None) -> dict[str, float]:
    """Eval_k per task of `model` trained from a seeded initialisation on the given pairs for
    `budget_samples_seen` samples seen (`clip_train.TrainParams`' other defaults, as trained_clip)."""
    torch.manual_seed(seed)
    net, preprocess, tokenizer = clip_train.create_model(model, device)
    params = clip_train.TrainParams(model=model, budget_samples_seen=budget_samples_seen, seed=seed)
    progress(f"task alignment: training {model} from scratch on {len(images)} samples "
             f"({params.budget_samples_seen} samples seen)")
    res = clip_train.train_on_tensors(net, clip_train.preprocess_images(list(images), preprocess, progress),
                                      tokenizer(list(captions)), params, device, progress=progress)
    enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer, device)
    val = proxy.validation_tasks(tasks, enc.encode_images, enc.encode_texts, "validation", validation_items, seed)
    return proxy.evaluate_embeddings(val, lambda x: x, lambda x: x)
