"""§3.3.2 feedback-driven optimisation (Algorithm 1), the parts that do not depend on the proxy.

S(θ) is drawn by Bernoulli trials m_x = [u_x < v_x] with one uniform u_x per sample and iteration; the
same u (common random numbers) serve J(V) and every perturbed J(V + δ_C), so a finite difference measures
the effect of the perturbation, not the luck of a new draw. Eq. 16: g_C = (J(V + δ_C) − J(V)) / σ, where
δ_C adds σ to the scores of cluster C's members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def uniforms(n: int, seed: int) -> np.ndarray:
    """The iteration's common random numbers u_x ~ U(0, 1)."""
    return np.random.default_rng(seed).random(n)


def draw_subset(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """m_x ~ Bernoulli(v_x), realised with the given uniforms."""
    return np.asarray(u) < np.asarray(v)


def perturb(v: np.ndarray, clusters: np.ndarray, cluster: int, sigma: float) -> np.ndarray:
    """V + δ_C: σ added to the scores of C's members (clipped to [0, 1])."""
    out = np.array(v, np.float64, copy=True)
    members = clusters == cluster
    out[members] = np.clip(out[members] + sigma, 0.0, 1.0)
    return out


def cluster_advantages(v: np.ndarray, clusters: np.ndarray, probe: Sequence[int], reward: Callable[[np.ndarray], float],
                       u: np.ndarray, sigma: float, base: float | None = None) -> tuple[float, dict[int, float]]:
    """(J(V), {C: g_C}) by eq. 16 for the probed clusters. `reward` maps a keep mask to J."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    j0 = reward(draw_subset(v, u)) if base is None else base
    g = {}
    for c in probe:
        g[int(c)] = (reward(draw_subset(perturb(v, clusters, c, sigma), u)) - j0) / sigma
    return j0, g
