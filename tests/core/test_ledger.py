import time

import polars as pl
import pytest

from tads_assets.core.io.ledger import DROP, Ledger, new_run_id


def rows(*uids, reason="corrupt_image"):
    return [{"uid": u, "decision": DROP, "reason": reason, "value": 1.0, "detail": f"{u} is bad"} for u in uids]


def test_latest_run_supersedes_older_runs_even_when_empty(tmp_path):
    ledger = Ledger(tmp_path)
    first = new_run_id()
    ledger.write_run("raw_pool", first, rows("a", "b"))
    assert ledger.read("raw_pool")["uid"].to_list() == ["a", "b"]
    time.sleep(0.002)
    second = new_run_id()
    ledger.write_run("raw_pool", second, [])
    assert ledger.latest_run_id("raw_pool") == second
    assert ledger.read("raw_pool").is_empty()
    assert ledger.read("raw_pool", all_runs=True).height == 2
    assert ledger.read("raw_pool", run_id=first)["run_id"].unique().to_list() == [first]


def test_runs_are_append_only(tmp_path):
    ledger = Ledger(tmp_path)
    run = new_run_id()
    ledger.write_run("raw_pool", run, rows("a"))
    with pytest.raises(FileExistsError):
        ledger.write_run("raw_pool", run, rows("b"))


def test_history_spans_stages(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.write_run("raw_pool", new_run_id(), rows("a"))
    ledger.write_run("deduped_pool", new_run_id(), rows("a", reason="exact_duplicate"))
    hist = ledger.history("a")
    assert hist["stage"].to_list() == ["raw_pool", "deduped_pool"]
    assert ledger.history("zzz").is_empty()
    summary = ledger.summary()
    assert set(summary["stage"]) == {"raw_pool", "deduped_pool"} and summary["n"].sum() == 2


def test_rows_without_uid_are_refused(tmp_path):
    with pytest.raises(ValueError, match="required columns"):
        Ledger(tmp_path).write_run("raw_pool", new_run_id(), [{"decision": DROP}])
    with pytest.raises(ValueError, match="invalid ledger stage"):
        Ledger(tmp_path).write_run("../evil", new_run_id(), [])


def test_completeness_fails_when_a_row_is_removed(tmp_path):
    ledger = Ledger(tmp_path)
    run = new_run_id()
    path = ledger.write_run("raw_pool", run, rows("a", "b", "c"))
    assert ledger.completeness("raw_pool", run, n_in=10, n_kept=7).ok
    pl.read_parquet(path).head(2).write_parquet(path)  # tamper: lose one drop row
    report = ledger.completeness("raw_pool", run, n_in=10, n_kept=7)
    assert not report.ok and report.n_unaccounted == 1
    assert "INCOMPLETE" in report.describe()
