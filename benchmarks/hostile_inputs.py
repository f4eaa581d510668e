"""Hostile inputs through the real pipeline: every case of the hostile corpus (tads_assets.core.demo.hostile) must end
kept (decoded the right way), ledgered (a row naming the sample and the reason) or as a clear error (the run
stops, naming the input and the fix). Prints, per case, the outcome against the promised one with the peak RSS
and wall time of the run that judged it, then the totals: crashes, silent drops, reads outside the pool, hangs,
outcomes other than promised, the largest peak RSS and the ledger completeness of every stage run (must be 100 %).

    .venv/bin/python benchmarks/hostile_inputs.py [--work DIR] [--timeout S] [--only GROUP ...]

Each group of cases runs in a fresh Python process (so its peak RSS is its own, read from the kernel by wait4,
and a hang is a timeout, not a stuck benchmark) as Dagster materializations (in-process) with the real
resources: raw_pool on each source of the corpus (WebDataset, img2dataset, CSV; the round-2 sources one process
each), task_set on each task file, clip_encoder with an open_clip checkpoint that carries a pickled payload,
clip_encoder, pool_embeddings and deduped_pool with vectors damaged after embedding, and `tads explain` on
samples whose paths hold terminal escapes. A Python audit hook in each process counts every open of a file that a
hostile input points at outside the pool's folder (the img2dataset symlink targets, the CSV's outside image).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tads_assets  # noqa: E402,F401  (before open_clip: torchvision shim)
from tads_assets.local import materialize  # noqa: E402

from resources import ClipEncoder, TadsPaths, TorchDevice, tads_resources  # noqa: E402
from tads_assets import cli  # noqa: E402
from tads_assets.characterize import task_set  # noqa: E402
from tads_assets.checks import (deduped_pool_ledger_complete, raw_pool_ledger_complete,  # noqa: E402
                                raw_pool_sources_fully_read)
from tads_assets.core.demo import hostile  # noqa: E402
from tads_assets.core.demo.hostile import Case  # noqa: E402
from tads_assets.core.harness.clip_train import create_model  # noqa: E402
from tads_assets.core.io import embeddings  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.io.ledger import Ledger  # noqa: E402
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool  # noqa: E402


QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the table is the output, not the event log


def run(assets, res, selection=None, run_config=None):
    """One in-process materialization that reports failure instead of raising."""
    return materialize(assets, selection=selection, resources=res, run_config={**QUIET, **(run_config or {})},
                       raise_on_error=False)


def resources(home: Path, pool: str, tasks: str = "", encoder: str = "builtin") -> dict:
    """Every resource of the code location (the IO manager included) on `home`, the defaults otherwise, on CPU."""
    return tads_resources(TadsPaths(home=str(home), pool=pool, tasks=tasks), encoder=ClipEncoder(spec=encoder),
                          device=TorchDevice(device="cpu"))


def failure(result) -> str | None:
    """The user-facing message of a failed run (the error the asset raised), or None when it succeeded."""
    if result.success:
        return None
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            err = event.event_specific_data.error
            while err.cls_name and err.cls_name.startswith("Dagster") and err.cause is not None:
                err = err.cause  # Dagster's wrapper -> the exception the asset raised
            messages.append(err.message.strip())
    return " | ".join(messages) or "run failed without a step error"


class Outcomes:
    def __init__(self):
        self.rows: list[dict] = []
        self.completeness: list[dict] = []

    def add(self, case: Case, outcome: str, detail: str, ok: bool) -> None:
        self.rows.append({"input kind": case.kind, "source": case.source, "expected": case.expect, "outcome": outcome,
                          "detail": " ".join(detail.split())[:90], "ok": ok})

    def judge_samples(self, cases: list[Case], kept: set[str], drops: pl.DataFrame, stage: str) -> None:
        by_uid = {}
        for row in drops.iter_rows(named=True):
            by_uid.setdefault(row["uid"], []).append(row)
        for case in cases:
            rows = by_uid.get(case.uid, [])
            if case.uid in kept and not rows:
                self.add(case, "kept", f"in {stage}", case.expect == "kept")
            elif rows:
                reasons = sorted({r["reason"] for r in rows})
                self.add(case, f"ledgered:{','.join(reasons)}", rows[0]["detail"] or "",
                         case.expect.startswith("ledgered:") and case.expect.removeprefix("ledgered:") in reasons)
            else:
                self.add(case, "SILENT DROP", f"neither in {stage} nor in its ledger", False)

    def judge_error(self, case: Case, message: str | None, names: str) -> None:
        pattern = case.expect.removeprefix("error:")
        if message is None:
            self.add(case, "NO ERROR", "the run went on with a bad input", False)
        elif re.search(pattern, message, re.S) and names in message:
            self.add(case, "clear error", message, True)
        else:
            self.add(case, "CRASH", message, False)

    def account(self, stage: str, n_in: int, kept: int, dropped: int) -> None:
        self.completeness.append({"stage run": stage, "in": n_in, "kept": kept, "ledgered": dropped,
                                  "accounted": f"{100.0 * (kept + dropped) / max(n_in, 1):.1f} %"})


def run_pool_source(out: Outcomes, work: Path, name: str, spec: str, cases: list[Case], tasks: str) -> Path:
    home = work / f"home-{name}"
    res = resources(home, spec, tasks)
    result = run([raw_pool, raw_pool_ledger_complete, raw_pool_sources_fully_read], res)
    if not result.success:
        for case in cases:
            out.add(case, "CRASH", failure(result) or "", False)
        return home
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "raw_pool_sources_fully_read")
    out.add(Case(f"source fully read ({name})", cases[0].source, None, "kept"), "kept" if check.passed else "CRASH",
            f"{check.metadata['unreadable_ranges'].value} unreadable range(s), all ledgered" if check.passed
            else check.description or "", check.passed)
    cat = Catalog(home)
    manifest = cat.raw_pool.manifest()
    kept = set(cat.raw_pool.scan().select("uid").collect()["uid"].to_list())
    drops = Ledger(cat.ledger_dir).read("raw_pool")
    out.judge_samples(cases, kept, drops, "raw_pool")
    out.account(f"raw_pool ({name})", manifest["n_seen"], len(kept), drops.height)
    return home


def embed_hostile_pool(out: Outcomes, home: Path, spec: str, cases: list[Case]) -> None:
    """clip_encoder + pool_embeddings on the ingested hostile WebDataset pool: every odd image that raw_pool kept
    must embed to finite vectors ("kept" means usable)."""
    res = resources(home, spec)
    result = run([raw_pool, clip_encoder, pool_embeddings], res, [clip_encoder.key, pool_embeddings.key])
    odd = [c for c in cases if c.expect == "kept" and c.kind in hostile.odd_images()]
    if not result.success:
        for case in odd:
            out.add(Case(f"{case.kind} (embedded)", "embeddings", case.uid, "kept"), "CRASH", failure(result) or "", False)
        return
    frame = res["paths"].catalog.pool_embeddings.read(uids=[c.uid for c in odd])
    finite = dict(zip(frame["uid"], np.isfinite(np.hstack(embeddings.arrays(frame, "image_vec", "text_vec"))).all(1)))
    for case in odd:
        ok = bool(finite.get(case.uid, False))
        out.add(Case(f"{case.kind} (embedded)", "embeddings", case.uid, "kept"), "kept" if ok else "CRASH",
                "finite embedding" if ok else "kept by raw_pool but no finite embedding", ok)


def _first_part(home: Path) -> str:
    return Catalog(home).raw_pool.parts()[0].stem


def inf_vectors(out: Outcomes, home: Path, spec: str) -> None:
    """inf in LanceDB (LanceDB itself refuses to store NaN) after embedding: deduped_pool ledgers the samples."""
    res = resources(home, spec)
    db = res["paths"].catalog.pool_embeddings.connect()
    uids = hostile.damage_embeddings(db, _first_part(home))  # inf in uids[0] and uids[1]
    vec_cases = [Case("inf_image_vector_after_embedding", "embeddings", uids[0],
                      f"ledgered:{embeddings.NON_FINITE_EMBEDDING}"),
                 Case("inf_text_vector_after_embedding", "embeddings", uids[1],
                      f"ledgered:{embeddings.NON_FINITE_EMBEDDING}")]
    result = run([raw_pool, clip_encoder, pool_embeddings, deduped_pool, deduped_pool_ledger_complete], res,
                 [deduped_pool.key])
    if not result.success:
        for case in vec_cases:
            out.add(case, "CRASH", failure(result) or "", False)
        return
    cat = Catalog(home)
    kept = set(cat.deduped_pool.uids())
    drops = Ledger(cat.ledger_dir).read("deduped_pool")
    out.judge_samples(vec_cases, kept, drops, "deduped_pool")
    n_raw = cat.raw_pool.height()
    out.account("deduped_pool (hostile WebDataset pool)", n_raw, len(kept), drops.height)


RECOMPUTE = {"ops": {"pool_embeddings": {"config": {"recompute": True}}}}


def nan_frozen_features(out: Outcomes, home: Path, spec: str) -> None:
    """NaN in the frozen-feature cache: pool_embeddings stops before writing, naming the sample and the fix."""
    res = resources(home, spec)
    cat = res["paths"].catalog
    part = _first_part(home)
    uids = cat.pool_embeddings.read(("uid",), part=part)["uid"].to_list()
    hostile.damage_frozen_features(cat.frozen_features.dir / f"{part}.parquet", 2)
    result = run([raw_pool, clip_encoder, pool_embeddings], res, [pool_embeddings.key], RECOMPUTE)
    case = Case("nan_frozen_features_after_embedding", "embeddings", None, "error:NaN/inf vectors.*materialize clip_encoder")
    out.judge_error(case, failure(result), uids[2])


def nan_frozen_features_fix(out: Outcomes, home: Path, spec: str) -> None:
    """... and the fix the message names (clip_encoder recomputes the damaged part) works."""
    healed = run([raw_pool, clip_encoder, pool_embeddings], resources(home, spec), [clip_encoder.key, pool_embeddings.key],
                 RECOMPUTE)
    out.add(Case("nan_frozen_features_fix", "embeddings", None, "kept"), "kept" if healed.success else "CRASH",
            "clip_encoder recomputed the damaged part" if healed.success else failure(healed) or "", healed.success)


def pickle_checkpoint(out: Outcomes, work: Path, spec: str) -> None:
    import torch

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {work / 'code-ran'}",))

    model, _, _ = create_model("TADS-Tiny-ViT")
    path = work / "evil-checkpoint.pt"
    torch.save({"state_dict": model.state_dict(), "payload": RunsCode()}, path)
    home = work / "home-wds"  # the ingested hostile pool
    result = run([raw_pool, clip_encoder], resources(home, spec, encoder=f"open_clip:TADS-Tiny-ViT:{path}"),
                 [clip_encoder.key])
    case = Case("pickle_bearing_checkpoint", "checkpoint", None, "error:pickled Python objects.*refuses.*safetensors")
    out.judge_error(case, failure(result), str(path))
    if (work / "code-ran").exists():
        out.add(case, "CRASH", "the checkpoint's payload RAN", False)


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(widths[c]) for c in cols), " | ".join("-" * widths[c] for c in cols)]
    lines += [" | ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def judge_task_file(out: Outcomes, case: Case, result, name: str) -> None:
    if case.expect.startswith("error:"):
        out.judge_error(case, failure(result), name)
    elif result.success:
        out.add(case, "kept", "task_set materialized", True)
    else:
        out.add(case, "CRASH", failure(result) or "", False)


def explain_escapes(out: Outcomes, work: Path) -> None:
    """`tads explain` on a sample whose CSV path holds terminal escapes, and on a uid argument holding one."""
    import contextlib
    import io

    home = work / "home-csv-round2"
    case = Case("tads_explain_terminal_escapes", "cli", None, "kept")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.main(["explain", "pool-000000005", "--home", str(home)])
        cli.main(["explain", "x\x1b]0;owned\x07", "--home", str(home)])
    text = buf.getvalue()
    ok = "\x1b" not in text and "\\x1b" in text
    out.add(case, "kept" if ok else "CRASH", "escapes printed as \\x1b" if ok else "raw ESC bytes printed", ok)


# --------------------------------------------------------------------------------------------- the groups

def pool_groups() -> dict[str, object]:
    builders = {"wds": hostile.build_webdataset, "i2d": hostile.build_img2dataset, "csv": hostile.build_csv,
                **hostile.ROUND2_SOURCES}
    return builders


def source_error_groups() -> dict[str, object]:
    return {"csv-bad": lambda root: hostile.build_csv_missing_columns(root), **hostile.ROUND2_SOURCE_ERRORS}


def group_names(work: Path) -> list[str]:
    n_tasks = len(hostile.task_file_cases(work / "tasks-probe"))
    shutil.rmtree(work / "tasks-probe", ignore_errors=True)
    return [*pool_groups(), *source_error_groups(), *(f"task-{i:02d}" for i in range(n_tasks)), "pickle", "explain",
            *VECTOR_GROUPS]


VECTOR_GROUPS = {"embed": None, "inf-vectors": inf_vectors, "nan-frozen": nan_frozen_features,
                 "nan-frozen-fix": nan_frozen_features_fix}  # in this order, on the ingested hostile WebDataset pool


def run_group(group: str, work: Path) -> Outcomes:
    """One group's cases, in this process."""
    out = Outcomes()
    corpus = work / "corpus"
    wds_spec = f"webdataset:{corpus / 'wds'}/{{00000..00002}}.tar"
    if group in pool_groups():
        spec, cases = pool_groups()[group](corpus / group)
        run_pool_source(out, work, group, spec, cases, "")
    elif group in source_error_groups():
        spec, case = source_error_groups()[group](corpus / group)
        result = run([raw_pool], resources(work / f"home-{group}", spec))
        out.judge_error(case, failure(result), _names(spec))
    elif group.startswith("task-"):
        root = work / "tasks"
        case, text = hostile.task_file_cases(root)[int(group.removeprefix("task-"))]
        path = root / f"{case.kind}.yaml"
        if text is not None:
            path.write_text(text)
        result = run([task_set], resources(work / f"home-{group}", wds_spec, str(path)))
        judge_task_file(out, case, result, path.name)
    elif group == "pickle":
        hostile.build_webdataset(corpus / "wds")
        pickle_checkpoint(out, work, wds_spec)
    elif group == "explain":
        explain_escapes(out, work)
    elif group == "embed":
        embed_hostile_pool(out, work / "home-wds", wds_spec, hostile.build_webdataset(corpus / "wds")[1])
    elif group in VECTOR_GROUPS:
        VECTOR_GROUPS[group](out, work / "home-wds", wds_spec)
    else:
        raise SystemExit(f"unknown group {group!r}")
    return out


def _names(spec: str) -> str:
    """What a source error must name: the file (or pattern) of the source."""
    location = spec.partition(":")[2]
    return Path(location).name if "{" not in location else location.rpartition("/")[0]


OUTSIDE_TARGETS = ("/etc/passwd", "/etc/shadow")  # plus every "*-secret*" / "*-outside*" file beside the corpus


def child_main(group: str, work: Path) -> int:
    """Run one group and write its outcomes as JSON; count opens of files hostile inputs point at outside the pool."""
    opened: list[str] = []

    def audit(event, args):  # opens for reading (the corpus builders write these files; that is no read)
        if (event == "open" and len(args) == 3 and isinstance(args[0], str | bytes | os.PathLike)
                and args[2] & os.O_ACCMODE == os.O_RDONLY):
            path = os.fsdecode(args[0])
            name = Path(path).name
            if path in OUTSIDE_TARGETS or "-secret" in name or "-outside" in name:
                opened.append(path)

    sys.addaudithook(audit)
    t0 = time.perf_counter()
    out = run_group(group, work)
    result = {"rows": out.rows, "completeness": out.completeness, "outside_reads": sorted(set(opened)),
              "seconds": time.perf_counter() - t0}
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / f"{group}.json").write_text(json.dumps(result, default=str))
    return 0


def spawn(group: str, work: Path, timeout: float) -> dict:
    """Run a group in a fresh process; its peak RSS from wait4, a timeout is a hang."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", group, "--work", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import threading

    log_lines: list[bytes] = []
    reader = threading.Thread(target=lambda: log_lines.extend(proc.stdout), daemon=True)
    reader.start()
    hung = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            hung = True
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    info = {"group": group, "wall_s": time.perf_counter() - t0, "rss_mib": usage.ru_maxrss / 1024, "hung": hung,
            "exit": proc.returncode, "log": b"".join(log_lines)[-2000:].decode("utf-8", "replace")}
    result_file = work / "results" / f"{group}.json"
    info["result"] = json.loads(result_file.read_text()) if result_file.exists() and not hung else None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the corpus and the homes (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds after which a group counts as hung")
    ap.add_argument("--only", nargs="*", help="run only these groups (names as printed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("dagster").setLevel(logging.ERROR)
    work = Path(args.work or tempfile.mkdtemp(prefix="tads-hostile-")).resolve()
    if args.child:
        return child_main(args.child, work)
    t0 = time.perf_counter()
    shutil.rmtree(work / "results", ignore_errors=True)
    groups = group_names(work)
    if args.only:
        groups = [g for g in groups if g in args.only]
    print(f"hostile corpus under {work}: {len(groups)} groups, each in its own process", flush=True)
    rows, completeness, outside, hangs, failed = [], [], [], [], []
    for group in groups:
        info = spawn(group, work, args.timeout)
        res = info["result"]
        print(f"  {group:<18} {info['wall_s']:6.1f} s  peak RSS {info['rss_mib']:6.0f} MiB"
              + ("  HUNG" if info["hung"] else "" if res else f"  FAILED (exit {info['exit']})"), flush=True)
        if res is None:
            (hangs if info["hung"] else failed).append(group)
            rows.append({"input kind": group, "source": "group", "expected": "-", "outcome": "HANG" if info["hung"]
                         else "CRASH", "detail": " ".join(info["log"].split())[-90:], "ok": False,
                         "peak RSS MiB": round(info["rss_mib"]), "wall s": round(info["wall_s"], 1)})
            continue
        for row in res["rows"]:
            rows.append({**row, "peak RSS MiB": round(info["rss_mib"]), "wall s": round(info["wall_s"], 1)})
        completeness.extend(res["completeness"])
        outside.extend(res["outside_reads"])

    print()
    print(markdown(rows))
    print()
    if completeness:
        print(markdown(completeness))
        print()
    crashes = sum(r["outcome"] in ("CRASH", "NO ERROR") for r in rows)
    silent = sum(r["outcome"] == "SILENT DROP" for r in rows)
    wrong = sum(not r["ok"] for r in rows)
    n_acc = sum(c["kept"] + c["ledgered"] for c in completeness)
    n_in = sum(c["in"] for c in completeness)
    max_rss = max((r["peak RSS MiB"] for r in rows), default=0)
    kinds = pl.DataFrame(rows).group_by("outcome").len().sort("outcome")
    print(f"cases: {len(rows)} ({', '.join(f'{o}: {n}' for o, n in kinds.iter_rows())}); "
          f"distinct input kinds: {len({r['input kind'] for r in rows})}")
    print(f"crashes: {crashes}   silent drops: {silent}   reads outside the pool: {len(outside)}   hangs: {len(hangs)}"
          f"   outcome other than promised: {wrong}")
    print(f"peak RSS: max {max_rss} MiB over the groups (limit 1024); "
          f"cases over 1 GiB: {sum(r['peak RSS MiB'] > 1024 for r in rows)}")
    print(f"ledger completeness: {100.0 * n_acc / max(n_in, 1):.1f} % ({n_acc} of {n_in} samples into the stages above "
          "kept or ledgered)")
    if outside:
        print("opened outside the pool:", ", ".join(sorted(set(outside))))
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = crashes or silent or wrong or outside or hangs or failed or n_acc != n_in or max_rss > 1024
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
