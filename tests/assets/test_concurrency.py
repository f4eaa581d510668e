"""One writer per output: two runs of an asset into one TADS_HOME at once. The second waits for the first (saying
who holds the output) instead of writing over it, so the table on disk is one run's, whole, and its manifest and
ledger agree with it."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from tads_assets.local import materialize

import definitions
from resources import TadsPaths, tads_resources
from tads_assets.core.demo import hostile
from tads_assets.core.io import ingest
from tads_assets.core.io.storage import lock_holder, output_lock
from tads_assets.pool import raw_pool
from tads_assets.select import baseline_subsets
from tests.conftest import wds_sample, write_tar

REPO = Path(__file__).resolve().parents[2]

# A raw_pool materialization in a process of its own. Its reader is slowed down (15 ms a sample, 3 s for the pool)
# so that two of them started together overlap for certain; it says "ready" once imported and starts at `go`.
CHILD = r"""
import json, sys, time
from pathlib import Path

from tads_assets.local import materialize

from resources import TadsPaths
from tads_assets.core.io import formats
from tads_assets.pool import raw_pool

home, pool, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
read_shard = formats.read_shard


def slow_read_shard(*args, **kwargs):
    for rec in read_shard(*args, **kwargs):
        time.sleep(0.015)
        yield rec


formats.read_shard = slow_read_shard
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
result = materialize([raw_pool], resources={"paths": TadsPaths(home=home, pool=pool)}, raise_on_error=False)
print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
"""


def small_pool(root: Path, shards: int = 4, per_shard: int = 50) -> str:
    """`shards` WebDataset shards of distinct good samples, plus two empty captions to ledger."""
    for s in range(shards):
        members = []
        for i in range(s * per_shard, (s + 1) * per_shard):
            image, caption = hostile.good_image(i, size=32)
            members += wds_sample(f"s{i:04d}", caption, image)
        if s == 1:
            members += wds_sample("empty-1", "", hostile.good_image(900, size=32)[0])
            members += wds_sample("empty-2", " ", hostile.good_image(901, size=32)[0])
        write_tar(root / f"{s:05d}.tar", members)
    return f"webdataset:{root}/{{00000..{shards - 1:05d}}}.tar"


def table(paths: TadsPaths) -> pl.DataFrame:
    return ingest.scan_raw_pool(paths.catalog.raw_pool.dir).select("uid", "caption", "sha256").collect().sort("uid")


def test_two_raw_pool_runs_at_once_into_one_home_write_one_whole_table(tmp_path):
    spec = small_pool(tmp_path / "src")
    home, go = tmp_path / "home", tmp_path / "go"
    procs, logs = [], []
    for n in range(2):
        out, err = open(tmp_path / f"run{n}.out", "w+"), open(tmp_path / f"run{n}.err", "w+")
        logs.append((out, err))
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(home), spec, str(go)], cwd=REPO, stdout=out,
                                      stderr=err, start_new_session=True))
    try:
        deadline = time.monotonic() + 60
        while not all(Path(out.name).read_text().startswith("ready") for out, _ in logs):
            assert all(p.poll() is None for p in procs), [Path(e.name).read_text()[-3000:] for _, e in logs]
            assert time.monotonic() < deadline, "the runs never got ready"
            time.sleep(0.02)
        go.touch()  # both start now; each ingestion takes 3 s, so they overlap
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for out, err in logs:
            out.close()
            err.close()
    done = [json.loads(Path(out.name).read_text().splitlines()[-1]) for out, _ in logs]
    errs = [Path(err.name).read_text() for _, err in logs]
    assert [d["success"] for d in done] == [True, True], [e[-3000:] for e in errs]

    # exactly one of them found raw_pool locked, and was told by whom
    waited = [n for n in range(2) if "raw_pool is being written by run" in errs[n]]
    assert len(waited) == 1, f"expected exactly one run to wait, got {waited}: the two runs wrote raw_pool at once"
    w, other = waited[0], 1 - waited[0]
    line = next(ln for ln in errs[w].splitlines() if "raw_pool is being written by run" in ln)
    assert re.search(rf"raw_pool is being written by run {done[other]['run_id']} \(pid {procs[other].pid} on "
                     r".*\) since .*; waiting", line), line
    assert "raw_pool: lock acquired after waiting" in errs[w]

    # the table on disk is one run's, whole: equal to a single run's, and its manifest and ledger agree with it
    paths = TadsPaths(home=str(home), pool=spec)
    single = TadsPaths(home=str(tmp_path / "single"), pool=spec)
    assert materialize([raw_pool], resources={"paths": single}).success
    got, want = table(paths), table(single)
    assert got.height == want.height == 200
    assert got.equals(want)
    manifest = ingest.read_manifest(paths.catalog.raw_pool.dir)
    assert manifest["n_kept"] == got.height and manifest["n_seen"] == 202 and manifest["n_dropped"] == 2
    ledger = paths.ledger()
    assert ledger.latest_run_id("raw_pool") == manifest["run_id"]  # the ledger's latest run is the table's
    assert len(ledger.run_files("raw_pool")) == 2
    assert ledger.read("raw_pool").height == manifest["n_dropped"]
    assert sorted(p.name for p in paths.root.joinpath("parquet").iterdir()) == ["raw_pool"]  # no staging left
    assert lock_holder(paths.root, "raw_pool") is None


def test_every_asset_holds_its_output_lock_while_it_writes():
    for a in definitions.all_assets:
        fn = a.op.compute_fn.decorated_fn
        assert getattr(fn, "one_writer", False), f"{a.key.to_user_string()} writes under TADS_HOME without @one_writer"
    assert len(definitions.all_assets) == 17


def test_a_run_that_finds_its_output_locked_waits_then_gives_up_naming_the_holder(tmp_path, demo_spec):
    home = tmp_path / "home"
    paths = TadsPaths(home=str(home), pool=demo_spec, lock_timeout_s=0.5)
    with output_lock(home, "raw_pool", holder="run-holding"):
        result = materialize([raw_pool], resources={"paths": paths}, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("raw_pool").error
    assert re.search(rf"raw_pool is being written by run run-holding \(pid {os.getpid()} on .*\) since .*; gave up "
                     r"waiting after 0.5 s", failure.cause.message if failure.cause else failure.message)
    assert not paths.catalog.raw_pool.dir.exists()  # it wrote nothing

    # a partitioned asset locks per partition: baseline_subsets[random] is held, [dbp] is not
    resources = tads_resources(paths)
    with output_lock(home, "baseline_subsets[random]", holder="run-holding"):
        result = materialize([baseline_subsets], partition_key="random", resources=resources, raise_on_error=False)
        assert not result.success
        failure = result.failure_data_for_node("baseline_subsets").error
        assert "baseline_subsets[random] is being written by run run-holding" in str(failure)
        result = materialize([baseline_subsets], partition_key="dbp", resources=resources, raise_on_error=False)
        assert "is being written by" not in str(result.failure_data_for_node("baseline_subsets").error)


def test_a_range_run_locks_each_partition_and_keeps_what_finished_before_a_failure(tmp_path):
    # @one_writer_per_partition: one step for a run's partitions, each under its own lock; when one fails, those done
    # before it are recorded as materialized (with their metadata) and the later ones are not
    from dagster import AssetExecutionContext, AssetKey, BackfillPolicy, DagsterInstance, StaticPartitionsDefinition, asset

    from resources import one_writer_per_partition
    from tads_assets.local import RANGE_END, RANGE_START

    held = []

    @asset(partitions_def=StaticPartitionsDefinition(["a", "b", "c"]), backfill_policy=BackfillPolicy.single_run())
    @one_writer_per_partition
    def parted(context: AssetExecutionContext, paths: TadsPaths, partition_key: str) -> dict:
        held.append((partition_key, lock_holder(paths.root, f"parted[{partition_key}]") is not None,
                     lock_holder(paths.root, "parted") is not None))
        if partition_key == "b":
            raise ValueError("partition b is broken")
        return {"who": partition_key}

    resources = {"paths": TadsPaths(home=str(tmp_path / "home"))}
    instance = DagsterInstance.ephemeral()
    ok = materialize([parted], resources=resources, instance=instance, partition_key="c")
    assert ok.success and ok.asset_materializations_for_node("parted")[0].metadata["who"].value == "c"
    bad = materialize([parted], resources=resources, instance=instance, raise_on_error=False,
                      tags={RANGE_START: "a", RANGE_END: "c"})
    assert not bad.success
    mats = [e.event_log_entry.asset_materialization for e in instance.fetch_materializations(AssetKey("parted"), limit=10).records]
    assert sorted((m.partition, m.metadata["who"].value) for m in mats) == [("a", "a"), ("c", "c")]  # c from the first run
    assert held == [("c", True, False), ("a", True, False), ("b", True, False)]  # each partition's own lock


def test_a_range_run_with_concurrency_runs_partitions_at_once_and_keeps_those_that_finished(tmp_path):
    # @one_writer_per_partition(concurrency=...): the partitions of one run run in that many threads, each under its
    # own lock and with its own metadata, and the one left over from full rounds (5 partitions, 2 at a time) in a round
    # of its own; when one fails, the others that finished are recorded and no later round starts
    import contextlib
    import threading
    import time

    from dagster import AssetExecutionContext, AssetKey, BackfillPolicy, DagsterInstance, StaticPartitionsDefinition, asset

    from resources import one_writer_per_partition
    from tads_assets.local import RANGE_END, RANGE_START

    entered, running, peak, lock = [], [0], [0], threading.Lock()

    @contextlib.contextmanager
    def two(arguments, n):
        entered.append((sorted(arguments["context"].partition_keys), n))
        yield min(2, n)

    @asset(partitions_def=StaticPartitionsDefinition(["a", "b", "c", "d", "e"]),
           backfill_policy=BackfillPolicy.single_run())
    @one_writer_per_partition(concurrency=two)
    def parted(context: AssetExecutionContext, paths: TadsPaths, partition_key: str) -> dict:
        assert lock_holder(paths.root, f"parted[{partition_key}]") is not None
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        if partition_key == "c" and context.run.tags.get("fail"):
            raise ValueError("partition c is broken")
        return {"who": partition_key, "thread": threading.current_thread().name}

    resources = {"paths": TadsPaths(home=str(tmp_path / "home"))}
    instance = DagsterInstance.ephemeral()
    ok = materialize([parted], resources=resources, instance=instance, tags={RANGE_START: "a", RANGE_END: "e"})
    keys = ["a", "b", "c", "d", "e"]
    assert ok.success and peak[0] == 2 and entered == [(keys, 5), (keys, 1)]
    mats = {m.partition: m.metadata for m in (e.event_log_entry.asset_materialization for e in
            instance.fetch_materializations(AssetKey("parted"), limit=10).records)}
    assert sorted(mats) == keys and all(mats[k]["who"].value == k for k in mats)
    assert len({mats[k]["thread"].value for k in "abcd"}) == 2  # two worker threads
    assert not mats["e"]["thread"].value.startswith("parted")  # the round of one ran in the step's own thread
    other = DagsterInstance.ephemeral()
    bad = materialize([parted], resources=resources, instance=other, raise_on_error=False,
                      tags={RANGE_START: "a", RANGE_END: "e", "fail": "1"})
    assert not bad.success and "partition c is broken" in str(bad.failure_data_for_node("parted").error)
    kept = sorted(e.event_log_entry.asset_materialization.partition
                  for e in other.fetch_materializations(AssetKey("parted"), limit=10).records)
    assert kept[:2] == ["a", "b"] and "c" not in kept  # a and b finished beside or before c; d may not have started
    assert "e" not in kept  # its round never started
