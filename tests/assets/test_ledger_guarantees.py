"""Ledger guarantees on the demo graph: along the whole chain, every sample a stage receives is kept by it or has
exactly one drop row of its latest run, and `tads explain` tells the fate of any uid ever seen."""

import contextlib
import io

import polars as pl

from tads_assets import cli
from tads_assets.core.harness import baselines
from tads_assets.select import STATIC_ABLATIONS


def _uids(path) -> set[str]:
    return set(pl.read_parquet(path, columns=["uid"])["uid"].to_list())


def _accounts(ledger, stage: str, received: set[str], kept: set[str]) -> None:
    drops = ledger.read(stage)["uid"].to_list()
    assert len(drops) == len(set(drops)), f"{stage}: a sample dropped twice"
    assert not kept & set(drops), f"{stage}: kept and dropped"
    assert kept | set(drops) == received, (f"{stage}: {len(received - kept - set(drops))} received samples neither "
                                          f"kept nor ledgered, {len((kept | set(drops)) - received)} not received")


def test_every_sample_is_kept_or_ledgered_at_every_stage(built):
    paths, _, truth = built
    ledger, parquet = paths.ledger(), paths.root / "parquet"
    source = set(truth["uid"].to_list())
    raw = set(pl.scan_parquet(str(parquet / "raw_pool" / "part-*.parquet")).select("uid").collect()["uid"].to_list())
    _accounts(ledger, "raw_pool", source, raw)
    deduped = _uids(parquet / "deduped_pool" / "deduped_pool.parquet")
    _accounts(ledger, "deduped_pool", raw, deduped)
    _accounts(ledger, "final_subset", deduped, _uids(parquet / "final_subset" / "final_subset.parquet"))
    quality = _uids(parquet / "quality_scores" / "quality_scores.parquet")
    assert quality == deduped  # scoring drops nothing
    for method in (*baselines.METHODS, *STATIC_ABLATIONS):
        received = quality if method in ("quality_only", *STATIC_ABLATIONS) else raw
        _accounts(ledger, f"baseline_{method}", received, _uids(paths.catalog.subsets.of(method).path))


def _explain(home, uid: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["explain", uid, "--home", str(home)])
    return rc, out.getvalue()


def test_tads_explain_tells_the_fate_of_every_uid_ever_seen(built):
    paths, _, truth = built
    ledger = paths.ledger()
    drops = ledger.read().filter(pl.col("stage").is_in(["raw_pool", "deduped_pool", "final_subset"]))
    dropped = {r["uid"]: r for r in drops.group_by("stage", "reason", maintain_order=True).head(2).iter_rows(named=True)}
    final = _uids(paths.root / "parquet" / "final_subset" / "final_subset.parquet")
    # two dropped samples of every (stage, reason), and two kept ones of each demo kind
    uids = sorted(dropped) + truth.filter(pl.col("uid").is_in(list(final))).group_by("kind").head(2)["uid"].to_list()
    for uid in uids:
        rc, text = _explain(paths.root, uid)
        assert rc == 0, uid
        if uid in dropped:
            row = dropped[uid]
            assert row["stage"] in text and row["reason"] in text, (uid, text)
        else:
            assert "final_subset" in text.split("present in:")[1], (uid, text)
    assert _explain(paths.root, "never-seen-uid")[0] == 1


def test_explain_finds_a_uid_only_earlier_runs_saw(tmp_path):
    from tads_assets.core.io.ledger import Ledger, new_run_id

    ledger = Ledger(tmp_path / "ledger")
    ledger.write_run("raw_pool", new_run_id(), [{"uid": "old-1", "decision": "drop", "reason": "corrupt_image"}])
    ledger.write_run("raw_pool", new_run_id(), [{"uid": "new-1", "decision": "drop", "reason": "empty_caption"}])
    rc, text = _explain(tmp_path, "old-1")
    assert rc == 0 and "corrupt_image" in text and "not in the current pool" in text
    rc, text = _explain(tmp_path, "new-1")
    assert rc == 0 and "empty_caption" in text and "earlier runs" not in text
