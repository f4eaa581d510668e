"""TADS's own selections from the per-sample signals of §3.2 (pure functions).

- `static_score` — the static-weight rows of the paper's Table 2: `Q` ranks by q_φ, `Q+R` adds task
  relevance, `Q+R+D` adds the diversity factor, each signal standardised over the pool and weighted
  equally (no feedback). Relevance is a sample's standardised r_k for its most relevant task
  (max_k z(r_k)): relevant to any one task is relevant; a mean over tasks would reward samples that are
  vaguely like every task. `A` (not in the paper) is the pair's image-caption alignment, the cosine of the
  encoder's held-out heads (clip_score's signal): q_φ learns *which kind of noise* a pair shows from the weak
  labels, A *how well* its caption describes its image, which orders the pairs no labelling function flags.
- `budget_size` — the data budget in samples, set by the user's pool: a fraction of the *readable raw pool*
  (the paper keeps 36 % of the original data) or an absolute count, never a share of what an upstream stage
  happened to leave. Every size-matched selection (TADS's draws and final subset, the baselines) uses it.
- `threshold_selection` — the final subset {x : v(x) > τ} of §3.3, with the data budget as a bound: τ is
  raised where needed so that at most `max_keep` samples are kept; τ < 0 asks for τ at exactly that budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Table 2's static rows: the paper's three, and A (alignment) added to Q+R+D, the DVN's default prior
ABLATIONS = {"q": ("q",), "q_r": ("q", "r"), "q_r_d": ("q", "r", "d"), "q_r_d_a": ("q", "r", "d", "a")}
SIGNALS = ("q", "r", "d", "a")


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.mean()) / (x.std() + 1e-12)


def relevance_signal(r: np.ndarray) -> np.ndarray:
    """max_k z(r_k): each task's relevance standardised over the pool, the sample's best task."""
    r = np.asarray(r, np.float64)
    if r.ndim != 2 or r.shape[1] == 0:
        raise ValueError(f"relevance must be (samples, tasks) with at least one task, got shape {r.shape}")
    return np.max((r - r.mean(axis=0)) / (r.std(axis=0) + 1e-12), axis=1)


def static_score(q: np.ndarray, r: np.ndarray, d: np.ndarray, signals: tuple[str, ...],
                 a: np.ndarray | None = None) -> np.ndarray:
    """Equal-weight sum of the standardised signals named in `signals` (a subset of q, r, d, a); d enters as
    log d, which spans orders of magnitude; a is the pairs' alignment (needed when "a" is named)."""
    unknown = set(signals) - set(SIGNALS)
    if unknown or not signals:
        raise ValueError(f"signals must be a non-empty subset of {', '.join(SIGNALS)}, got {signals}")
    if "a" in signals and a is None:
        raise ValueError("the signal 'a' (image-caption alignment) was named but no alignment was given")
    parts = {"q": lambda: _z(q), "r": lambda: _z(relevance_signal(r)),
             "d": lambda: _z(np.log(np.maximum(np.asarray(d, np.float64), 1e-30))), "a": lambda: _z(a)}
    return np.sum([parts[s]() for s in signals], axis=0)


@dataclass
class Threshold:
    keep: np.ndarray
    tau: float  # the threshold applied (v > tau)
    requested_tau: float
    budget_bound: bool  # whether the budget raised τ above the requested value


def budget_size(n_pool: int, fraction: float, size: int = 0) -> int:
    """The data budget in samples: `size` when it is set (> 0), else round(fraction · n_pool), at least 1, where
    n_pool is the readable raw pool (every sample ingestion could read)."""
    if size < 0:
        raise ValueError(f"the data budget's size must be a count of samples (0 = use the fraction), got {size}")
    if size:
        return int(size)
    if not 0 < fraction <= 1:
        raise ValueError(f"the data budget (a fraction of the readable raw pool) must lie in (0, 1], got {fraction}")
    return max(1, int(round(fraction * n_pool)))


def threshold_selection(v: np.ndarray, tau: float, max_keep: int) -> Threshold:
    """{x : v(x) > τ}, keeping at most `max_keep` samples (ties at the cut broken by row order). τ < 0: the τ that
    keeps exactly min(max_keep, n)."""
    v = np.asarray(v, np.float64)
    if max_keep < 1:
        raise ValueError(f"the data budget must allow at least one sample, got {max_keep}")
    cap = min(int(max_keep), len(v))
    if tau >= 1:
        raise ValueError(f"tau must be < 1 (v is a probability), got {tau}")
    keep = v > tau if tau >= 0 else np.zeros(len(v), bool)
    if tau >= 0 and keep.sum() <= cap:
        return Threshold(keep, float(tau), float(tau), False)
    order = np.lexsort((np.arange(len(v)), -v))
    keep = np.zeros(len(v), bool)
    keep[order[:cap]] = True
    cut = float(v[order[cap]]) if cap < len(v) else float(v.min()) - 1e-12
    return Threshold(keep, cut, float(tau), tau >= 0)


@dataclass
class Signals:
    """The deduplicated pool's per-sample signals, row-aligned: q_φ, r (eq. 10), h_r (eq. 11), d (eq. 12), the
    diversity clusters and, where loaded, a: the image-caption alignment (held-out pair cosine)."""

    uids: np.ndarray
    q: np.ndarray
    r: np.ndarray
    h_r: np.ndarray
    d: np.ndarray
    clusters: np.ndarray
    task_names: list[str]
    a: np.ndarray | None = None

    def static(self, signals: tuple[str, ...]) -> np.ndarray:
        return static_score(self.q, self.r, self.d, signals, self.a)
