"""§3.2.1 probabilistic quality inference, second half: the MLP quality predictor q_φ trained with the
hybrid objective of eq. 7-9 on a small true-label set D_true and the pool's weak labels ŷ_weak.

D_true: positives are sampled high-quality pairs (the pool's highest ŷ_weak); negatives are synthetic,
made from those positives by caption shuffling (another cluster's caption) and semantic mismatch
injection (the caption's main phrase swapped for another cluster's), their features recomputed by the
same operators. No demo truth is used anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tads_assets.core.method.operators import feature_matrix, noun_phrases

log = logging.getLogger(__name__)


@dataclass
class QualityParams:
    """Defaults of the quality-predictor stage (the Dagster Config class takes its defaults from here)."""

    hidden_dim: int = 64
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lambda_sup: float = 1.0  # λ1, eq. 9: weight of the BCE on D_true
    # λ2, eq. 9: weight of the MSE to ŷ_weak. D_true only teaches misalignment (its negatives are shuffled
    # or mismatched captions), so the weak labels carry every other defect; on the demo λ2 = 1 lets the BCE
    # term wash out what ŷ_weak knows about text-heavy images (AUC 0.958 vs 0.968 at λ2 = 3).
    lambda_weak: float = 3.0
    true_positives: int = 1_000  # positives in D_true (as many negatives are made from them)
    positive_quantile: float = 0.6  # positives are drawn from above this quantile of ŷ_weak (and its top tier: positive_candidates)
    shuffle_share: float = 0.5  # share of negatives made by caption shuffling (the rest: mismatch injection)
    # q_φ is the mean of this many fits, member i with seed + i: its own draw of D_true (positives and negatives),
    # its own initialisation and batch order. One fit's ROC-AUC moved by 0.005-0.013 between seeds on a zoo pool;
    # the mean of five was above every single fit on each pool measured (docs/results.md, "One quality model or five").
    members: int = 5
    seed: int = 0


class QualityMLP(nn.Module):
    """q_φ: standardised feature vector → two hidden layers → sigmoid."""

    def __init__(self, n_features: int, hidden_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.ReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((x - self.mean) / self.std).squeeze(-1))


@dataclass
class TrueSet:
    """D_true: anchor rows (indices into the pool table), new captions for the negatives, labels."""

    rows: np.ndarray  # pool row whose image each example uses
    captions: list[str | None]  # None: the row's own caption (a positive)
    labels: np.ndarray  # 1 positive, 0 negative
    how: list[str] = field(default_factory=list)  # "positive" | "shuffled" | "mismatch_injected"


def positive_candidates(weak: np.ndarray, quantile: float, wanted: int) -> np.ndarray:
    """The rows D_true's positives are drawn from: ŷ_weak at or above its `quantile` and at or above the
    `wanted`-th highest ŷ_weak (ties included).

    ŷ_weak is relative: a sample no LF flags gets the LabelModel's top value, whatever share of the pool is
    flagged. Where most of the pool is flagged (a noise majority), the quantile alone would reach into flagged
    tiers (blurred, foreign, ...) and teach q_φ that they are good; the second bound keeps the draw in the top
    tier whenever it holds `wanted` samples (measured on the noise-majority zoo pool: the positives' clean share 21 % →
    32 %, q_φ ROC-AUC 0.849 → 0.887, blurred 0.741 → 0.900). Where most of the pool shares the top value (no LF
    flags it), the quantile is the tighter bound; a ŷ_weak without ties gives the `wanted` highest."""
    weak = np.asarray(weak, np.float64)
    if not len(weak):
        return np.zeros(0, np.int64)
    cut = float(np.quantile(weak, quantile))
    kth = float(np.sort(weak)[::-1][min(max(int(wanted), 1), len(weak)) - 1])
    return np.flatnonzero(weak >= max(cut, kth - 1e-6))


def build_true_set(weak: np.ndarray, captions: list[str], clusters: np.ndarray, params: QualityParams) -> TrueSet:
    """Sample high-quality positives by ŷ_weak and derive one synthetic negative from each."""
    rng = np.random.default_rng(params.seed)
    n = len(weak)
    eligible = positive_candidates(weak, params.positive_quantile, params.true_positives)
    pos = rng.choice(eligible, size=min(params.true_positives, len(eligible)), replace=False)
    rows, caps, labels, how = list(pos), [None] * len(pos), [1] * len(pos), ["positive"] * len(pos)
    n_shuffle = int(round(params.shuffle_share * len(pos)))
    for r, i in enumerate(pos):
        donors = pos[clusters[pos] != clusters[i]]
        donor = int(rng.choice(donors)) if len(donors) else int(rng.integers(n))
        caption = captions[donor]
        kind = "shuffled"
        if r >= n_shuffle:
            own, theirs = noun_phrases(captions[i]), noun_phrases(captions[donor])
            if own and theirs:
                caption = captions[i].replace(own[0], theirs[0], 1)
                kind = "mismatch_injected"
        rows.append(int(i))
        caps.append(caption)
        labels.append(0)
        how.append(kind)
    return TrueSet(np.asarray(rows), caps, np.asarray(labels, np.float32), how)


class QualityEnsemble(nn.Module):
    """q_φ as the mean of several QualityMLP fits (`QualityParams.members`)."""

    def __init__(self, members: list[QualityMLP]):
        super().__init__()
        if not members:
            raise ValueError("a quality ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


@dataclass
class QualityFit:
    model: QualityMLP
    loss_per_epoch: list[float]
    sup_per_epoch: list[float]
    weak_per_epoch: list[float]
    seconds: float


@dataclass
class EnsembleFit:
    """The members' fits, each with the D_true it trained on, and their mean as one model."""

    model: QualityEnsemble
    fits: list[QualityFit]
    d_trues: list[DTrue]
    seconds: float

    def member_scores(self, x: np.ndarray) -> np.ndarray:
        """(members, rows): each member's q_φ on x."""
        return np.stack([predict_quality(f.model, x) for f in self.fits])


def train_quality_ensemble(features, captions: list[str], clusters: np.ndarray, params: QualityParams,
                           negative_features, device: str = "cpu",
                           progress: Callable[[str], None] = log.info) -> EnsembleFit:
    """`params.members` fits of eq. 9, member i on its own D_true drawn with seed `params.seed + i`
    (assemble_d_true) and trained with that seed; the model is their mean."""
    if params.members < 1:
        raise ValueError(f"QualityParams.members must be at least 1, got {params.members}")
    t0 = time.perf_counter()
    fits, d_trues = [], []
    weak, x_pool = features["y_weak"].to_numpy(), feature_matrix(features)  # the pool's matrix, shared by every member
    for i in range(params.members):
        member = dataclasses.replace(params, seed=params.seed + i)
        d_true = assemble_d_true(features, captions, clusters, member, negative_features, x_pool)
        fits.append(train_quality_model(d_true.x_pool, weak, d_true.x_true, d_true.y_true, member, device,
                                        progress=lambda m, i=i: progress(f"member {i + 1}/{params.members}: {m}")))
        d_trues.append(d_true)
    return EnsembleFit(QualityEnsemble([f.model for f in fits]), fits, d_trues, time.perf_counter() - t0)


def train_quality_model(x_pool: np.ndarray, y_weak: np.ndarray, x_true: np.ndarray, y_true: np.ndarray,
                        params: QualityParams, device: str = "cpu",
                        progress: Callable[[str], None] = log.info) -> QualityFit:
    """Eq. 9: L(φ) = λ1·E_{D_true}[BCE(q_φ(x), y)] (eq. 7) + λ2·E_{U'}[(q_φ(x) - ŷ_weak(x))²] (eq. 8).
    Each step takes one minibatch from the pool and one from D_true."""
    torch.manual_seed(params.seed)
    t0 = time.perf_counter()
    x_pool_t = torch.from_numpy(np.array(x_pool, np.float32)).to(device)
    y_weak_t = torch.from_numpy(np.array(y_weak, np.float32)).to(device)
    x_true_t = torch.from_numpy(np.array(x_true, np.float32)).to(device)
    y_true_t = torch.from_numpy(np.array(y_true, np.float32)).to(device)
    model = QualityMLP(x_pool_t.shape[1], params.hidden_dim).to(device)
    both = torch.cat([x_pool_t, x_true_t])
    model.mean.copy_(both.mean(0))
    model.std.copy_(both.std(0).clamp_min(1e-6))
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    gen = torch.Generator().manual_seed(params.seed)
    bce, mse = nn.BCELoss(), nn.MSELoss()
    n_pool, n_true = len(x_pool_t), len(x_true_t)
    bs = min(params.batch_size, max(32, n_pool // 8))  # small pools still get several steps per epoch
    steps = max(1, n_pool // bs)
    true_batch = max(1, min(n_true, bs // 2))
    losses, sups, weaks = [], [], []
    last = t0
    for epoch in range(params.epochs):
        order = torch.randperm(n_pool, generator=gen)
        tot = s_tot = w_tot = 0.0
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs].to(device)
            tidx = torch.randint(0, n_true, (true_batch,), generator=gen).to(device)
            l_weak = mse(model(x_pool_t[idx]), y_weak_t[idx])
            l_sup = bce(model(x_true_t[tidx]), y_true_t[tidx]) if n_true else torch.zeros((), device=device)
            loss = params.lambda_sup * l_sup + params.lambda_weak * l_weak
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot, s_tot, w_tot = tot + loss.item(), s_tot + l_sup.item(), w_tot + l_weak.item()
        losses.append(tot / steps)
        sups.append(s_tot / steps)
        weaks.append(w_tot / steps)
        if time.perf_counter() - last > 5 or epoch == params.epochs - 1:
            last = time.perf_counter()
            progress(f"q_phi epoch {epoch + 1}/{params.epochs}: loss {losses[-1]:.4f} (BCE on D_true {sups[-1]:.4f}, "
                     f"MSE to weak labels {weaks[-1]:.4f})")
    model.eval()
    return QualityFit(model, losses, sups, weaks, time.perf_counter() - t0)


@torch.inference_mode()
def predict_quality(model: QualityMLP | QualityEnsemble, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    dev = next(model.buffers()).device
    out = [model(torch.from_numpy(np.asarray(x[i : i + batch_size], np.float32)).to(dev)).cpu().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def save_quality_model(model: QualityMLP | QualityEnsemble, path, feature_columns: tuple[str, ...]) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    first = model.members[0] if isinstance(model, QualityEnsemble) else model
    meta = {"feature_columns": ",".join(feature_columns), "hidden_dim": str(first.net[0].out_features)}
    if isinstance(model, QualityEnsemble):
        meta["members"] = str(len(model.members))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_quality_model(path, device: str = "cpu") -> tuple[QualityMLP | QualityEnsemble, list[str]]:
    """A checkpoint save_quality_model wrote: an ensemble (metadata `members`) or a single fit."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path), device=device)
    hidden = int(meta["hidden_dim"])
    if "members" in meta:
        n_features = state["members.0.mean"].shape[0]
        model = QualityEnsemble([QualityMLP(n_features, hidden) for _ in range(int(meta["members"]))])
    else:
        model = QualityMLP(state["mean"].shape[0], hidden)
    model.to(device).load_state_dict(state)
    model.eval()
    return model, meta["feature_columns"].split(",")


@dataclass
class DTrue:
    """D_true as the model trains on it: the pool's feature matrix, and D_true's rows (positives, then the
    negatives) with their labels and how each was made."""

    x_pool: np.ndarray
    x_true: np.ndarray
    y_true: np.ndarray
    how: np.ndarray


def assemble_d_true(features, captions: list[str], clusters: np.ndarray, params: QualityParams,
                    negative_features, x_pool: np.ndarray | None = None) -> DTrue:
    """Eq. 7's D_true over the feature table `features` (with y_weak): positives sampled by ŷ_weak keep their
    row's features; each synthetic negative (a shuffled or mismatch-injected caption on a positive's image) gets
    the features `negative_features(rows, captions)` computes for those new pairs (a feature-table frame). `x_pool`:
    feature_matrix(features), where the caller already has it."""
    true_set = build_true_set(features["y_weak"].to_numpy(), captions, clusters, params)
    neg = true_set.labels == 0
    neg_feats = negative_features(true_set.rows[neg], [c for c, n in zip(true_set.captions, neg) if n])
    x_pool = feature_matrix(features) if x_pool is None else x_pool
    x_true = np.concatenate([x_pool[true_set.rows[~neg]], feature_matrix(neg_feats)])
    y_true = np.concatenate([true_set.labels[~neg], true_set.labels[neg]])
    how = np.array(true_set.how)[np.r_[np.flatnonzero(~neg), np.flatnonzero(neg)]]
    return DTrue(x_pool, x_true, y_true, how)
