"""`tads status` reads Dagster's own staleness (a changed task file makes relevance_vectors stale); `tads export`
writes a selection as WebDataset shards or an open_clip CSV."""

import csv
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import polars as pl
from dagster import DagsterInstance
from tads_assets.local import materialize

from tads_assets.characterize import relevance_vectors, task_set
from tads_assets.cli import asset_status_rows
from tads_assets.train_eval import training_partitions
from tests.assets.conftest import resources_for

BIN = Path(sys.executable).parent


def test_status_shows_fresh_then_stale_after_a_task_change(built, tmp_path, demo_dir):
    paths, _, _ = built
    home = tmp_path / "home"
    shutil.copytree(paths.root, home)
    tasks = tmp_path / "tasks.yaml"
    text = (demo_dir / "tasks.yaml").read_text()  # moved out of the demo folder: its set paths made absolute
    text = text.replace("webdataset:val/", f"webdataset:{demo_dir}/val/").replace("webdataset:test/",
                                                                                   f"webdataset:{demo_dir}/test/")
    tasks.write_text(text)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = resources_for(home, paths.pool, str(tasks))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert materialize([task_set, relevance_vectors], resources=resources, instance=instance).success
        import definitions

        graph = definitions.defs.resolve_asset_graph()
        before = {r["asset"]: r for r in asset_status_rows(instance, graph)}
        assert before["relevance_vectors"]["last"] != "never" and "stale" not in before["relevance_vectors"]["status"]
        assert before["trained_dvn"]["last"] == "never" and before["trained_dvn"]["status"] == "missing"
        assert f"0/{len(training_partitions.get_partition_keys())} partitions" in before["trained_clip"]["status"]

        tasks.write_text(text.replace("weight: 1.0", "weight: 2.0", 1))
        assert materialize([task_set], resources=resources, instance=instance).success
        after = {r["asset"]: r for r in asset_status_rows(instance, graph)}
        assert after["task_set"]["status"] == "fresh"
        assert after["relevance_vectors"]["status"].startswith("stale: task_set"), after["relevance_vectors"]

    env = {**os.environ, "TADS_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "TADS_TASKS": str(tasks)}
    out = subprocess.run([str(BIN / "tads"), "status"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("relevance_vectors"))
    assert "stale: task_set" in line
    out = subprocess.run([str(BIN / "tads"), "status", "--dagster-home", str(tmp_path / "none")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "no Dagster instance" in out.stdout


def test_export_writes_webdataset_or_csv(built, tmp_path):
    paths, _, _ = built
    kept = pl.read_parquet(paths.catalog.final_subset.path)["uid"].to_list()
    env = {**os.environ, "TADS_HOME": str(paths.root)}
    out = subprocess.run([str(BIN / "tads"), "export", "--method", "tads", "--format", "webdataset", "--out",
                          str(tmp_path / "wds"), "--shard-size", "50"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shards = sorted((tmp_path / "wds" / "shards").glob("*.tar"))
    assert len(shards) == -(-len(kept) // 50) and not (tmp_path / "wds" / "subset.csv").exists()
    members = [m for s in shards for m in tarfile.open(s).getnames()]
    assert sorted(m.rsplit(".", 1)[0] for m in members if m.endswith(".txt")) == sorted(kept)

    out = subprocess.run([str(BIN / "tads"), "export", "--method", "random", "--format", "csv", "--out",
                          str(tmp_path / "csv")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "csv" / "subset.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    random_uids = pl.read_parquet(paths.catalog.subsets.of("random").path)["uid"]
    assert len(rows) == len(random_uids) and all(Path(r["filepath"]).exists() for r in rows)

    out = subprocess.run([str(BIN / "tads"), "export", "--method", "semdedup"], env={**env, "TADS_HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "materialize baseline_subsets, partition semdedup" in out.stderr
