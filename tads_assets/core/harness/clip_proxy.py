"""The proxy of Algorithm 1 in `full` mode: a whole CLIP fine-tuned per reward with the CLIP trainer."""

from __future__ import annotations

import numpy as np
import torch

from tads_assets.core.harness import benchmark, clip_train
from tads_assets.core.metrics import eval_k


class ClipProxy:
    """The proxy in `full` mode (the paper's setting, for a GPU): a whole CLIP — the user's open_clip model
    or TADS-Tiny from a seeded initialisation — fine-tuned on S(θ) with the CLIP trainer for a fixed budget
    of samples seen, then scored on the validation sets. `make_model()` must return the same starting
    weights every call (equal subsets, equal rewards); `images`/`tokens` are the pool preprocessed once."""

    def __init__(self, make_model, images: torch.Tensor, tokens: torch.Tensor, tasks, val_sets: dict,
                 budget_samples_seen: int = 4096, batch_size: int = 128, lr: float = 1e-4, seed: int = 0,
                 device: str = "cpu", unnamed: dict[str, list[str]] | None = None):
        self.make_model, self.images, self.tokens = make_model, images, tokens
        self.tasks, self.val_sets, self.device = tasks, val_sets, device
        self.budget, self.batch_size, self.lr, self.seed = budget_samples_seen, batch_size, lr, seed
        self.n_adaptations = 0
        self.unnamed = unnamed or {}  # classes left out of each task's score, as the benchmark leaves them out

    def reward(self, mask: np.ndarray) -> tuple[float, dict[str, float]]:
        idx = torch.as_tensor(np.flatnonzero(np.asarray(mask, bool)))
        if len(idx) < 2:
            raise ValueError(f"the selected subset has {len(idx)} samples; the proxy needs at least 2")
        model, preprocess, tokenizer = self.make_model()
        params = clip_train.TrainParams(budget_samples_seen=self.budget, batch_size=self.batch_size, lr=self.lr,
                                        warmup_steps=0, seed=self.seed)
        res = clip_train.train_on_tensors(model, self.images[idx], self.tokens[idx], params, self.device,
                                          progress=lambda m: None)
        enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer, self.device)
        scores = benchmark.evaluate_model(self.tasks, self.val_sets, enc.encode_images, enc.encode_texts,
                                          unnamed=self.unnamed)
        self.n_adaptations += 1
        metrics = {s.task: eval_k(s) for s in scores}
        return float(sum(t.weight * metrics[t.name] for t in self.tasks)), metrics


def model_factory(encoder_spec: tuple[str, str, str], seed: int, device: str):
    """make_model() for ClipProxy: the same seeded starting weights on every call — TADS-Tiny for the builtin
    encoder, else the user's open_clip model and weights (a local file)."""
    kind, name, weights = encoder_spec

    def make_model():
        torch.manual_seed(seed)
        if kind == "builtin":
            return clip_train.create_model(clip_train.TrainParams.model, device)
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
        return model, preprocess, open_clip.get_tokenizer(name)

    return make_model
