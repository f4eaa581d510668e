import polars as pl
import pytest
from dagster import AssetSelection
from tads_assets.local import materialize

from resources import TadsPaths
from tads_assets.checks import raw_pool_ledger_complete, raw_pool_rows_valid, raw_pool_sources_fully_read
from tads_assets.core.demo import hostile
from tads_assets.core.io import ingest
from tads_assets.pool import raw_pool
from tests.conftest import step_error_message

ASSETS = [raw_pool, raw_pool_ledger_complete, raw_pool_rows_valid, raw_pool_sources_fully_read]


def evaluations(result) -> dict[str, bool]:
    return {ev.check_name: ev.passed for ev in result.get_asset_check_evaluations()}


@pytest.fixture
def paths(tmp_path, demo_spec) -> TadsPaths:
    return TadsPaths(home=str(tmp_path / "home"), pool=demo_spec)


def test_raw_pool_materializes_with_metadata_and_passing_checks(paths, demo_dir):
    result = materialize(ASSETS, resources={"paths": paths})
    assert result.success
    assert evaluations(result) == {"raw_pool_ledger_complete": True, "raw_pool_rows_valid": True,
                                   "raw_pool_sources_fully_read": True}
    meta = result.asset_materializations_for_node("raw_pool")[0].metadata
    truth = pl.read_parquet(demo_dir / "truth.parquet")
    n_broken = truth.filter(pl.col("kind").is_in(["corrupt_image", "empty_caption"])).height
    assert meta["n_in"].value == truth.height
    assert meta["n_dropped"].value == n_broken
    assert meta["n_kept"].value == truth.height - n_broken
    assert "empty_caption" in [r.data["reason"] for r in meta["dropped_by_reason"].records]
    assert "data:image/png;base64" in meta["image_sizes"].value


def test_ledger_completeness_check_fails_when_a_row_is_removed(paths):
    assert materialize(ASSETS, resources={"paths": paths}).success
    ledger_file = paths.ledger().run_files("raw_pool")[-1]
    pl.read_parquet(ledger_file).slice(1).write_parquet(ledger_file)
    result = materialize(ASSETS, resources={"paths": paths},
                         selection=AssetSelection.checks(raw_pool_ledger_complete), raise_on_error=False)
    assert evaluations(result) == {"raw_pool_ledger_complete": False}


def test_damaged_shard_through_dagster_every_sample_accounted_and_the_sources_check_blocks_a_gap(tmp_path):
    spec, cases = hostile.build_header_bitflip(tmp_path / "src")
    paths = TadsPaths(home=str(tmp_path / "home"), pool=spec)
    result = materialize(ASSETS, resources={"paths": paths})
    assert result.success and all(evaluations(result).values())
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "raw_pool_sources_fully_read")
    assert check.metadata["unreadable_ranges"].value == 1 and check.metadata["unreadable_bytes"].value > 0
    kept = set(ingest.scan_raw_pool(paths.catalog.raw_pool.dir).select("uid").collect()["uid"])
    assert {f"a{i:03d}" for i in range(50)} - kept == {"a020"}
    # a ledger that lost the region's row: the blocking check fails
    ledger_file = paths.ledger().run_files("raw_pool")[-1]
    rows = pl.read_parquet(ledger_file)
    rows.filter(~pl.col("uid").str.contains("#bytes-")).write_parquet(ledger_file)
    result = materialize(ASSETS, resources={"paths": paths},
                         selection=AssetSelection.checks(raw_pool_sources_fully_read), raise_on_error=False)
    assert evaluations(result) == {"raw_pool_sources_fully_read": False}


def test_demo_source_generates_the_pool_on_first_use(tmp_path):
    paths = TadsPaths(home=str(tmp_path / "home"), pool="demo", demo_samples=120)
    result = materialize(ASSETS, resources={"paths": paths})
    assert result.success
    manifest = ingest.read_manifest(paths.catalog.raw_pool.dir)
    assert manifest["n_seen"] == 120
    assert (paths.catalog.demo_dir / "truth.parquet").exists() and paths.tasks_path() == paths.catalog.demo_dir / "tasks.yaml"


def test_task_set_counts_every_held_out_set_and_fails_on_a_bad_one_naming_the_task(tmp_path, demo_dir):
    from tads_assets.characterize import task_set

    paths = TadsPaths(home=str(tmp_path / "home"), tasks=str(demo_dir / "tasks.yaml"))
    result = materialize([task_set], resources={"paths": paths})
    meta = result.asset_materializations_for_node("task_set")[0].metadata
    sets = [r.data for r in meta["held_out_sets"].value.records]
    assert {"fashion", "captions"} <= {r["task"] for r in sets} and "(captions)" in {r["labels"] for r in sets}
    import tarfile

    def n_samples(tar):  # counted independently of TADS's reader: one .jpg/.png member per sample
        with tarfile.open(tar) as t:
            return sum(m.name.endswith((".jpg", ".png")) for m in t.getmembers())

    assert meta["n_held_out_items"].value == sum(n_samples(f) for f in (demo_dir / "val").glob("*.tar")) + sum(
        n_samples(f) for f in (demo_dir / "test").glob("*.tar"))
    # a validation set whose labels the task cannot have: task_set itself fails, naming the task and the label
    bad = demo_dir / "tasks_bad_labels.yaml"  # beside tasks.yaml: its relative paths resolve
    (tmp_path / "bad.tar").write_bytes(hostile.eval_tar([("k0", {"cls": b"99"})]))
    text = (demo_dir / "tasks.yaml").read_text()
    bad.write_text(text.replace("validation: webdataset:", f"validation: webdataset:{tmp_path}/bad.tar #", 1))
    result = materialize([task_set], resources={"paths": TadsPaths(home=str(tmp_path / "h2"), tasks=str(bad))},
                         raise_on_error=False)
    assert not result.success
    message = step_error_message(result)
    assert "validation" in message and "label 99 is out of range" in message
