"""§3.3.1 the Data Value Network: v_θ(x) = σ(MLP_fuse([E_q(q_φ), E_r(h_r), E_d(d), E_a(a)])) (eq. 13 + E_a).

The paper's three streams with their own encoders: E_q and E_d embed the scalar quality score and diversity
factor (non-linear scales), E_r the task-relevance vector (inter-task dependencies); the fusion MLP ends in a
sigmoid, so v is a selection probability. The diversity factor enters as log d (it spans orders of
magnitude: d = |C|^-δ), standardised over the pool by the caller (`standardise_inputs`).

A deliberate variant, which Algorithm 1 turns on by default (`DvnConfig.alignment_stream`): a fourth stream E_a of the pair's
image-caption alignment a (the held-out pair cosine), standardised over the pool. q_φ says which kind of noise
a pair shows; where noise is the majority the budget reaches past the pairs the labelling functions vouch for,
and a orders those by how well the caption describes the image (docs/method.md, "The Data Value Network").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tads_assets.core.settings import BUDGET_FRACTION
from tads_assets.core.atomic import write_json_atomic


@dataclass
class DvnConfig:
    n_tasks: int
    embed_dim: int = 16
    hidden_dim: int = 32
    init_rate: float = BUDGET_FRACTION  # v starts near this everywhere: the fusion bias is logit(init_rate)
    alignment_stream: bool = False  # True: E_a(a), the variant's fourth stream (Algorithm1Params turns it on)
    # True: a per-sample prior logit p(x) (a static row's, `prior_logits`) is added to the fusion MLP's output,
    # whose last layer starts at zero, so v_θ = σ(p(x) + MLP(...)) is exactly σ(p) at θ₀ and the feedback loop
    # learns a correction to the row (Algorithm1Params init "residual", a deliberate variant)
    prior_skip: bool = False


def _stream(n_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim))


class DataValueNetwork(nn.Module):
    """Eq. 13."""

    def __init__(self, config: DvnConfig):
        super().__init__()
        self.config = config
        self.e_q = _stream(1, config.embed_dim)
        self.e_r = _stream(config.n_tasks, config.embed_dim)
        self.e_d = _stream(1, config.embed_dim)
        self.e_a = _stream(1, config.embed_dim) if config.alignment_stream else None
        streams = 4 if config.alignment_stream else 3
        self.fuse = nn.Sequential(nn.Linear(streams * config.embed_dim, config.hidden_dim), nn.GELU(),
                                  nn.Linear(config.hidden_dim, 1))
        with torch.no_grad():
            if config.prior_skip:  # the correction starts at zero: θ₀ is the prior logit itself
                self.fuse[-1].weight.zero_()
                self.fuse[-1].bias.zero_()
            else:
                self.fuse[-1].weight.mul_(0.1)
                self.fuse[-1].bias.fill_(math.log(config.init_rate / (1 - config.init_rate)))

    def logits(self, q: torch.Tensor, h_r: torch.Tensor, d: torch.Tensor, a: torch.Tensor | None = None,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.e_q(q[:, None]), self.e_r(h_r), self.e_d(d[:, None])]
        if self.e_a is not None:
            if a is None:
                raise ValueError("this Data Value Network has an alignment stream (E_a): pass the pairs' alignment a")
            parts.append(self.e_a(a[:, None]))
        elif a is not None:
            raise ValueError("this Data Value Network has no alignment stream (alignment_stream False), yet a was given")
        out = self.fuse(torch.cat(parts, dim=1)).squeeze(1)
        if self.config.prior_skip:
            if prior is None:
                raise ValueError("this Data Value Network corrects a prior logit (prior_skip): pass the samples' "
                                 "prior logits (dvn.prior_logits of the static row it was trained from)")
            return out + prior
        if prior is not None:
            raise ValueError("this Data Value Network has no prior skip (prior_skip False), yet prior logits were given")
        return out

    def forward(self, q: torch.Tensor, h_r: torch.Tensor, d: torch.Tensor, a: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(q, h_r, d, a, prior))


def standardise_inputs(q: np.ndarray, h_r: np.ndarray, d: np.ndarray, stats: tuple[float, float] | None = None,
                       a: np.ndarray | None = None, a_stats: tuple[float, float] | None = None) -> tuple[torch.Tensor, ...]:
    """Network inputs: q_φ as is (in [0, 1]), h_r as is (unit vectors), log d standardised by `stats`
    (default: this pool's, `log_d_stats`), and where given the alignment a standardised by `a_stats` (default:
    this pool's, `value_stats`): (q, h_r, log d) or (q, h_r, log d, a)."""
    mean, std = stats or log_d_stats(d)
    log_d = (np.log(np.maximum(np.asarray(d, np.float64), 1e-30)) - mean) / std
    out = (torch.as_tensor(np.asarray(q, np.float32)), torch.as_tensor(np.asarray(h_r, np.float32)),
           torch.as_tensor(log_d.astype(np.float32)))
    if a is None:
        return out
    a = np.asarray(a, np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"the alignment a holds {int((~np.isfinite(a)).sum())} non-finite values "
                         f"(first at row {int(np.flatnonzero(~np.isfinite(a))[0])})")
    a_mean, a_std = a_stats or value_stats(a)
    return (*out, torch.as_tensor(((a - a_mean) / a_std).astype(np.float32)))


def policy_loss(score: torch.Tensor, clusters: torch.Tensor, advantages: dict[int, float], params, beta: float,
                ) -> torch.Tensor:
    """Eq. 17: L(θ) = −Σ_C g_C Σ_{x∈C} s_θ(x) + β‖θ‖², the inner sum taken as a mean over the cluster (a big
    cluster does not outweigh a small one with the same advantage). The paper prints s = log v; `train_dvn`
    passes s = v by default — the chain rule through the scores, whose gradient is the first-order ascent
    direction of J when g_C ≈ ∂J/∂v_C (eq. 16) — because with log v the push on negative-advantage clusters
    is unbounded and drags every score towards 0 (measured in tests/core/test_fdo.py's world: the reward
    rises to 0.208 with log v, to 0.417, the optimum, with v)."""
    loss = torch.zeros((), dtype=score.dtype)
    for c, g in advantages.items():
        members = clusters == c
        if members.any():
            loss = loss - float(g) * score[members].mean()
    return loss + beta * sum((p ** 2).sum() for p in params)


DVN_CHECKPOINT = "dvn.safetensors"
DVN_INFO = "dvn_info.json"


def log_d_stats(d: np.ndarray) -> tuple[float, float]:
    """(mean, std) of log d over a pool: what `standardise_inputs` uses; saved with a checkpoint so that
    scoring another pool applies the same scale."""
    log_d = np.log(np.maximum(np.asarray(d, np.float64), 1e-30))
    return float(log_d.mean()), float(log_d.std() + 1e-8)


def value_stats(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) of a signal over a pool, saved with a checkpoint like `log_d_stats`."""
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std() + 1e-8)


def save_dvn(net: DataValueNetwork, out_dir, info: dict) -> dict:
    """The checkpoint (safetensors, no pickle) and a JSON beside it with the config and `info`."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{DVN_CHECKPOINT}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(out_dir / DVN_CHECKPOINT)
    full = {"config": asdict(net.config), **info}
    write_json_atomic(json.loads(json.dumps(full, default=float)), out_dir / DVN_INFO)
    return full


def load_dvn(out_dir) -> tuple[DataValueNetwork, dict]:
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / DVN_CHECKPOINT).exists():
        raise FileNotFoundError(f"no DVN checkpoint at {out_dir / DVN_CHECKPOINT}: materialize trained_dvn first")
    info = json.loads((out_dir / DVN_INFO).read_text())
    net = DataValueNetwork(DvnConfig(**info["config"]))  # saved before E_a existed: its default, the three streams
    net.load_state_dict(load_file(str(out_dir / DVN_CHECKPOINT)))
    return net.eval(), info


PRIOR_SHARPNESS = 2.0


def prior_logits(prior_score: np.ndarray, rate: float, sharpness: float = PRIOR_SHARPNESS) -> np.ndarray:
    """The logits of a static ranking at a selection rate: sharpness·z(prior) + logit(rate), z standardised over
    the pool — what `fit_prior` regresses v_θ onto, and what a `prior_skip` network adds to its output."""
    s = np.asarray(prior_score, np.float64)
    return sharpness * (s - s.mean()) / (s.std() + 1e-12) + math.log(rate / (1 - rate))


def fit_prior(net: DataValueNetwork, inputs: tuple, prior_score: np.ndarray, sharpness: float = PRIOR_SHARPNESS,
              steps: int = 300, lr: float = 1e-2, seed: int = 0) -> float:
    """θ₀ of Algorithm 1 from a static policy: regress v_θ onto σ(z(prior) + logit(init_rate)), i.e. the
    equal-weight static ranking (Algorithm1Params.prior) at the DVN's initial selection rate, by binary
    cross-entropy. The feedback loop then starts from Table 2's static row and has to improve on it. Returns the
    final loss."""
    torch.manual_seed(seed)
    target = torch.sigmoid(torch.as_tensor(prior_logits(prior_score, net.config.init_rate, sharpness),
                                           dtype=torch.float32))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(net.logits(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())
