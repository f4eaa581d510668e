"""Hostile inputs through the real pipeline: every case of the hostile corpus (tads_assets.core.hostile) must end
kept (decoded the right way), ledgered (a row naming the sample and the reason) or as a clear error (the run
stops, naming the input and the fix). Prints input kind x outcome, the number of crashes and silent drops, and
the ledger completeness of every stage run (must be 100 %).

    .venv/bin/python benchmarks/hostile_inputs.py [--work DIR]

Stages run as Dagster materializations (in-process) with the real resources: raw_pool on a WebDataset, an
img2dataset and a CSV source; clip_encoder, pool_embeddings and deduped_pool on the WebDataset pool with vectors
damaged after embedding (inf in LanceDB, NaN in the frozen-feature cache); task_set on a task file with each field
wrong in turn; clip_encoder with an open_clip checkpoint that carries a pickled payload.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tads_assets  # noqa: E402,F401  (before open_clip: torchvision shim)
from dagster import materialize  # noqa: E402

from resources import ClipEncoder, LanceStore, LangId, Ocr, TadsPaths, TorchDevice  # noqa: E402
from tads_assets.checks import deduped_pool_ledger_complete, raw_pool_ledger_complete  # noqa: E402
from tads_assets.characterize import task_set  # noqa: E402
from tads_assets.core import embeddings, hostile, ingest  # noqa: E402
from tads_assets.core.hostile import Case  # noqa: E402
from tads_assets.core.ledger import Ledger  # noqa: E402
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool  # noqa: E402


QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the table is the output, not the event log


def run(assets, res, selection=None, run_config=None):
    """One in-process materialization that reports failure instead of raising."""
    return materialize(assets, selection=selection, resources=res, run_config={**QUIET, **(run_config or {})},
                       raise_on_error=False)


def resources(home: Path, pool: str, tasks: str = "", encoder: str = "builtin") -> dict:
    return {"paths": TadsPaths(home=str(home), pool=pool, tasks=tasks), "lance": LanceStore(uri=str(home / "lance")),
            "encoder": ClipEncoder(spec=encoder), "device": TorchDevice(device="cpu"), "ocr": Ocr(), "langid": LangId()}


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
    result = run([raw_pool, raw_pool_ledger_complete], res)
    if not result.success:
        for case in cases:
            out.add(case, "CRASH", failure(result) or "", False)
        return home
    manifest = ingest.read_manifest(home / "parquet" / "raw_pool")
    kept = set(ingest.scan_raw_pool(home / "parquet" / "raw_pool").select("uid").collect()["uid"].to_list())
    drops = Ledger(home / "ledger").read("raw_pool")
    out.judge_samples(cases, kept, drops, "raw_pool")
    out.account(f"raw_pool ({name})", manifest["n_seen"], len(kept), drops.height)
    return home


def damaged_vectors(out: Outcomes, home: Path, spec: str, tasks: str, cases: list[Case]) -> None:
    """clip_encoder + pool_embeddings on the WebDataset pool (the odd images must embed to finite vectors), then
    vectors damaged after embedding: inf in LanceDB (LanceDB itself refuses to store NaN) and NaN in the
    frozen-feature cache."""
    res = resources(home, spec, tasks)
    t0 = time.perf_counter()
    result = run([raw_pool, clip_encoder, pool_embeddings], res, [clip_encoder.key, pool_embeddings.key])
    if not result.success:
        raise SystemExit(f"clip_encoder/pool_embeddings failed on the hostile pool: {failure(result)}")
    print(f"  clip_encoder + pool_embeddings on the hostile WebDataset pool: {time.perf_counter() - t0:.0f} s",
          flush=True)
    db = res["lance"].connect()
    odd = [c for c in cases if c.expect == "kept"]
    frame = embeddings.read_embeddings(db, uids=[c.uid for c in odd])
    finite = dict(zip(frame["uid"], np.isfinite(np.hstack(embeddings.arrays(frame, "image_vec", "text_vec"))).all(1)))
    for row in out.rows:  # "kept" means usable: the sample got finite vectors too
        case = next((c for c in odd if c.kind == row["input kind"] and row["outcome"] == "kept"), None)
        if case is not None and finite.get(case.uid, False):
            row["detail"] += ", finite embedding"
        elif case is not None:
            row.update(outcome="CRASH", detail="kept by raw_pool but no finite embedding", ok=False)

    part = sorted(p.stem for p in (home / "parquet" / "raw_pool").glob("part-*.parquet"))[0]
    uids = hostile.damage_embeddings(db, part)  # inf in uids[0]'s image vector, -inf in uids[1]'s text vector
    vec_cases = [Case("inf_image_vector_after_embedding", "embeddings", uids[0],
                      f"ledgered:{embeddings.NON_FINITE_EMBEDDING}"),
                 Case("inf_text_vector_after_embedding", "embeddings", uids[1],
                      f"ledgered:{embeddings.NON_FINITE_EMBEDDING}")]
    result = run([raw_pool, pool_embeddings, deduped_pool, deduped_pool_ledger_complete], res, [deduped_pool.key])
    if not result.success:
        for case in vec_cases:
            out.add(case, "CRASH", failure(result) or "", False)
    else:
        kept = set(pl.read_parquet(home / "parquet" / "deduped_pool" / "deduped_pool.parquet")["uid"].to_list())
        drops = Ledger(home / "ledger").read("deduped_pool")
        out.judge_samples(vec_cases, kept, drops, "deduped_pool")
        n_raw = ingest.scan_raw_pool(home / "parquet" / "raw_pool").select(pl.len()).collect().item()
        out.account("deduped_pool (hostile WebDataset pool)", n_raw, len(kept), drops.height)

    hostile.damage_frozen_features(res["paths"].frozen_cache_dir / f"{part}.parquet", 2)
    recompute = {"ops": {"pool_embeddings": {"config": {"recompute": True}}}}
    result = run([raw_pool, clip_encoder, pool_embeddings], res, [pool_embeddings.key], recompute)
    case = Case("nan_frozen_features_after_embedding", "embeddings", None, "error:NaN/inf vectors.*materialize clip_encoder")
    out.judge_error(case, failure(result), uids[2])
    healed = run([raw_pool, clip_encoder, pool_embeddings], res, [clip_encoder.key, pool_embeddings.key], recompute)
    if not healed.success:
        out.add(Case("nan_frozen_features_fix", "embeddings", None, "kept"), "CRASH", failure(healed) or "", False)


def task_files(out: Outcomes, work: Path, spec: str) -> None:
    root = work / "tasks"
    for case, text in hostile.task_file_cases(root):
        path = root / f"{case.kind}.yaml"
        path.write_text(text)
        result = run([task_set], resources(work / "home-tasks", spec, str(path)))
        out.judge_error(case, failure(result), f"{case.kind}.yaml")


def pickle_checkpoint(out: Outcomes, work: Path, spec: str) -> None:
    import torch

    from tads_assets.core.clip_train import create_model

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the corpus and the homes (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("dagster").setLevel(logging.ERROR)
    work = Path(args.work or tempfile.mkdtemp(prefix="tads-hostile-")).resolve()
    t0 = time.perf_counter()
    out = Outcomes()
    wds_spec, wds_cases = hostile.build_webdataset(work / "corpus" / "wds")

    print(f"hostile corpus under {work}", flush=True)
    home = run_pool_source(out, work, "wds", wds_spec, wds_cases, "")
    for name, build in (("i2d", hostile.build_img2dataset), ("csv", hostile.build_csv)):
        spec, cases = build(work / "corpus" / name)
        run_pool_source(out, work, name, spec, cases, "")
    spec, case = hostile.build_csv_missing_columns(work / "corpus" / "csv-bad")
    result = run([raw_pool], resources(work / "home-csv-bad", spec))
    out.judge_error(case, failure(result), "bad.csv")
    task_files(out, work, wds_spec)
    pickle_checkpoint(out, work, wds_spec)
    damaged_vectors(out, home, wds_spec, "", wds_cases)

    print()
    print(markdown(out.rows))
    print()
    print(markdown(out.completeness))
    crashes = sum(r["outcome"] in ("CRASH", "NO ERROR") for r in out.rows)
    silent = sum(r["outcome"] == "SILENT DROP" for r in out.rows)
    wrong = sum(not r["ok"] for r in out.rows)
    kinds = pl.DataFrame(out.rows).group_by("outcome").len().sort("outcome")
    n_acc = sum(c["kept"] + c["ledgered"] for c in out.completeness)
    n_in = sum(c["in"] for c in out.completeness)
    print()
    print(f"cases: {len(out.rows)} ({', '.join(f'{o}: {n}' for o, n in kinds.iter_rows())}); "
          f"distinct input kinds: {len({r['input kind'] for r in out.rows})}")
    print(f"crashes: {crashes}   silent drops: {silent}   outcome other than promised: {wrong}")
    print(f"ledger completeness: {100.0 * n_acc / max(n_in, 1):.1f} % ({n_acc} of {n_in} samples into the stages above "
          "kept or ledgered)")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if crashes or silent or wrong or n_acc != n_in else 0


if __name__ == "__main__":
    sys.exit(main())
