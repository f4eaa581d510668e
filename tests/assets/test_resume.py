"""Interruption: a `dagster asset materialize` process group killed (SIGKILL) mid-stage, then the stage run again.
Finished shards/parts are reused, not recomputed; the outputs equal an uninterrupted run's; no half-written file
is ever read as complete."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tads_assets.local import materialize
from safetensors.numpy import load_file

from resources import TadsPaths
from tads_assets.checks import deduped_pool_ledger_complete
from tads_assets.core.io import embeddings
from tads_assets.core.demo import hostile
from tads_assets.core.io.ledger import Ledger
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool
from tests.assets.conftest import metadata_values, resources_for
from tests.conftest import write_tar

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _materialize_then_kill(select: str, home: Path, pool: str, tasks: str, ready, timeout: float = 240) -> str:
    """Run `dagster asset materialize --select <select>` in its own process group and SIGKILL the whole group as soon
    as `ready()` holds. Returns the process output; fails if the run ended before it could be interrupted."""
    env = {**os.environ, "TADS_HOME": str(home), "TADS_POOL": pool, "TADS_TASKS": tasks,
           "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    log = open(home / f"interrupted-{select}.log", "w+")
    proc = subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "-m", "definitions", "--select", select],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                break
            assert proc.poll() is None, f"{select} ended (rc {proc.returncode}) before it could be interrupted"
            time.sleep(0.003)
        else:
            pytest.fail(f"{select} never reached the point to interrupt it")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.seek(0)
        output = log.read()
        log.close()
    return output


def _ledger_rows(home: Path, stage: str) -> pl.DataFrame:
    return Ledger(home / "ledger").read(stage).drop("run_id", "ts")


def _pool_parts(home: Path) -> dict[str, pl.DataFrame]:
    return {p.name: pl.read_parquet(p) for p in sorted((home / "parquet" / "raw_pool").glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def shard_pool(tmp_path_factory):
    """4 shards of 200 samples (large enough that ingesting one takes a while), 2 broken samples each."""
    root = tmp_path_factory.mktemp("resume_pool")
    for s in range(4):
        members = []
        for i in range(200):
            img, cap = hostile.good_image(s * 1000 + i, size=128)
            members += [(f"{s}{i:05d}.jpg", img if i % 100 else img[:200]), (f"{s}{i:05d}.txt", cap.encode())]
        write_tar(root / f"{s:05d}.tar", members)
    return f"webdataset:{root}/{{00000..00003}}.tar"


def test_raw_pool_killed_mid_ingestion_resumes_at_the_first_unfinished_shard(tmp_path, shard_pool, demo_dir):
    tasks = str(demo_dir / "tasks.yaml")
    home = tmp_path / "interrupted"
    staging = home / "parquet" / ".raw_pool.staging"
    output = _materialize_then_kill("raw_pool", home, shard_pool, tasks,
                                    ready=lambda: (staging / "_shard-00000.json").exists())
    finished = sorted(p.name for p in staging.glob("_shard-?????.json"))
    assert 1 <= len(finished) < 4, (finished, output[-2000:])
    assert not (home / "parquet" / "raw_pool").exists()  # the half-built pool is never visible as raw_pool

    resumed = materialize([raw_pool], resources=resources_for(home, shard_pool, tasks))
    assert resumed.success
    meta = metadata_values(resumed, "raw_pool")
    assert meta["shards_resumed"] == len(finished) and meta["n_in"] == 800 and meta["n_dropped"] == 8

    fresh = tmp_path / "uninterrupted"
    assert materialize([raw_pool], resources=resources_for(fresh, shard_pool, tasks)).success
    a, b = _pool_parts(home), _pool_parts(fresh)
    assert list(a) == list(b) and all(a[name].equals(b[name]) for name in a)
    assert _ledger_rows(home, "raw_pool").equals(_ledger_rows(fresh, "raw_pool"))
    left = {p.name for p in (home / "parquet").rglob("*")} - {p.name for p in (fresh / "parquet").rglob("*")}
    assert not left and not staging.exists()  # no staging, markers or temporary files left behind


def test_clip_encoder_killed_mid_features_reuses_finished_parts_and_matches(tmp_path, built, demo_spec, demo_dir):
    paths, _, _ = built
    tasks = str(demo_dir / "tasks.yaml")
    home = tmp_path / "home"
    resources = resources_for(home, demo_spec, tasks)
    assert materialize([raw_pool], resources=resources).success
    cache = TadsPaths(home=str(home), pool=demo_spec, tasks=tasks).catalog.frozen_cache_dir
    _materialize_then_kill("clip_encoder", home, demo_spec, tasks,
                           ready=lambda: cache.exists() and any(cache.glob("part-*.parquet")))
    done = sorted(p.name for p in cache.glob("part-*.parquet"))
    assert 1 <= len(done) < 4, done

    resumed = materialize([raw_pool, clip_encoder], selection=[clip_encoder.key], resources=resources)
    meta = metadata_values(resumed, "clip_encoder")
    assert meta["frozen_parts_cached"] == len(done) and meta["frozen_parts_computed"] == 4 - len(done)
    for part in sorted(paths.catalog.frozen_cache_dir.glob("part-*.parquet")):
        assert pl.read_parquet(cache / part.name).equals(pl.read_parquet(part)), part.name
    ours, theirs = home / "models" / "clip_encoder", paths.catalog.models_dir / "clip_encoder"
    for name in ("heads.safetensors", "heads-heldout-0.safetensors"):
        a, b = load_file(ours / name), load_file(theirs / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    assert json.loads((ours / "encoder.json").read_text())["encoder_id"] == \
        json.loads((theirs / "encoder.json").read_text())["encoder_id"]


def _step_failure(result) -> str:
    return "\n".join(e.event_specific_data.error.to_string() for e in result.all_events if e.is_step_failure)


def test_nan_and_inf_vectors_injected_after_embedding(tmp_path, built, demo_spec, demo_dir):
    """Vectors damaged after they were written. In LanceDB (which refuses NaN on write, so inf here):
    deduped_pool drops exactly those samples with a ledger row naming the vector, its ledger-completeness check
    still passing. In the frozen-feature cache (NaN): pool_embeddings stops before writing, naming the part, a
    sample and the fix; following it (clip_encoder) recomputes just that part and the table is finite again."""
    import shutil

    paths, _, _ = built
    home = tmp_path / "copy"
    shutil.copytree(paths.root, home)
    resources = resources_for(home, demo_spec, str(demo_dir / "tasks.yaml"))
    db = resources["paths"].catalog.pool_embeddings.connect()
    part = sorted(p.stem for p in (home / "parquet" / "raw_pool").glob("part-*.parquet"))[0]
    uids = hostile.damage_embeddings(db, part)  # inf in uids[0]'s image vector, -inf in uids[1]'s text vector
    result = materialize([raw_pool, pool_embeddings, deduped_pool, deduped_pool_ledger_complete],
                         selection=[deduped_pool.key], resources=resources)
    assert result.success  # includes the blocking ledger-completeness check
    drops = Ledger(home / "ledger").read("deduped_pool").filter(pl.col("reason") == embeddings.NON_FINITE_EMBEDDING)
    assert dict(zip(drops["uid"], drops["detail"].str.extract(r"^(\w+_vec)"))) == {uids[0]: "image_vec",
                                                                                    uids[1]: "text_vec"}
    assert "recompute: true" in drops["detail"][0]
    kept = pl.read_parquet(home / "parquet" / "deduped_pool" / "deduped_pool.parquet")["uid"]
    assert not set(uids[:2]) & set(kept) and metadata_values(result, "deduped_pool")["non_finite_embeddings"] == 2

    hostile.damage_frozen_features(TadsPaths(home=str(home), pool=demo_spec).catalog.frozen_cache_dir / f"{part}.parquet", 5)
    recompute = {"ops": {"pool_embeddings": {"config": {"recompute": True}}}}
    failed = materialize([raw_pool, clip_encoder, pool_embeddings], selection=[pool_embeddings.key],
                         resources=resources, run_config=recompute, raise_on_error=False)
    message = _step_failure(failed)
    assert not failed.success and f"raw_pool part {part}" in message and uids[5] in message
    assert "materialize clip_encoder" in message
    healed = materialize([raw_pool, clip_encoder], selection=[clip_encoder.key], resources=resources)
    assert metadata_values(healed, "clip_encoder")["frozen_parts_computed"] == 1
    fixed = materialize([raw_pool, clip_encoder, pool_embeddings], selection=[pool_embeddings.key],
                        resources=resources, run_config=recompute)
    assert metadata_values(fixed, "pool_embeddings")["parts_computed"] == 4
    frame = embeddings.read_embeddings(db, uids=uids[:6])
    assert all(np.isfinite(v).all() for v in embeddings.arrays(frame, "image_vec", "text_vec", "flipped_image_vec"))
