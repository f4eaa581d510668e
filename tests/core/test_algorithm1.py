"""Algorithm 1 as one library call, on synthetic signals and a reward whose best selection is known."""

from dataclasses import dataclass, replace

import numpy as np
import pytest

from tads_assets.core.method.algorithm1 import Algorithm1Params, align_tasks, run_algorithm1
from tads_assets.core.method.fdo import FdoParams
from tads_assets.core.method.selection import Signals


@dataclass
class Task:
    name: str
    weight: float = 1.0


@dataclass
class Val:
    name: str
    kind: str = "classification"
    n_classes: int = 4
    image_feats: np.ndarray = None


class GoodSamplesReward:
    """J = share of the selection that is `good` (a known set); Eval_k per task the same share."""

    def __init__(self, good: np.ndarray, tasks):
        self.good, self.tasks, self.n_adaptations = good, tasks, 0
        self.val = [Val(t.name) for t in tasks]
        self.weights = {t.name: t.weight for t in tasks}

    def reweight(self, weights):
        self.weights = dict(weights)

    def reward(self, mask):
        self.n_adaptations += 1
        share = float(self.good[mask].mean()) if mask.any() else 0.0
        metrics = {k: share for k in self.weights}
        return sum(w * share for w in self.weights.values()), metrics


def _signals(n=600, seed=0):
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.4
    q = np.where(good, rng.normal(0.7, 0.1, n), rng.normal(0.4, 0.1, n))  # q tells good from bad, noisily
    r = rng.random((n, 2))
    clusters = rng.integers(0, 10, n)
    d = 1.0 / np.bincount(clusters)[clusters] ** 0.5
    a = np.where(good, rng.normal(0.3, 0.1, n), rng.normal(0.2, 0.1, n))  # alignment: a weaker hint
    sig = Signals(np.array([f"u{i}" for i in range(n)]), q, r, r / np.linalg.norm(r, axis=1, keepdims=True), d,
                  clusters, ["a", "b"], a)
    return sig, good


def _params(**kw):
    return Algorithm1Params(fdo=FdoParams(meta_iterations=4, probe_clusters=6, rate=0.3), fdo_clusters=8, **kw)


def test_the_trained_values_rank_the_known_good_samples_first():
    sig, good = _signals()
    tasks = [Task("a"), Task("b")]
    res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params())
    assert res.v.shape == (len(good),) and np.all((res.v > 0) & (res.v < 1))
    top = np.argsort(-res.v)[: int(0.3 * len(good))]
    assert good[top].mean() > good.mean() + 0.2  # the DVN's top 30 % is far richer in good samples than the pool
    assert len(res.history) == 4 and res.prior_loss is not None and res.reward_top_final == pytest.approx(good[top].mean() * 2, abs=0.05)


def test_equal_inputs_give_equal_values_and_a_task_mismatch_is_refused():
    sig, good = _signals()
    tasks = [Task("a"), Task("b")]
    a = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params())
    b = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params())
    assert np.array_equal(a.v, b.v) and np.array_equal(a.clusters, b.clusters)
    with pytest.raises(ValueError, match="rematerialize relevance_vectors"):
        run_algorithm1(sig, [Task("b"), Task("a")], GoodSamplesReward(good, tasks), _params())
    with pytest.raises(ValueError, match="init must be one of"):
        _params(init="random")
    with pytest.raises(ValueError, match="prior must be one of"):
        _params(prior="q_d")
    with pytest.raises(ValueError, match="alignment_stream on"):
        _params(alignment_stream=False)  # the default prior ranks by a
    with pytest.raises(ValueError, match="needs the pairs' alignment"):
        run_algorithm1(replace(sig, a=None), tasks, GoodSamplesReward(good, tasks), _params())
    with pytest.raises(ValueError, match="joint vectors"):
        run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params(fdo_cluster_space="embeddings"))


def test_task_alignment_scales_each_weight_by_what_the_target_learns():
    sig, good = _signals()
    tasks = [Task("a", 1.0), Task("b", 2.0)]
    reward = GoodSamplesReward(good, tasks)
    mask = good.copy()  # the proxy scores 1.0 on both tasks for this selection, chance is 0.25
    rows = align_tasks(tasks, reward, {"a": 0.625, "b": 0.25}, mask)  # target: half of the gap on a, none on b
    assert [r["a_k"] for r in rows] == pytest.approx([0.5, 0.0])
    assert reward.weights == pytest.approx({"a": 0.5, "b": 0.0})
    with pytest.raises(ValueError, match="stays at chance on every task"):
        align_tasks(tasks, GoodSamplesReward(good, tasks), {"a": 0.25, "b": 0.2}, mask)


class MisleadingReward(GoodSamplesReward):
    """Random masks (the draws) score as J says, but the deterministic top selection scores lower the further the
    DVN moves: an ascent that looks right on the draws and makes final_subset's selection worse."""

    def __init__(self, good, tasks, prior):
        super().__init__(good, tasks)
        self.prior_top = None
        self.calls = []

    def reward(self, mask):
        j, metrics = super().reward(mask)
        if self.prior_top is None and int(mask.sum()) == int(0.3 * len(mask)):
            self.prior_top = mask.copy()  # the first deterministic top selection is θ₀'s
        if int(mask.sum()) == int(0.3 * len(mask)) and self.prior_top is not None:
            j = 1.0 - float((mask != self.prior_top).mean())  # top selections: the closer to θ₀'s, the better
        return j, metrics


@pytest.mark.parametrize("keep_best", [True, False])
def test_the_iterate_with_the_best_top_selection_is_returned_unless_switched_off(keep_best):
    sig, good = _signals()
    tasks = [Task("a"), Task("b")]
    params = Algorithm1Params(fdo=FdoParams(meta_iterations=4, probe_clusters=6, rate=0.3, lr=0.05,
                                            keep_best=keep_best), fdo_clusters=8)
    res = run_algorithm1(sig, tasks, MisleadingReward(good, tasks, None), params)
    tops = [h["reward_top"] for h in res.history]
    assert tops[0] == pytest.approx(1.0) and res.reward_top_last < 1.0  # the updates moved the top selection away
    if keep_best:
        assert res.returned_iterate == 0 and res.reward_top_final == pytest.approx(1.0)
        np.testing.assert_allclose(res.v, res.v0, atol=1e-6)  # θ₀ itself
    else:
        assert res.returned_iterate == 4 and res.reward_top_final == res.reward_top_last


def test_the_alignment_stream_orders_what_quality_cannot():
    # q says nothing about which samples are good, a does: the DVN with the alignment stream (from the Q+R+D+A
    # prior) ranks the good ones first, the paper's three streams (from Q+R+D) cannot
    sig, good = _signals(seed=1)
    rng = np.random.default_rng(2)
    sig = replace(sig, q=rng.random(len(good)), a=np.where(good, rng.normal(0.6, 0.1, len(good)),
                                                           rng.normal(0.2, 0.1, len(good))))
    tasks = [Task("a"), Task("b")]
    share = {}
    for stream, prior in ((True, "q_r_d_a"), (False, "q_r_d")):
        res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params(alignment_stream=stream, prior=prior))
        share[stream] = good[np.argsort(-res.v)[: int(0.3 * len(good))]].mean()
        assert (res.alignment_stats is not None) == stream
    assert share[True] > 0.9 and share[False] < good.mean() + 0.25, share
