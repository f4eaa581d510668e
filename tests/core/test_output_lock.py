"""One writer per output: the lock of a stage output (storage.output_lock), per-writer staging folders and a
replace_dir that two writers can race on."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from tads_assets.core.io import storage
from tads_assets.core.io.ledger import Ledger
from tads_assets.core.io.storage import OutputLockTimeout, lock_holder, lock_path, output_lock

REPO = Path(__file__).resolve().parents[2]


def test_a_second_holder_waits_until_the_first_releases_and_is_told_who_holds_it(tmp_path):
    messages, got = [], threading.Event()

    def second():
        with output_lock(tmp_path, "raw_pool", holder="run-B", log=messages.append, report_every_s=0.25, poll_s=0.02):
            got.set()

    with output_lock(tmp_path, "raw_pool", holder="run-A") as path:
        assert path == tmp_path / "locks" / "raw_pool.lock"
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.8)
        assert not got.is_set(), "the second holder got the lock while the first held it"
        assert lock_holder(tmp_path, "raw_pool")["run_id"] == "run-A"
    waiter.join(5)
    assert got.is_set(), "the second holder never got the lock after the first released it"
    assert messages[0].startswith(f"raw_pool is being written by run run-A (pid {os.getpid()} on ")
    assert messages[0].endswith("; waiting") and " since " in messages[0]
    assert len(messages) >= 3  # once at the start, then every report_every_s, then "acquired"
    assert all("run run-A" in m and "waiting (" in m for m in messages[1:-1])
    assert messages[-1].startswith("raw_pool: lock acquired after waiting")
    assert lock_holder(tmp_path, "raw_pool") is None  # released, and the file says nobody holds it
    assert (tmp_path / "locks" / "raw_pool.lock").read_text() == ""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    child = ("import sys, time\nfrom tads_assets.core.io.storage import output_lock\n"
             "with output_lock(sys.argv[1], 'deduped_pool', holder='run-killed'):\n"
             "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        info = lock_holder(tmp_path, "deduped_pool")
        assert info["run_id"] == "run-killed" and info["pid"] == proc.pid
        messages = []
        with pytest.raises(OutputLockTimeout, match=rf"deduped_pool is being written by run run-killed \(pid "
                                                    rf"{proc.pid} on .*\) since .*; gave up waiting after 0.3 s"):
            with output_lock(tmp_path, "deduped_pool", holder="run-impatient", log=messages.append, timeout_s=0.3):
                pass
        assert messages and f"pid {proc.pid}" in messages[0]
    finally:
        proc.kill()
        proc.wait(10)
    assert lock_holder(tmp_path, "deduped_pool") is None  # the kernel released it with the process
    messages, t0 = [], time.monotonic()
    with output_lock(tmp_path, "deduped_pool", holder="run-next", log=messages.append, timeout_s=2):
        assert time.monotonic() - t0 < 1.0 and messages == []
        assert lock_holder(tmp_path, "deduped_pool")["run_id"] == "run-next"


def test_locks_are_per_name_and_reentrant_for_their_holder(tmp_path):
    with output_lock(tmp_path, "baseline_subsets[random]", holder="run-A"):
        with output_lock(tmp_path, "baseline_subsets[dbp]", holder="run-B", timeout_s=0.2):
            pass  # another partition: not blocked
        with output_lock(tmp_path, "baseline_subsets[random]", holder="run-A", timeout_s=0.2):
            pass  # the same holder again (nested): not blocked by itself
        assert lock_holder(tmp_path, "baseline_subsets[random]")["run_id"] == "run-A"  # still held after the nested exit
        with pytest.raises(OutputLockTimeout):
            with output_lock(tmp_path, "baseline_subsets[random]", holder="run-B", timeout_s=0.2, poll_s=0.02):
                pass


@pytest.mark.parametrize("name", ["", ".raw_pool", "../raw_pool", "a/b", "a\\b", "raw..pool", "raw\x00pool",
                                  "raw pool", "x" * 300, "/etc/passwd"])
def test_lock_names_are_plain_file_names(tmp_path, name):
    with pytest.raises(ValueError, match="invalid output lock name"):
        lock_path(tmp_path, name)
    with pytest.raises(ValueError):
        with output_lock(tmp_path, name, holder="run"):
            pass
    assert not (tmp_path / "locks").exists()  # refused before anything was created


def test_write_stage_output_stages_per_run_and_removes_its_staging_on_failure(tmp_path, monkeypatch):
    out, ledger = tmp_path / "parquet" / "deduped_pool", Ledger(tmp_path / "ledger")
    kept = pl.DataFrame({"uid": ["a", "b"]})
    drops = pl.DataFrame({"uid": ["c"], "decision": ["drop"], "reason": ["dup"], "value": [1.0], "detail": [""]})
    first = storage.write_stage_output(out, ledger, "deduped_pool", kept, drops)
    staged = []
    real_write = storage.write_json_atomic

    def failing_write(obj, path):
        staged.append(Path(path).parent.name)
        raise OSError("disk full")

    monkeypatch.setattr(storage, "write_json_atomic", failing_write)
    with pytest.raises(OSError, match="disk full"):
        storage.write_stage_output(out, ledger, "deduped_pool", kept.head(1), drops)
    monkeypatch.setattr(storage, "write_json_atomic", real_write)
    assert staged and staged[0].startswith(".deduped_pool.staging-")  # its own folder, named by its run id
    assert sorted(p.name for p in out.parent.iterdir()) == ["deduped_pool"]  # nothing left behind
    assert pl.read_parquet(out / "deduped_pool.parquet")["uid"].to_list() == ["a", "b"]  # the previous output
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == first["run_id"]


def test_replace_dir_survives_two_writers_swapping_the_same_target(tmp_path):
    target, errors = tmp_path / "out", []

    def writer(who: str):
        try:
            for i in range(150):
                staging = storage.staging_dir(target, f"{who}-{i}")
                staging.mkdir()
                for f in ("a", "b", "c"):
                    (staging / f).write_text(f"{who}-{i}")
                storage.replace_dir(staging, target)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(w,)) for w in ("w1", "w2", "w3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    contents = {(target / f).read_text() for f in ("a", "b", "c")}
    assert len(contents) == 1  # one writer's folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or .old- folder left
