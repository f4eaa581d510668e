"""Table 2's static scores and the final {v > τ} under the data budget, on inputs whose answer is known."""

import numpy as np
import pytest

from tads_assets.core.method import selection


def test_relevance_signal_is_the_best_tasks_standardised_relevance():
    # task 0 relevance spans 0.1..0.3, task 1 spans 0.5..0.9: a raw max would always pick task 1
    r = np.array([[0.3, 0.5], [0.1, 0.9], [0.2, 0.7]])
    z = selection.relevance_signal(r)
    assert z == pytest.approx([np.sqrt(1.5), np.sqrt(1.5), 0.0])  # row 0 is best at task 0, row 1 at task 1
    with pytest.raises(ValueError):
        selection.relevance_signal(np.zeros(3))


def test_static_score_adds_the_named_signals_only():
    q = np.array([0.9, 0.1, 0.5, 0.5])
    r = np.array([[0.1], [0.9], [0.5], [0.5]])
    d = np.array([0.5, 0.5, 1.0, 0.01])
    only_q = selection.static_score(q, r, d, ("q",))
    assert np.argmax(only_q) == 0
    q_r = selection.static_score(q, r, d, ("q", "r"))
    assert q_r[0] == pytest.approx(q_r[1], abs=1e-9)  # equal and opposite standardised q and r
    q_r_d = selection.static_score(q, r, d, ("q", "r", "d"))
    assert np.argmax(q_r_d) == 2 and np.argmin(q_r_d) == 3  # the rare sample rises, the crowded one falls
    with pytest.raises(ValueError, match="subset of q, r, d, a"):
        selection.static_score(q, r, d, ("x",))
    a = np.array([0.0, 0.0, -1.0, 1.0])  # the crowded sample is the best-aligned one
    q_r_d_a = selection.static_score(q, r, d, ("q", "r", "d", "a"), a)
    assert q_r_d_a[3] - q_r_d_a[2] == pytest.approx(q_r_d[3] - q_r_d[2] + 2 * np.sqrt(2))  # z(a): ∓√2
    with pytest.raises(ValueError, match="no alignment was given"):
        selection.static_score(q, r, d, ("q", "a"))


def test_threshold_keeps_v_above_tau_within_the_budget():
    v = np.array([0.9, 0.2, 0.7, 0.55, 0.4, 0.8, 0.1, 0.3, 0.6, 0.5])
    th = selection.threshold_selection(v, 0.75, 4)
    assert th.keep.tolist() == (v > 0.75).tolist() and not th.budget_bound and th.tau == 0.75
    th = selection.threshold_selection(v, 0.5, 4)  # 5 above τ, the budget allows 4: τ is raised
    assert th.keep.sum() == 4 and th.budget_bound and set(np.flatnonzero(th.keep)) == {0, 2, 5, 8}
    assert (v[th.keep] > th.tau).all() and (v[~th.keep] <= th.tau).all()
    auto = selection.threshold_selection(v, -1, 3)  # τ at exactly the budget
    assert set(np.flatnonzero(auto.keep)) == {0, 2, 5} and not auto.budget_bound
    assert selection.threshold_selection(v, -1, 25).keep.all()  # a budget above the candidates keeps them all
    with pytest.raises(ValueError):
        selection.threshold_selection(v, 0.5, 0)
    with pytest.raises(ValueError):
        selection.threshold_selection(v, 1.0, 4)


def test_the_budget_is_a_share_of_the_readable_raw_pool_or_a_count():
    assert selection.budget_size(10_000, 0.36) == 3_600  # the paper's 36 % of the original data
    assert selection.budget_size(6_912, 0.36) == 2_488  # whatever dedup later leaves
    assert selection.budget_size(10_000, 0.36, size=500) == 500  # an absolute count wins
    assert selection.budget_size(3, 0.1) == 1
    with pytest.raises(ValueError, match="fraction of the readable raw pool"):
        selection.budget_size(100, 0.0)
    with pytest.raises(ValueError, match="count of samples"):
        selection.budget_size(100, 0.3, size=-1)


def test_baselines_share_the_budget_until_tads_has_a_subset_then_match_its_size(tmp_path):
    import polars as pl

    from tads_assets.core.harness import baselines

    path = tmp_path / "final_subset.parquet"
    assert baselines.matched_size(path, 360, "0.36 of the readable raw pool") == (
        360, "budget: 0.36 of the readable raw pool")
    pl.DataFrame({"uid": [f"u{i}" for i in range(250)]}).write_parquet(path)  # TADS fell short of its budget
    assert baselines.matched_size(path, 360, "0.36 of the readable raw pool") == (250, "TADS final_subset size")


def test_algorithm1_draws_the_budget_in_expectation_whatever_dedup_left():
    from resources import Budget
    from tads_assets.select import MAX_DRAW_RATE, draw_rate

    said = []
    assert draw_rate(Budget(), 1000, 720, said.append) == pytest.approx(360 / 720) and not said
    assert draw_rate(Budget(size=100), 1000, 400, said.append) == pytest.approx(0.25)
    assert draw_rate(Budget(), 1000, 300, said.append) == MAX_DRAW_RATE  # fewer candidates than the budget
    assert len(said) == 1 and "300 deduplicated candidates" in said[0]
    assert Budget(size=100).rule() == "100 samples" and Budget().rule() == "0.36 of the readable raw pool"
