"""Wall time of the per-sample stages (frozen_features, operator_features) backfilled over raw_pool parts by 1 and
by 2 worker processes, in one run, on a freshly generated demo pool.

Each worker process runs one partition at a time through Dagster (`materialize` of that partition, on a shared
on-disk Dagster instance), with one torch thread and one Tesseract process, as a backfill's runs do; the same
parts are computed from scratch for each worker count. The unpartitioned stages between them (clip_encoder,
pool_embeddings, deduped_pool) run once, untimed. Outputs of the two worker counts are compared byte for byte.

    .venv/bin/python benchmarks/scaling.py                 # 3,000 samples in 12 parts, about 6 minutes
    .venv/bin/python benchmarks/scaling.py --samples 10000 --shard-size 1000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tads_assets  # noqa: E402,F401
from resources import Ocr, TadsPaths, TorchDevice, tads_resources  # noqa: E402
from tads_assets.core.demo.demo_pool import DemoConfig, generate_demo_pool  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402

_RESOURCES: dict = {}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # Dagster's per-event log lines


def _resources(home: Path, pool: str, tasks: str, ocr_workers: int) -> dict:
    """Every resource of the code location (the IO manager included) on `home`, on CPU, with `ocr_workers`
    Tesseract processes; the defaults otherwise."""
    return tads_resources(TadsPaths(home=str(home), pool=pool, tasks=tasks), device=TorchDevice(device="cpu"),
                          ocr=Ocr(workers=ocr_workers))


def _init_worker(home: str, pool: str, tasks: str, dagster_home: str) -> None:
    """One worker process: one torch thread, one Tesseract process, the shared Dagster instance."""
    os.environ["DAGSTER_HOME"] = dagster_home
    os.environ["OMP_THREAD_LIMIT"] = "1"
    import torch

    torch.set_num_threads(1)
    import definitions  # noqa: F401  (the code location, loaded once per worker)

    _RESOURCES.update(_resources(Path(home), pool, tasks, ocr_workers=1))


def _ready() -> int:
    return os.getpid()


def _materialize_partition(asset_name: str, part: str) -> float:
    from dagster import DagsterInstance
    from tads_assets.local import materialize

    import definitions

    t0 = time.perf_counter()
    result = materialize(definitions.all_assets, selection=[asset_name], partition_key=part, resources=_RESOURCES,
                         instance=DagsterInstance.get(), raise_on_error=True, run_config=QUIET)
    assert result.success, (asset_name, part)
    return time.perf_counter() - t0


def _backfill(asset_name: str, parts: list[str], workers: int, args: tuple) -> tuple[float, list[float]]:
    """Every partition of `asset_name` by a pool of `workers` processes (started and warmed before the clock)."""
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=args) as pool:
        pids = set()
        while len(pids) < workers:  # every worker started and initialised
            pids |= {f.result() for f in [pool.submit(_ready) for _ in range(workers * 2)]}
        t0 = time.perf_counter()
        per_part = list(pool.map(_materialize_partition, [asset_name] * len(parts), parts))
        return time.perf_counter() - t0, per_part


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("part-*.parquet")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--keep", help="work folder to keep (default: a temporary one, removed)")
    args = p.parse_args()
    os.environ.setdefault("RUST_LOG", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # inherited by the workers

    from dagster import DagsterInstance
    from tads_assets.local import materialize

    import definitions  # the code location, loaded after RUST_LOG is set (as _init_worker loads it per worker)

    work = Path(args.keep or tempfile.mkdtemp(prefix="tads-scaling-")).resolve()
    home, dagster_home = work / "home", work / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    t0 = time.perf_counter()
    cat = Catalog(home)
    demo = cat.demo_dir
    manifest = generate_demo_pool(demo, DemoConfig(n_samples=args.samples, seed=0, shard_size=args.shard_size))
    pool = f"webdataset:{demo}/pool/{{00000..{manifest['n_shards'] - 1:05d}}}.tar"
    tasks = str(demo / "tasks.yaml")
    resources = _resources(home, pool, tasks, ocr_workers=1)
    instance = DagsterInstance.get()
    print(f"scaling: demo pool of {args.samples} samples in {manifest['n_shards']} shards under {work} "
          f"({time.perf_counter() - t0:.0f} s); {os.cpu_count()} CPUs", flush=True)

    def run(*names: str) -> None:
        t = time.perf_counter()
        assert materialize(definitions.all_assets, selection=list(names), resources=resources, instance=instance,
                           run_config=QUIET).success
        print(f"scaling: {', '.join(names)} (unpartitioned, once) in {time.perf_counter() - t:.0f} s", flush=True)

    run("raw_pool")
    parts = sorted(instance.get_dynamic_partitions("raw_pool_parts"))
    worker_args = (str(home), pool, tasks, str(dagster_home))
    rows, totals, digests = [], {w: 0.0 for w in args.workers}, {}
    stages = [("frozen_features", cat.frozen_features.dir, ("clip_encoder", "pool_embeddings", "deduped_pool")),
              ("operator_features", cat.operator_features.dir, ())]
    for stage, cache, after in stages:
        row = {"stage": stage, "parts": len(parts)}
        for w in args.workers:
            shutil.rmtree(cache, ignore_errors=True)
            wall, per_part = _backfill(stage, parts, w, worker_args)
            row[w] = wall
            totals[w] += wall
            digests[(stage, w)] = _digest(cache)
            print(f"scaling: {stage} over {len(parts)} parts with {w} worker process(es): {wall:.1f} s "
                  f"(median {sorted(per_part)[len(per_part) // 2]:.1f} s per part)", flush=True)
        rows.append(row)
        if after:
            run(*after)

    base = args.workers[0]
    print("\n| stage | parts | " + " | ".join(f"{w} process{'es' if w > 1 else ''} (s)" for w in args.workers)
          + " | " + " | ".join(f"speed-up {base}→{w}" for w in args.workers[1:]) + " | same output |")
    print("|---" * (3 + 2 * (len(args.workers) - 1) + 1) + "|")
    for row in [*rows, {"stage": "per-sample stages, total", "parts": len(parts), **totals}]:
        same = "" if row["stage"].endswith("total") else (
            "yes" if len({digests[(row["stage"], w)] for w in args.workers}) == 1 else "NO")
        print(f"| {row['stage']} | {row['parts']} | " + " | ".join(f"{row[w]:.1f}" for w in args.workers) + " | "
              + " | ".join(f"{row[base] / row[w]:.2f}×" for w in args.workers[1:]) + f" | {same} |")
    for w in args.workers[1:]:
        ratio = totals[base] / totals[w]
        print(f"\nspeed-up of the per-sample stages, {base} → {w} worker processes: {ratio:.2f}× "
              f"(target ≥ 1.6×: {'met' if ratio >= 1.6 else 'NOT met'})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
