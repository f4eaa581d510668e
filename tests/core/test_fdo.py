"""Eq. 16 and the common random numbers of Algorithm 1 on a synthetic reward whose gradient is known."""

import numpy as np
import pytest

from tads_assets.core.method import fdo


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


def _cluster_world(seed=0, n_clusters=6, per=200):
    """Six clusters: quality alternates high/low from cluster to cluster, while the first three lie in one
    task direction and the last three in another; the reward pays for the first task only, so the DVN has
    to learn to follow relevance and not quality."""
    from tads_assets.core.method import dvn

    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(n_clusters), per)
    q = np.where(clusters % 2 == 0, 0.8, 0.3) + 0.05 * rng.standard_normal(len(clusters))
    angle = np.where(clusters < n_clusters // 2, 0.2, 1.3) + 0.05 * rng.standard_normal(len(clusters))
    h = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return clusters, dvn.standardise_inputs(q, h, rng.uniform(0.1, 1.0, len(clusters)))


def test_algorithm_1_moves_selection_towards_the_clusters_that_pay_and_the_reward_rises():
    import torch

    from tads_assets.core.method import dvn

    clusters, inputs = _cluster_world()
    n = len(clusters)
    w = np.array([1.0, 0.5, 1.0, -1.0, -0.5, -1.0])

    def reward(mask):
        return float((w[clusters] * mask).sum() / n)

    torch.manual_seed(0)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=2))
    history = fdo.train_dvn(net, inputs, clusters, reward, fdo.FdoParams(meta_iterations=40, probe_clusters=6,
                                                                         sigma=0.3, lr=0.01))
    with torch.no_grad():
        v = net(*inputs).numpy()
    mean_v = np.array([v[clusters == c].mean() for c in range(len(w))])
    assert mean_v[w > 0].min() > mean_v[w < 0].max(), mean_v
    rewards = [r["reward"] for r in history]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.05, rewards


def test_the_printed_log_v_surrogate_reaches_less_reward_than_the_chain_rule_one():
    import torch

    from tads_assets.core.method import dvn

    clusters, inputs = _cluster_world()
    w = np.array([1.0, 0.5, 1.0, -1.0, -0.5, -1.0])
    final = {}
    for surrogate in ("v", "log_v"):
        torch.manual_seed(0)
        net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=2))
        history = fdo.train_dvn(net, inputs, clusters, lambda m: float((w[clusters] * m).sum() / len(clusters)),
                                fdo.FdoParams(meta_iterations=40, probe_clusters=6, sigma=0.3, lr=0.01,
                                              surrogate=surrogate, rate=None))  # Bernoulli(v), as printed
        final[surrogate] = history[-1]["reward"]
    assert final["v"] > final["log_v"] + 0.1, final
    with pytest.raises(ValueError, match="surrogate"):
        fdo.train_dvn(net, inputs, clusters, lambda m: 0.0, fdo.FdoParams(surrogate="log"))


def test_budget_probabilities_hold_the_expected_size_and_a_perturbation_moves_mass_between_clusters():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.05, 0.95, 1000)
    p = fdo.budget_probabilities(v, 0.3)
    assert p.sum() == pytest.approx(300) and (p <= 1).all() and (p >= 0).all()
    assert np.argsort(p, kind="stable").tolist() == np.argsort(v, kind="stable").tolist()  # order kept
    capped = fdo.budget_probabilities(np.r_[np.full(10, 0.99), np.full(90, 0.01)], 0.5)
    assert (capped[:10] == 1.0).all() and capped.sum() == pytest.approx(50)  # the excess goes to the rest
    clusters = np.repeat([0, 1], 500)
    up = fdo.budget_probabilities(fdo.perturb(v, clusters, 0, 0.3), 0.3)
    assert up.sum() == pytest.approx(300)
    assert up[clusters == 0].sum() > p[clusters == 0].sum() and up[clusters == 1].sum() < p[clusters == 1].sum()
    assert fdo.budget_probabilities(v, None) is not None and np.allclose(fdo.budget_probabilities(v, None), v)
    with pytest.raises(ValueError):
        fdo.budget_probabilities(v, 0.0)


def test_at_a_fixed_budget_the_reward_curve_rises_while_the_selected_count_stays_put():
    import torch

    from tads_assets.core.method import dvn

    clusters, inputs = _cluster_world()
    w = np.array([1.0, 0.5, 1.0, -1.0, -0.5, -1.0])
    torch.manual_seed(0)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=2))
    history = fdo.train_dvn(net, inputs, clusters, lambda m: float((w[clusters] * m).sum() / len(clusters)),
                            fdo.FdoParams(meta_iterations=30, probe_clusters=6, sigma=0.3, lr=0.01, rate=0.25))
    counts = [h["selected"] for h in history]
    assert max(abs(c - 300) for c in counts) < 45, counts  # 25 % of 1200, within Bernoulli noise
    rewards = [h["reward"] for h in history]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.05, rewards
    # the DVN's deterministic selection at the budget gains too, and it holds exactly rate·N samples
    tops = [h["reward_top"] for h in history]
    assert tops[-1] > tops[0] + 0.02 and np.mean(tops[-5:]) > np.mean(tops[:5]), tops
    assert fdo.top_fraction(np.array([0.1, 0.9, 0.5, 0.7]), 0.5).tolist() == [False, True, False, True]
