"""Behaviour-preservation check for refactors: build a fresh demo home, then compare two homes output by output.

    python benchmarks/equivalence.py build --home /tmp/before --samples 2000
    python benchmarks/equivalence.py compare /tmp/before /tmp/after

`build` materializes the whole graph in process, the way `make demo` does (every unpartitioned asset up to
TADS's subset with its checks, one baseline subset and one trained CLIP per method, then the benchmark), into a
fresh TADS_HOME on a demo pool of `--samples` samples. `compare` reads every Parquet file, every LanceDB table
and the benchmark report of both homes and prints each difference; it exits 1 when there is one. Timings and
run ids are not outputs: the files compared hold data only (metadata lives in the Dagster instance), and the
ledger's `run_id` and `ts` columns are left out. Ledger files are named by stage and run, so they are matched by
stage: each stage's rows of both homes are compared.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build(home: Path, samples: int) -> None:
    os.environ.update({"TADS_HOME": str(home), "TADS_DEMO_SAMPLES": str(samples), "TADS_POOL": "demo",
                       "TADS_TASKS": "", "TADS_DEVICE": "cpu"})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dagster import materialize

    import definitions

    defs = definitions.defs
    nodes = list(definitions.all_assets) + list(definitions.all_checks)
    resources = dict(defs.resources)
    assets = [a for a in definitions.all_assets if hasattr(a, "partitions_def")]
    by_name = {a.key.to_user_string(): a for a in assets}
    per_part = {"frozen_features", "operator_features"}
    per_method = {name for name, a in by_name.items() if a.partitions_def is not None} - per_part
    upstream = [a.key for name, a in by_name.items() if a.partitions_def is None and name != "benchmark_scores"]
    _ok(materialize(nodes, selection=upstream, resources=resources), "upstream")
    methods = by_name["trained_clip"].partitions_def.get_partition_keys()
    for method in methods:
        for name in sorted(per_method, key=lambda n: n != "baseline_subsets"):
            if method in by_name[name].partitions_def.get_partition_keys():
                _ok(materialize(nodes, selection=[by_name[name].key], resources=resources, partition_key=method),
                    f"{name}[{method}]")
    _ok(materialize(nodes, selection=[by_name["benchmark_scores"].key], resources=resources), "benchmark_scores")


def _ok(result, what: str) -> None:
    if not result.success:
        raise SystemExit(f"{what} failed")
    print(f"materialized {what}", flush=True)


RUN_IDENTITY = ["run_id", "ts"]


def _frames(home: Path) -> dict[str, object]:
    import lancedb
    import polars as pl

    from tads_assets.core.io.catalog import Catalog

    cat, out = Catalog(home), {}
    for f in sorted(cat.parquet_dir.rglob("*.parquet")):
        out[f"parquet/{f.relative_to(cat.parquet_dir)}"] = pl.read_parquet(f)
    for stage in sorted(p for p in cat.ledger_dir.glob("stage=*") if p.is_dir()):  # a run's id and clock are not data
        files = sorted(stage.glob("*.parquet"))
        out[f"ledger/{stage.name}"] = pl.concat([pl.read_parquet(f) for f in files]).drop(RUN_IDENTITY, strict=False)
    if cat.lance_dir.exists():
        db = lancedb.connect(str(cat.lance_dir))
        listing = db.list_tables()
        names = list(getattr(listing, "tables", listing))
        for name in sorted(names):
            out[f"lance/{name}"] = pl.from_arrow(db.open_table(name).to_arrow())
    return out


def _relative(frames: dict, home: Path) -> dict:
    """The home's own path inside string values (a sample's image_ref under TADS_HOME/demo) as `<home>`."""
    import polars as pl

    return {k: f.with_columns(pl.col(pl.Utf8).str.replace_all(str(home), "<home>", literal=True))
            for k, f in frames.items()}


def _same(a, b) -> str | None:
    import polars as pl

    if a.columns != b.columns:
        return f"columns {a.columns} != {b.columns}"
    if a.schema != b.schema:
        return f"schema {a.schema} != {b.schema}"
    if a.height != b.height:
        return f"{a.height} rows != {b.height} rows"
    if "uid" in a.columns and not a.equals(b):
        key = [c for c in a.columns if a.schema[c] not in (pl.List, pl.Array, pl.Object)]
        a, b = a.sort(key), b.sort(key)
        if a.equals(b):
            return "same rows in another order"
    if not a.equals(b):
        diff = [c for c in a.columns if not a[c].equals(b[c])]
        return f"values differ in columns {diff}"
    return None


def compare(first: Path, second: Path) -> int:
    fa, fb = _relative(_frames(first), first), _relative(_frames(second), second)
    problems = [f"only in {first}: {k}" for k in sorted(fa.keys() - fb.keys())]
    problems += [f"only in {second}: {k}" for k in sorted(fb.keys() - fa.keys())]
    for key in sorted(fa.keys() & fb.keys()):
        why = _same(fa[key], fb[key])
        if why:
            problems.append(f"{key}: {why}")
    from tads_assets.core.io.catalog import Catalog

    reports = [p.relative_to(first) for p in sorted(Catalog(first).benchmark_scores.dir.glob("benchmark*")) if p.is_file()]
    for rel in reports:
        if not (second / rel).exists() or (first / rel).read_bytes() != (second / rel).read_bytes():
            problems.append(f"{rel}: differs")
    print(f"compared {len(fa.keys() & fb.keys())} tables and {len(reports)} report files")
    for p in problems:
        print("DIFF", p)
    print("equal" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--home", type=Path, required=True)
    b.add_argument("--samples", type=int, default=2000)
    c = sub.add_parser("compare")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        if args.home.exists() and any(args.home.iterdir()):
            raise SystemExit(f"{args.home} is not empty: build needs a fresh home")
        build(args.home.resolve(), args.samples)
        return 0
    return compare(args.first.resolve(), args.second.resolve())


if __name__ == "__main__":
    raise SystemExit(main())
