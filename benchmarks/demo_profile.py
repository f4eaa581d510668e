"""Where `make demo`'s wall time goes: per stage, compute against orchestration overhead.

    .venv/bin/python benchmarks/demo_profile.py run [--json after.json] [-- make demo]   # time a fresh demo, then analyse
    .venv/bin/python benchmarks/demo_profile.py report [--dagster-home DIR] [--wall SECONDS] [--json out.json]
    .venv/bin/python benchmarks/demo_profile.py compare before.json after.json

`run` empties TADS_HOME (default .tads; its Dagster instance is TADS_HOME/dagster as in the Makefile), runs the
command (default `make demo`) and times it from outside. The analysis reads the instance's event log, so it
needs nothing from TADS beyond what Dagster records:

- compute: each step's STEP_START → STEP_SUCCESS/FAILURE (the asset's body, its IO manager and its checks);
- in-run overhead: a run's RUN_START → RUN_SUCCESS/FAILURE minus its steps (step subprocesses starting and
  loading the code location, executor bookkeeping, event writes);
- outside runs: the whole command's wall minus its runs' walls (each `dagster` CLI process importing the code
  location and setting up the instance, setup checks, `tads ledger`, printing).

Stages are asset names (a partitioned step is summed over its partitions, with the partition count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path



def analyse(dagster_home: Path, since: float | None = None) -> dict:
    """Runs (started after `since`, a Unix time) and their steps from the instance at `dagster_home`."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterEventType as E
    from dagster import DagsterInstance

    step_start, step_end = E.STEP_START.value, (E.STEP_SUCCESS.value, E.STEP_FAILURE.value)
    run_start, run_end = E.RUN_START.value, (E.RUN_SUCCESS.value, E.RUN_FAILURE.value, E.RUN_CANCELED.value)

    instance = DagsterInstance.get()
    runs = []
    for record in instance.get_run_records():
        run = record.dagster_run
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
        marks = {e.dagster_event.event_type_value: e.timestamp for e in events}
        start = marks.get(run_start)
        end = next((marks[k] for k in run_end if k in marks), None)
        if start is None or end is None or (since is not None and start < since):
            continue
        steps, open_steps = [], {}
        for e in events:
            kind = e.dagster_event.event_type_value
            if kind == step_start:
                open_steps[e.step_key] = e.timestamp
            elif kind in step_end and e.step_key in open_steps:
                steps.append({"step": e.step_key, "seconds": e.timestamp - open_steps.pop(e.step_key),
                              "ok": kind == step_end[0]})
        partition = run.tags.get("dagster/partition") or (
            f"{run.tags['dagster/asset_partition_range_start']}..{run.tags['dagster/asset_partition_range_end']}"
            if "dagster/asset_partition_range_start" in run.tags else None)
        runs.append({"run_id": run.run_id, "job": run.job_name, "partition": partition, "start": start, "end": end,
                     "wall": end - start, "steps": steps, "ok": run_end[0] in marks})
    runs.sort(key=lambda r: r["start"])
    return {"runs": runs}


def summarise(profile: dict, wall: float | None) -> dict:
    runs = profile["runs"]
    stages: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "steps": 0, "partitions": set()})
    for r in runs:
        for s in r["steps"]:
            st = stages[s["step"]]
            st["seconds"] += s["seconds"]
            st["steps"] += 1
            if r["partition"]:
                st["partitions"].add(r["partition"])
    compute = sum(s["seconds"] for r in runs for s in r["steps"])
    in_runs = sum(r["wall"] for r in runs)
    out = {
        "wall": wall, "runs": len(runs), "steps": sum(len(r["steps"]) for r in runs),
        "compute": compute, "in_run_overhead": in_runs - compute,
        "outside_runs": (wall - in_runs) if wall is not None else None,
        "failed_runs": sum(not r["ok"] for r in runs),
        "stages": {k: {"seconds": v["seconds"], "steps": v["steps"], "partitions": len(v["partitions"])}
                   for k, v in sorted(stages.items(), key=lambda kv: -kv[1]["seconds"])},
        "per_run": [{"job": r["job"], "partition": r["partition"], "wall": r["wall"],
                     "compute": sum(s["seconds"] for s in r["steps"]), "steps": len(r["steps"])} for r in runs],
    }
    return out


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{int(seconds // 60)} min {seconds % 60:4.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def print_summary(s: dict) -> None:
    print(f"\n{s['runs']} Dagster runs, {s['steps']} steps" + (f", {s['failed_runs']} FAILED" if s["failed_runs"] else ""))
    print("\n| stage | steps | compute |\n|---|---:|---:|")
    for name, st in s["stages"].items():
        parts = f" ({st['partitions']} partitions)" if st["partitions"] > 1 else ""
        print(f"| {name}{parts} | {st['steps']} | {fmt(st['seconds'])} |")
    print("\n| run | steps | wall | compute | overhead |\n|---|---:|---:|---:|---:|")
    for r in s["per_run"]:
        name = r["job"] + (f" [{r['partition']}]" if r["partition"] else "")
        print(f"| {name} | {r['steps']} | {fmt(r['wall'])} | {fmt(r['compute'])} | {fmt(r['wall'] - r['compute'])} |")
    print("\n| split | wall | share |\n|---|---:|---:|")
    total = s["wall"] or (s["compute"] + s["in_run_overhead"])
    rows = [("compute (steps)", s["compute"]), ("orchestration inside runs", s["in_run_overhead"]),
            ("outside runs (CLI start-up, setup, ledger)", s["outside_runs"])]
    for label, v in rows:
        print(f"| {label} | {fmt(v)} | {'—' if v is None else f'{v / total:.0%}'} |")
    print(f"| **whole command** | **{fmt(s['wall'])}** | |")


def compare(a: dict, b: dict) -> None:
    print("| | before | after | ratio |\n|---|---:|---:|---:|")
    for key, label in (("wall", "whole command"), ("compute", "compute"), ("in_run_overhead", "orchestration inside runs"),
                       ("outside_runs", "outside runs")):
        x, y = a.get(key), b.get(key)
        ratio = f"{x / y:.1f}×" if x and y else "—"
        print(f"| {label} | {fmt(x)} | {fmt(y)} | {ratio} |")
    print(f"| Dagster runs | {a['runs']} | {b['runs']} | |")
    names = list(dict.fromkeys([*a["stages"], *b["stages"]]))
    print("\n| stage | before | after | ratio |\n|---|---:|---:|---:|")
    for n in names:
        x, y = a["stages"].get(n, {}).get("seconds"), b["stages"].get(n, {}).get("seconds")
        ratio = f"{x / y:.1f}×" if x and y else "—"
        print(f"| {n} | {fmt(x)} | {fmt(y)} | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="empty TADS_HOME, run the command timed, analyse")
    r.add_argument("--home", default=os.environ.get("TADS_HOME", ".tads"))
    r.add_argument("--json", default=None, help="write the summary here")
    r.add_argument("--keep", action="store_true", help="keep TADS_HOME as it is (default: empty it first)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command (default: make demo)")
    a = sub.add_parser("report", help="analyse an instance")
    a.add_argument("--dagster-home", default=os.environ.get("DAGSTER_HOME", str(Path(".tads") / "dagster")))
    a.add_argument("--wall", type=float, default=None, help="the whole command's wall seconds, if known")
    a.add_argument("--since", type=float, default=None, help="only runs started after this Unix time")
    a.add_argument("--json", default=None)
    c = sub.add_parser("compare", help="two summaries side by side")
    c.add_argument("before")
    c.add_argument("after")
    args = p.parse_args()

    if args.cmd == "compare":
        compare(json.loads(Path(args.before).read_text()), json.loads(Path(args.after).read_text()))
        return
    if args.cmd == "run":
        home = Path(args.home).resolve()
        if home.exists() and not args.keep:
            shutil.rmtree(home)
        command = [c for c in args.command if c != "--"] or ["make", "demo"]
        env = {**os.environ, "TADS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        t_unix, t0 = time.time(), time.perf_counter()
        rc = subprocess.call(command, env=env)
        wall = time.perf_counter() - t0
        if rc:
            sys.exit(f"{' '.join(command)} failed (exit {rc}) after {fmt(wall)}")
        dagster_home, since = home / "dagster", t_unix
    else:
        dagster_home, wall, since = Path(args.dagster_home).resolve(), args.wall, args.since
    summary = summarise(analyse(dagster_home, since), wall)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
