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
    assert len(res.history) == 4 and res.prior == "q_r_d_a" and res.reward_top_final == pytest.approx(good[top].mean() * 2, abs=0.05)


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
    with pytest.raises(ValueError, match="prior must be .auto. or one of"):
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
        # ten updates (the default): the residual DVN's correction starts at zero and needs them to reorder the row
        params = Algorithm1Params(fdo=FdoParams(meta_iterations=10, probe_clusters=6, rate=0.3), fdo_clusters=8,
                                  alignment_stream=stream, prior=prior)
        res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), params)
        share[stream] = good[np.argsort(-res.v)[: int(0.3 * len(good))]].mean()
        assert (res.alignment_stats is not None) == stream
    assert share[True] > 0.9 and share[False] < good.mean() + 0.25, share


def test_prior_auto_starts_from_the_row_whose_selection_trains_the_best_target():
    # a tells the good samples apart and q does not: of the candidate rows, the alignment alone gives the target the
    # richest selection, so θ₀ starts from it; its target run also serves the task alignment (6 trainings, not 7)
    sig, good = _signals(seed=1)
    rng = np.random.default_rng(3)
    sig = replace(sig, q=rng.random(len(good)), a=np.where(good, rng.normal(0.6, 0.1, len(good)),
                                                           rng.normal(0.2, 0.1, len(good))))
    tasks = [Task("a"), Task("b", 2.0)]
    calls = []

    def target(mask):
        calls.append(mask.copy())
        return {"a": float(good[mask].mean()), "b": float(good[mask].mean())}

    res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params(), target_scores=target)
    rows = ["q_r_d_a", "q_r_a", "q_r_d", "q_r", "q", "a"]
    assert res.prior == "a" and [t["row"] for t in res.prior_trials] == rows
    assert [t["chosen"] for t in res.prior_trials] == [r == "a" for r in rows]
    assert len(calls) == 6  # one target training per candidate, none more for the task alignment
    j = [t["J target (validation)"] for t in res.prior_trials]
    # J over chance (0.25: four classes), φ_k 1 and 2; Q+R+D, Q+R and Q are blind to a
    assert j[5] == max(j) and j[5] == pytest.approx(3 * (good[calls[5]].mean() - 0.25))
    assert max(j[2:5]) < j[5] - 0.3
    assert good[np.argsort(-res.v0)[: int(0.3 * len(good))]].mean() > 0.9  # θ₀ follows the chosen row
    assert [r["Eval_k target"] for r in res.alignment] == pytest.approx([good[calls[5]].mean()] * 2)


def test_prior_auto_without_a_target_takes_the_first_candidate_and_ties_go_to_the_earlier():
    sig, good = _signals()
    tasks = [Task("a"), Task("b")]
    reward = GoodSamplesReward(good, tasks)
    del reward.val  # the full proxy (harness/clip_proxy.ClipProxy) holds no validation features
    res = run_algorithm1(sig, tasks, reward, _params(prior_candidates="q_r,q_r_d"))
    assert res.prior == "q_r" and res.prior_trials == []
    res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params(prior_candidates="q_r_d,q_r_a"),
                         target_scores=lambda mask: {"a": 0.5, "b": 0.5})
    assert res.prior == "q_r_d" and [t["chosen"] for t in res.prior_trials] == [True, False]
    fixed = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), _params(prior="q_r_d_a"),
                           target_scores=lambda mask: {"a": 0.5, "b": 0.5})
    assert fixed.prior == "q_r_d_a" and fixed.prior_trials == []


def test_prior_candidates_are_checked():
    with pytest.raises(ValueError, match="prior_candidates must name rows"):
        _params(prior_candidates="q_r_d_a,q_d")
    with pytest.raises(ValueError, match="prior_candidates must name rows"):
        _params(prior_candidates=" , ")
    with pytest.raises(ValueError, match="alignment_stream on"):
        _params(alignment_stream=False, prior_candidates="q_r_d,a")
    assert _params(alignment_stream=False, prior_candidates="q_r_d, q_r").candidates() == ("q_r_d", "q_r")
    # by default every Table 2 row competes for θ₀, beside Q+R+A and the alignment alone
    from tads_assets.core.method import selection

    assert set(Algorithm1Params().candidates()) == set(selection.ABLATIONS) | {"q_r_a", "a"}


def test_prior_auto_leaves_out_a_task_the_target_stays_at_chance_on():
    # task b's validation scores sit within two binomial standard errors of chance (0.25 over 400 items: ±0.043) for
    # both candidates: counted, its noise (φ_b 2) would pick Q+R+D+A; left out, task a picks the alignment row
    sig, good = _signals()
    tasks = [Task("a"), Task("b", 2.0)]
    reward = GoodSamplesReward(good, tasks)
    reward.val = [Val(t.name, image_feats=np.zeros((400, 2))) for t in tasks]
    scores = iter([{"a": 0.60, "b": 0.29}, {"a": 0.62, "b": 0.25}])
    res = run_algorithm1(sig, tasks, reward, _params(prior_candidates="q_r_d_a,a"), target_scores=lambda m: next(scores))
    assert res.prior == "a" and [t["tasks counted"] for t in res.prior_trials] == ["a", "a"]
    assert [t["J target (validation)"] for t in res.prior_trials] == pytest.approx([0.35, 0.37])


def test_residual_init_starts_from_the_rows_own_top_share_and_learns_a_correction():
    # init "prior" fits θ₀ to the row (its top share differs from the row's at the boundary); "residual" adds the row's
    # logits to a correction that starts at zero: θ₀'s top share is the row's exactly, and the updates still move v
    sig, good = _signals()
    tasks = [Task("a"), Task("b")]
    row = sig.static(("q", "r", "d", "a"))
    selection_top = np.argsort(-row)[: int(0.3 * len(row))]
    for init in ("prior", "residual"):
        params = Algorithm1Params(fdo=FdoParams(meta_iterations=4, probe_clusters=6, rate=0.3, keep_best=False),
                                  fdo_clusters=8, init=init, prior="q_r_d_a")
        res = run_algorithm1(sig, tasks, GoodSamplesReward(good, tasks), params)
        same = len(np.intersect1d(np.argsort(-res.v0)[: len(selection_top)], selection_top)) / len(selection_top)
        if init == "residual":
            assert same == 1.0 and res.prior_spearman == pytest.approx(1.0) and res.prior_loss is None
            assert res.net.config.prior_skip and np.abs(res.v - res.v0).max() > 1e-3  # FDO moved it
        else:
            assert same < 1.0 and not res.net.config.prior_skip
