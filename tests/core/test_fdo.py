"""Eq. 16 and the common random numbers of Algorithm 1 on a synthetic reward whose gradient is known."""

import numpy as np
import pytest

from tads_assets.core import fdo


def test_finite_differences_recover_a_known_gradient():
    # J = Σ_C w_C · (share of C selected) · |C| / n: raising every score in C by σ selects σ·|C| more
    # members in expectation, so E[g_C] = w_C · |C| / n
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(4), [2000, 1000, 3000, 2000])
    n = len(clusters)
    w = np.array([1.0, -2.0, 0.5, 0.0])
    v = rng.uniform(0.2, 0.6, n)

    def reward(mask):
        return float((w[clusters] * mask).sum() / n)

    j0, g = fdo.cluster_advantages(v, clusters, range(4), reward, fdo.uniforms(n, 1), sigma=0.1)
    expected = w * np.bincount(clusters) / n
    assert j0 == pytest.approx(reward(fdo.draw_subset(v, fdo.uniforms(n, 1))))
    assert np.allclose([g[c] for c in range(4)], expected, atol=0.03)
    assert g[3] == 0.0  # common random numbers: a cluster that does not matter gets exactly nothing


def test_common_random_numbers_remove_draw_noise():
    clusters = np.zeros(500, np.int64)
    v = np.full(500, 0.4)
    reward = lambda m: float(m.mean())  # noqa: E731
    u = fdo.uniforms(500, 3)
    _, g_small = fdo.cluster_advantages(v, clusters, [0], reward, u, sigma=1e-9)
    assert g_small[0] == 0.0  # with shared draws an infinitesimal perturbation changes nothing
    mask = fdo.draw_subset(fdo.perturb(v, clusters, 0, 0.2), u)
    assert mask.sum() >= fdo.draw_subset(v, u).sum()  # a raised score can only add members
    with pytest.raises(ValueError):
        fdo.cluster_advantages(v, clusters, [0], reward, u, sigma=0.0)
