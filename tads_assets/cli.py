"""`tads` command line: generate the demo pool, run the graph in one process (run), the state of every asset
(status), a sample's history (explain), the ledger's summary, and exporting a selection to train on (export). Stage outputs are read through the catalogue
(`tads_assets.core.io.catalog`). Dagster, the code location, the catalogue and the demo generator (which import
torch through the library's readers) are imported by the commands that need them, so `tads --help` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from tads_assets.core.io.ledger import Ledger
from tads_assets.core.sanitize import one_line

if TYPE_CHECKING:
    from tads_assets.core.io.catalog import Catalog


def _safe(text: object) -> str:
    """Data from the pool as printed: escapes shown, never run by the terminal (ledger details quote file names,
    captions and keys as the pool had them)."""
    return one_line(text, limit=None)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("TADS_HOME", ".tads")).expanduser().resolve()


def _catalog(args: argparse.Namespace) -> Catalog:
    from tads_assets.core.io.catalog import Catalog  # torch, through the embeddings readers

    return Catalog(_home(args))


def cmd_demo_pool(args: argparse.Namespace) -> int:
    from tads_assets.core.demo.demo_pool import generate_demo_pool
    from tads_assets.core.demo.zoo import zoo_config

    base = zoo_config(args.profile, args.n, args.seed)
    rates = dict(base.rates)
    for item in args.rate or []:
        kind, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--rate takes KIND=RATE, got {item!r}")
        rates[kind] = float(value)
    config = zoo_config(args.profile, args.n, args.seed, shard_size=args.shard_size, rates=rates)
    manifest = generate_demo_pool(args.out, config)
    print(f"demo pool: {manifest['n_samples']} samples in {manifest['n_shards']} shards -> {Path(args.out).resolve()}")
    print(f"generated in {manifest['seconds']} s")
    width = max(len(k) for k in manifest["kind_counts"])
    for kind, n in manifest["kind_counts"].items():
        print(f"  {kind:<{width}}  {n}")
    print("task sets:", json.dumps(manifest["task_set_sizes"]))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    cat = _catalog(args)
    home, ledger = cat.root, Ledger(cat.ledger_dir)
    history = ledger.history(args.uid, all_runs=args.all_runs)
    kept_in = []
    base = cat.raw_pool.dir.parent  # the folder holding every asset's Parquet output
    for folder in cat.parquet_outputs():  # an asset's folder, or one partition's (baseline_subsets/<method>)
        files = sorted(str(f) for f in folder.glob("*.parquet") if not f.name.startswith("."))
        if pl.scan_parquet(files).filter(pl.col("uid") == args.uid).select(pl.len()).collect().item():
            rel = folder.relative_to(base).parts
            kept_in.append(rel[0] if len(rel) == 1 else f"{rel[0]}[{'/'.join(rel[1:])}]")
    earlier = False
    if history.is_empty() and not kept_in and not args.all_runs:  # seen only by runs the latest ones superseded
        history = ledger.history(args.uid, all_runs=True)
        earlier = not history.is_empty()
    if history.is_empty() and not kept_in:
        print(f"{_safe(args.uid)}: never seen under {home} (no ledger row in any run, in no stage output)")
        return 1
    print(f"sample {_safe(args.uid)}" + (" (not in the current pool: decisions of earlier runs)" if earlier else ""))
    for row in history.iter_rows(named=True):
        value = "" if row["value"] is None else f" value={row['value']:.4g}"
        print(f"  {row['ts']:%Y-%m-%d %H:%M:%S}  {row['stage']:<22} {row['decision']:<6} {_safe(row['reason'])}{value}")
        if row["detail"]:
            print(f"      {_safe(row['detail'])}")
    if kept_in:
        print(f"  present in: {', '.join(kept_in)}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    summary = Ledger(_catalog(args).ledger_dir).summary()
    if summary.is_empty():
        print("ledger is empty: nothing has been dropped yet (or nothing has run)")
        return 0
    print(f"{'stage':<22} {'decision':<8} {'reason':<24} samples")
    for row in summary.iter_rows(named=True):
        print(f"{row['stage']:<22} {row['decision']:<8} {_safe(row['reason']):<24} {row['n']}")
    return 0


def _dagster_home(args: argparse.Namespace) -> Path:
    """DAGSTER_HOME, or where the Makefile keeps it: TADS_HOME/dagster."""
    explicit = getattr(args, "dagster_home", None) or os.environ.get("DAGSTER_HOME")
    return Path(explicit).expanduser().resolve() if explicit else _home(args) / "dagster"


def asset_status_rows(instance, asset_graph) -> list[dict]:
    """One row per asset: group, last materialization, and Dagster's own staleness (fresh, stale with its root
    cause, missing); partitioned assets report how many partitions are materialized and which are stale."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContext

    class _Loading(LoadingContext):
        def __init__(self, inst):
            self._instance, self._loaders = inst, {}

        @property
        def instance(self):
            return self._instance

        @property
        def loaders(self):
            return self._loaders

    resolver = CachingStaleStatusResolver(instance, asset_graph, _Loading(instance))
    rows = []
    for key in sorted(asset_graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = asset_graph.get(key)
        event = instance.get_latest_materialization_event(key)
        when = datetime.fromtimestamp(event.timestamp).strftime("%Y-%m-%d %H:%M") if event else "never"
        row = {"asset": key.to_user_string(), "group": node.group_name or "", "last": when}
        if node.partitions_def is None:
            status = resolver.get_status(key)
            detail = status.name.lower()
            if status == StaleStatus.STALE:
                causes = resolver.get_stale_root_causes(key)
                detail += f": {causes[0].key.asset_key.to_user_string()} {causes[0].reason}" if causes else ""
            row["status"] = detail
        else:
            keys = node.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
            done = instance.get_materialized_partitions(key)
            stale = [p for p in keys if p in done and resolver.get_status(key, p) == StaleStatus.STALE]
            row["status"] = (f"{len(done & set(keys))}/{len(keys)} partitions materialized"
                             + (f"; stale: {', '.join(stale)}" if stale else ""))
        rows.append(row)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    os.environ.setdefault("TADS_HOME", str(_home(args)))
    dagster_home = _dagster_home(args)
    if not (dagster_home / "dagster.yaml").exists() and not (dagster_home / "history").exists():
        print(f"no Dagster instance at {dagster_home}: nothing has been materialized there yet (make demo, or set "
              "DAGSTER_HOME / --dagster-home)")
        return 1
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance

    import definitions

    rows = asset_status_rows(DagsterInstance.get(), definitions.defs.resolve_asset_graph())
    print(f"TADS_HOME {os.environ['TADS_HOME']}\nDAGSTER_HOME {dagster_home}")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in ("asset", "group", "last")}
    print(f"{'asset':<{widths['asset']}}  {'group':<{widths['group']}}  {'last materialized':<17}  status")
    for r in rows:
        print(f"{r['asset']:<{widths['asset']}}  {r['group']:<{widths['group']}}  {r['last']:<17}  {r['status']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tads_assets.core.harness.clip_train import export_subset  # torch

    cat = _catalog(args)
    subset = cat.subsets.of(args.method)
    if not subset.exists():
        what = "final_subset" if args.method == "tads" else f"baseline_subsets, partition {args.method}"
        print(f"{subset.path} missing: materialize {what} first", file=sys.stderr)
        return 1
    pairs = cat.raw_pool.rows(subset.uids(), ("caption", "bytes", "format"))
    missing = pairs.filter(pl.col("bytes").is_null())
    if missing.height:
        print(f"{missing.height} selected samples are no longer in raw_pool (e.g. {_safe(missing['uid'][0])}): the subset "
              "belongs to an older pool; materialize the selection again", file=sys.stderr)
        return 1
    out = Path(args.out or cat.export_dir(f"{args.method}-{args.format}")).resolve()
    result = export_subset(pairs["uid"].to_list(), pairs["bytes"].to_list(), pairs["format"].to_list(),
                           pairs["caption"].to_list(), out, shard_size=args.shard_size, kinds=(args.format,))
    print(f"exported {result['samples']} samples of {args.method} as {args.format} -> {result[args.format]}")
    if args.format == "csv":
        print(f"train with: python -m open_clip_train.main --train-data {result['csv']} --dataset-type csv "
              "--csv-separator $'\\t' --csv-img-key filepath --csv-caption-key title ...")
    else:
        print(f"train with: python -m open_clip_train.main --train-data '{result['webdataset']}' --dataset-type "
              f"webdataset --train-num-samples {result['samples']} ...")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """TADS's jobs in order, in this process, recorded in the persistent instance (TADS_HOME/dagster unless
    DAGSTER_HOME is set), so `make ui` / `tads status` show them afterwards."""
    os.environ.setdefault("TADS_HOME", str(_home(args)))
    dagster_home = _dagster_home(args)
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance

    import definitions
    from tads_assets.automation import DEMO_JOBS
    from tads_assets.local import run_jobs

    # the instance's python_logs setting routes TADS's log records into each run's log, which Dagster prints; the
    # root handler main() installed would print every one of them a second time
    logging.getLogger().handlers.clear()
    names = args.jobs or list(DEMO_JOBS)
    known = {j.name for j in definitions.defs.jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"tads run: unknown job(s) {', '.join(unknown)}; the jobs are {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    rows = run_jobs(definitions.defs, names, DagsterInstance.get())
    for r in rows:
        print(f"  {r['job']:<16} {'ok' if r['ok'] else 'FAILED':<6} {r['seconds']:>7.1f} s  {r['steps']} steps"
              + (f"  failed: {', '.join(r['failed_steps'])}" if r["failed_steps"] else ""))
    return 0 if rows and all(r["ok"] for r in rows) and len(rows) == len(names) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tads", description="TADS: task-aware data selection for CLIP pre-training")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-pool", help="render the synthetic demo pool with ground truth and its task set")
    d.add_argument("--out", required=True, help="output folder (replaced)")
    d.add_argument("--n", type=int, default=10_000, help="number of samples (default 10000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--shard-size", type=int, default=1_000)
    d.add_argument("--rate", action="append", metavar="KIND=RATE", help="override a noise rate, e.g. misaligned=0.1")
    d.add_argument("--profile", default="demo", help="which pool of the zoo (demo, catalog, task_minority, "
                   "noise_majority, heldout; docs/results.md)")
    d.set_defaults(func=cmd_demo_pool)

    e = sub.add_parser("explain", help="print every ledger decision about one sample")
    e.add_argument("uid")
    e.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    e.add_argument("--all-runs", action="store_true", help="include superseded runs of each stage")
    e.set_defaults(func=cmd_explain)

    st = sub.add_parser("status", help="every asset: last materialization and whether it is fresh, stale or missing")
    st.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    st.add_argument("--dagster-home", help="the Dagster instance (default: $DAGSTER_HOME or TADS_HOME/dagster)")
    st.set_defaults(func=cmd_status)

    x = sub.add_parser("export", help="write a selection as WebDataset shards or an open_clip CSV to train on")
    x.add_argument("--method", default="tads", help="tads (final_subset) or a baseline_subsets partition")
    x.add_argument("--format", choices=["webdataset", "csv"], default="webdataset")
    x.add_argument("--out", help="output folder (replaced; default TADS_HOME/exports/METHOD-FORMAT)")
    x.add_argument("--shard-size", type=int, default=10_000, help="samples per WebDataset shard")
    x.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="materialize the graph in this process: the selection, every baseline, a CLIP "
                       "per method and the benchmark (jobs tads_selection, tads_baselines, tads_methods)")
    r.add_argument("--jobs", nargs="*", help="jobs to run, in order (default: the three above)")
    r.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    r.add_argument("--dagster-home", help="the Dagster instance (default: $DAGSTER_HOME or TADS_HOME/dagster)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("ledger", help="counts of ledgered decisions per stage and reason")
    s.add_argument("--home", help="TADS_HOME (default: $TADS_HOME or ./.tads)")
    s.set_defaults(func=cmd_ledger)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the Dagster instance's schema checks (tads status)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
