"""`tads` command line: generate the demo pool, explain a sample's history, summarise the ledger."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("TADS_HOME", ".tads")).expanduser().resolve()


def cmd_demo_pool(args: argparse.Namespace) -> int:
    from tads_assets.core.demo_pool import DEFAULT_RATES, DemoConfig, generate_demo_pool

    rates = dict(DEFAULT_RATES)
    for item in args.rate or []:
        kind, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--rate takes KIND=RATE, got {item!r}")
        rates[kind] = float(value)
    config = DemoConfig(n_samples=args.n, seed=args.seed, shard_size=args.shard_size, rates=rates)
    manifest = generate_demo_pool(args.out, config)
    print(f"demo pool: {manifest['n_samples']} samples in {manifest['n_shards']} shards -> {Path(args.out).resolve()}")
    print(f"generated in {manifest['seconds']} s")
    width = max(len(k) for k in manifest["kind_counts"])
    for kind, n in manifest["kind_counts"].items():
        print(f"  {kind:<{width}}  {n}")
    print("task sets:", json.dumps(manifest["task_set_sizes"]))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import polars as pl

    from tads_assets.core.ledger import Ledger

    home = _home(args)
    history = Ledger(home / "ledger").history(args.uid, all_runs=args.all_runs)
    kept_in = []
    outputs = sorted({f.parent for f in (home / "parquet").rglob("*.parquet") if not f.name.startswith(".")})
    for folder in outputs:  # an asset's folder, or one partition's (baseline_subsets/<method>)
        files = sorted(str(f) for f in folder.glob("*.parquet") if not f.name.startswith("."))
        if pl.scan_parquet(files).filter(pl.col("uid") == args.uid).select(pl.len()).collect().item():
            rel = folder.relative_to(home / "parquet").parts
            kept_in.append(rel[0] if len(rel) == 1 else f"{rel[0]}[{'/'.join(rel[1:])}]")
    if history.is_empty() and not kept_in:
        print(f"{args.uid}: never seen under {home} (no ledger row, in no stage output)")
        return 1
    print(f"sample {args.uid}")
    for row in history.iter_rows(named=True):
        value = "" if row["value"] is None else f" value={row['value']:.4g}"
        print(f"  {row['ts']:%Y-%m-%d %H:%M:%S}  {row['stage']:<22} {row['decision']:<6} {row['reason']}{value}")
        if row["detail"]:
            print(f"      {row['detail']}")
    if kept_in:
        print(f"  present in: {', '.join(kept_in)}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from tads_assets.core.ledger import Ledger

    summary = Ledger(_home(args) / "ledger").summary()
    if summary.is_empty():
        print("ledger is empty: nothing has been dropped yet (or nothing has run)")
        return 0
    print(f"{'stage':<22} {'decision':<8} {'reason':<24} samples")
    for row in summary.iter_rows(named=True):
        print(f"{row['stage']:<22} {row['decision']:<8} {row['reason']:<24} {row['n']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tads", description="TADS: task-aware data selection for CLIP pre-training")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-pool", help="render the synthetic demo pool with ground truth and its task set")
    d.add_argument("--out", required=True, help="output folder (replaced)")
    d.add_argument("--n", type=int, default=10_000, help="number of samples (default 10000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--shard-size", type=int, default=1_000)
    d.add_argument("--rate", action="append", metavar="KIND=RATE", help="override a noise rate, e.g. misaligned=0.1")
    d.set_defaults(func=cmd_demo_pool)

    e = sub.add_parser("explain", help="print every ledger decision about one sample")
    e.add_argument("uid")
    e.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    e.add_argument("--all-runs", action="store_true", help="include superseded runs of each stage")
    e.set_defaults(func=cmd_explain)

    s = sub.add_parser("ledger", help="counts of ledgered decisions per stage and reason")
    s.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    s.set_defaults(func=cmd_ledger)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
