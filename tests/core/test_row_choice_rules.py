"""benchmarks/row_choice.py's decision rules on measured runs whose answer is known: each rule reads the validation
scores only, and is scored by the test average of the row it picks."""

import importlib.util
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[2] / "benchmarks" / "row_choice.py"
_spec = importlib.util.spec_from_file_location("row_choice", _path)
row_choice = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(row_choice)


def _measured(j: dict[str, list[float]], test: dict[str, list[float]]) -> dict:
    return {"rows": list(j), "runs": {r: [{"J": a, "V": 10 * a, "test": t} for a, t in zip(j[r], test[r])] for r in j}}


def test_one_target_follows_each_seeds_j_and_two_targets_their_mean():
    # seed 0 prefers q (a lucky draw), seed 1 a; the mean of both prefers a, whose test average is the higher
    m = _measured({"q": [0.50, 0.20], "a": [0.40, 0.38]}, {"q": [30.0, 28.0], "a": [33.0, 31.0]})
    out = row_choice.rules(m, 2)
    assert out["one target (J)"] == pytest.approx((0.5 * (29.0 + 32.0), 0.5 * (28.0 + 33.0)))  # picks q, then a
    assert out["two targets (J)"][0] == pytest.approx(32.0) and out["two targets (J)"][1] is None
    # the runoff over the two best of one seed (here both rows) decides on the mean of two: a
    assert out["runoff (J)"][0] == pytest.approx(32.0)
    assert out["oracle (test)"][0] == pytest.approx(32.0) and out["fixed Q"][0] == pytest.approx(29.0)


def test_the_runoff_only_reaches_the_two_best_of_one_target_and_ties_go_to_the_earlier_row():
    # with seed 0 the runoff's finalists are q and q_r (a third): a's mean J is the highest but a is out of it
    m = _measured({"q": [0.50, 0.30], "q_r": [0.45, 0.34], "a": [0.20, 0.80]},
                  {"q": [30.0, 30.0], "q_r": [31.0, 31.0], "a": [35.0, 35.0]})
    picks = row_choice.rules(m, 2)
    assert picks["two targets (J)"][0] == pytest.approx(35.0)
    # seed 0 first: finalists q (0.50) and q_r (0.45), mean J 0.40 against 0.395 → q; seed 1 first: a and q_r → a
    assert picks["runoff (J)"][0] == pytest.approx(0.5 * (30.0 + 35.0))
    assert row_choice.best_candidate([0.3, 0.3, 0.1]) == 0
