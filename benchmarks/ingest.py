"""Ingestion throughput of the raw_pool stage on the default demo pool (10,000 samples).

    .venv/bin/python benchmarks/ingest.py [--n 10000] [--repeats 3] [--workdir DIR]

Generates the demo pool once (and reports how long that took), then runs the streaming ingestion
(`tads_assets.core.io.ingest.ingest_pool`: tar streaming, full image decode, caption checks, sha256,
Parquet and ledger writes) `--repeats` times and prints the median samples/s.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import tads_assets  # noqa: F401
from tads_assets.core.demo.demo_pool import DemoConfig, demo_shard_pattern, ensure_demo_pool
from tads_assets.core.io import formats, ingest
from tads_assets.core.io.catalog import Catalog
from tads_assets.core.io.ledger import Ledger


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tads-bench-ingest-"))
    demo = Catalog(work).demo_dir  # the work folder is a TADS_HOME; each run ingests into its own, work/run<i>
    t0 = time.perf_counter()
    manifest = ensure_demo_pool(demo, DemoConfig(n_samples=args.n))
    gen_s = time.perf_counter() - t0
    spec = demo_shard_pattern(demo, manifest)
    shards = formats.list_shards(spec)
    print(f"demo pool: {manifest['n_samples']} samples, {len(shards)} shards "
          f"(generated in {manifest['seconds']:.1f} s; this call {gen_s:.1f} s)")

    rates = []
    for i in range(args.repeats):
        run = Catalog(work / f"run{i}")
        result = ingest.ingest_pool(shards, run.raw_pool.dir, Ledger(run.ledger_dir), source=spec,
                                    progress=lambda _msg: None)
        rates.append(result.samples_per_s)
        print(f"run {i + 1}: {result.n_seen} seen, {result.n_kept} kept, {result.n_dropped} ledgered, "
              f"{result.seconds:.2f} s, {result.samples_per_s:.0f} samples/s")
    print(f"ingestion throughput: median {statistics.median(rates):.0f} samples/s over {len(rates)} runs "
          f"(min {min(rates):.0f}, max {max(rates):.0f}); reasons: {result.reasons}")


if __name__ == "__main__":
    main()
