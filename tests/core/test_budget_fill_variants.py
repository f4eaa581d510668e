"""benchmarks/budget_fill.py's ways of spending the budget and its decomposition, on signals whose answer is known."""

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl

from tads_assets.core.method.selection import Signals

_path = Path(__file__).resolve().parents[2] / "benchmarks" / "budget_fill.py"
_spec = importlib.util.spec_from_file_location("budget_fill", _path)
budget_fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budget_fill)


def _signals(a, q) -> Signals:
    n = len(a)
    return Signals(uids=np.array([f"u{i}" for i in range(n)]), q=np.asarray(q, float), r=np.zeros((n, 1)),
                   h_r=np.zeros((n, 1)), d=np.ones(n), clusters=np.zeros(n, int), task_names=["t"],
                   a=np.asarray(a, float))


def test_shares_are_prefixes_of_the_rows_ranking_and_the_clean_class_goes_first():
    # alignment ranks u0 > u1 > ... > u9; q_φ calls u0 and u2 noise (foreign-language pairs the A row ranks high)
    sig = _signals(a=np.linspace(1.0, 0.1, 10), q=[0.1, 0.9, 0.2, 0.8, 0.7, 0.9, 0.6, 0.55, 0.1, 0.3])
    v = budget_fill.variants(sig, "a", rate=0.4, shares=[100, 50])  # budget: 4 of 10
    kept = {name: set(sig.uids[m]) for name, m in v.items()}
    assert kept["ROW@100%"] == {"u0", "u1", "u2", "u3"}
    assert kept["ROW@50%"] == {"u0", "u1"}
    # within q ≥ 0.5 by alignment (u1, u3, u4, u5 ...), so u0 and u2 wait behind every clean-class pair
    assert kept["ROW|q"] == {"u1", "u3", "u4", "u5"}
    assert "Q+ROW" in v and v["Q+ROW"].sum() == 4


def test_rows_that_hold_q_get_no_q_added_and_short_clean_classes_are_filled_by_the_row():
    sig = _signals(a=np.linspace(1.0, 0.1, 10), q=[0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6])
    v = budget_fill.variants(sig, "q_r_d_a", rate=0.3, shares=[100])
    assert "Q+ROW" not in v
    v = budget_fill.variants(sig, "a", rate=0.3, shares=[100])
    assert set(sig.uids[v["ROW|q"]]) == {"u0", "u9", "u1"}  # the two clean-class pairs, then the row's best other


def test_decomposition_counts_what_each_subset_holds_alone_and_the_copies_dedup_removed():
    truth = pl.DataFrame({"uid": ["a", "b", "c", "d", "e"],
                          "kind": ["clean", "non_english", "clean", "exact_duplicate", "near_duplicate"]})
    parts = budget_fill.decompose(row_uids={"a", "b", "c"}, clip_uids={"a", "d", "e"}, deduped={"a", "b", "c"},
                                  truth=truth)
    by = {p["pairs"]: p for p in parts}
    assert by["row only"]["count"] == 2 and "non_english 1" in by["row only"]["by truth kind"]
    assert by["clip_score only"]["count"] == 2 and by["clip_score's pairs dedup removed"]["count"] == 2
    assert "exact_duplicate 1" in by["clip_score's pairs dedup removed"]["by truth kind"]
    assert "by truth kind" not in budget_fill.decompose({"a"}, {"a"}, {"a"}, None)[0]
