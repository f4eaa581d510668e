"""Streaming ingestion of a pool source into the `raw_pool` Parquet table, with a ledger row for every
sample that does not make it (docs/outputs.md: raw_pool).

Output layout (`out_dir`): `part-<shard#>-<chunk#>.parquet` files, one or more per source shard, and
`_manifest.json` with the counts. The whole folder is built in a staging folder and swapped in at the
end, so readers never see a half-written raw_pool. The staging folder also keeps a marker per finished
source shard, so a run killed mid-ingestion resumes at the first unfinished shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tads_assets.core.io import formats
from tads_assets.core.io.ledger import DROP, Ledger, new_run_id
from tads_assets.core.io.storage import replace_dir
from tads_assets.core.atomic import write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

STAGE = "raw_pool"
MANIFEST = "_manifest.json"

RAW_POOL_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Utf8,
    "url": pl.Utf8,
    "caption": pl.Utf8,
    "image_ref": pl.Utf8,
    "width": pl.Int32,
    "height": pl.Int32,
    "sha256": pl.Utf8,
    "bytes": pl.Binary,  # the encoded image itself
    "format": pl.Utf8,
    "shard": pl.Utf8,
    "tiny": pl.Binary,  # 16 x 16 RGB tiny-image thumbnail (formats.tiny_image), for near-duplicate search
}


@dataclass
class ShardStats:
    shard: str
    n_seen: int = 0
    n_kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    coverage: dict = field(default_factory=dict)  # what the source held (formats.read_shard's coverage)


@dataclass
class IngestResult:
    run_id: str
    source: str
    out_dir: Path
    n_seen: int
    n_kept: int
    n_dropped: int
    reasons: dict[str, int]
    shards: list[ShardStats]
    seconds: float
    examples: list[dict]  # a few dropped samples, for metadata
    shards_resumed: int = 0  # shards an interrupted run had finished, reused as they were

    @property
    def samples_per_s(self) -> float:
        return self.n_seen / self.seconds if self.seconds > 0 else float("nan")

    def manifest(self) -> dict:
        return {
            "stage": STAGE,
            "run_id": self.run_id,
            "source": self.source,
            "n_seen": self.n_seen,
            "n_kept": self.n_kept,
            "n_dropped": self.n_dropped,
            "reasons": self.reasons,
            "shards": {s.shard: {"seen": s.n_seen, "kept": s.n_kept, "dropped": dict(s.reasons), "coverage": s.coverage}
                       for s in self.shards},
            "seconds": round(self.seconds, 3),
            "shards_resumed": self.shards_resumed,
        }


class AllSamplesFailed(RuntimeError):
    """Every sample of the source was rejected: almost certainly a configuration error, not bad data."""


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: materialize {Path(out_dir).name} first")
    return json.loads(path.read_text())


def scan_raw_pool(out_dir: str | Path) -> pl.LazyFrame:
    return pl.scan_parquet(str(Path(out_dir) / "part-*.parquet"), schema=RAW_POOL_SCHEMA)


def source_coverage(manifest: dict, ledgered_uids: set[str]) -> tuple[list[dict], list[str]]:
    """Per shard of a raw_pool manifest: what its source held and how it was accounted for, and every problem: a
    tar whose bytes read plus unreadable ranges fall short of its size, an unreadable range no ledger row names,
    a table with rows that yielded no record, a reader that broke off."""
    rows, problems = [], []
    for name, info in manifest["shards"].items():
        cov = info.get("coverage") or {}
        ranges = cov.get("unreadable", [])
        bad = sum(r["end"] - r["start"] for r in ranges)
        row = {"shard": name, "bytes": cov.get("bytes_total", 0), "read": cov.get("bytes_read", 0),
               "unreadable ranges": len(ranges), "unreadable bytes": bad, "table rows": cov.get("rows_total", "")}
        rows.append(row)
        if not cov:
            problems.append(f"{name}: no coverage recorded (ingested by an older TADS: rematerialize raw_pool)")
            continue
        if cov.get("reader_error"):
            problems.append(f"{name}: the reader broke off: {cov['reader_error']}")
        if "bytes_total" in cov and not cov.get("missing") and cov["bytes_read"] + bad != cov["bytes_total"]:
            problems.append(f"{name}: {cov['bytes_total'] - cov['bytes_read'] - bad} of {cov['bytes_total']} bytes "
                            "neither read nor in a ledgered unreadable range")
        for r in ranges:
            if r["uid"] not in ledgered_uids:
                problems.append(f"{name}: unreadable bytes {r['start']}-{r['end']} have no ledger row ({r['uid']})")
        if "rows_total" in cov and info["seen"] < cov["rows_total"]:
            problems.append(f"{name}: {cov['rows_total']} table rows but only {info['seen']} records")
    return rows, problems


def part_fingerprint(part: str | Path) -> str:
    """Content fingerprint of one raw_pool part (its uids, image hashes and captions, in order). Caches
    derived from a part are valid only while this matches: a re-ingested pool can reuse a part's file name
    and row count with different samples in it."""
    import hashlib

    frame = pl.read_parquet(part, columns=["uid", "sha256", "caption"])
    h = hashlib.sha256()
    for col in ("uid", "sha256", "caption"):
        h.update("\x1f".join(frame[col].fill_null("").to_list()).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()[:24]


RESUME_VERSION = 4  # 4: the 16 x 16 RGB tiny-image thumbnail (3: 12 x 12 RGB, before: 8 x 8 grey)


def shard_signature(shard: formats.Shard) -> dict:
    """What a finished shard's staged output depends on: the files it was read from (size and mtime)."""
    files = [Path(shard.path)]
    if shard.kind == "img2dataset":
        base = Path(shard.path).with_suffix("")
        files += [base.with_suffix(".tar"), base]
    sig = {"kind": shard.kind, "path": shard.path}
    for f in files:
        st = f.stat() if f.exists() else None
        sig[str(f)] = [st.st_size, st.st_mtime_ns] if st else None
    return sig


def _staged_shards(staging: Path, plan: dict, shards: list[formats.Shard],
                   progress: Callable[[str], None]) -> dict[int, dict]:
    """The shards an interrupted ingestion finished, from the staging folder it left behind (their markers,
    drops and parts); everything else in the folder is cleared. A changed source or setting restarts from scratch."""
    plan_file = staging / "_plan.json"
    if staging.exists():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan, plan_file)
    done: dict[int, dict] = {}
    for no, shard in enumerate(shards):
        marker = staging / f"_shard-{no:05d}.json"
        try:
            info = json.loads(marker.read_text()) if marker.exists() else None
        except (OSError, ValueError):
            info = None
        parts = sorted(staging.glob(f"part-{no:05d}-*.parquet"))
        drops_file = staging / f"_shard-{no:05d}-drops.parquet"
        if (info is not None and info.get("signature") == shard_signature(shard) and len(parts) == info["n_parts"]
                and drops_file.exists() == bool(sum(info["reasons"].values()))):
            done[no] = info
            continue
        for f in [*parts, marker, drops_file]:
            f.unlink(missing_ok=True)
    for tmp in staging.glob(".*.tmp-*"):  # an atomic write the interruption cut short
        tmp.unlink(missing_ok=True)
    if done:
        progress(f"raw_pool: resuming an interrupted ingestion: {len(done)}/{len(shards)} shard(s) already "
                 f"ingested in {staging}")
    return done


def ingest_pool(
    shards: Iterable[formats.Shard],
    out_dir: str | Path,
    ledger: Ledger,
    source: str,
    limits: formats.IngestLimits = formats.IngestLimits(),
    rows_per_file: int = 5_000,
    progress: Callable[[str], None] = log.info,
    progress_every_s: float = 5.0,
) -> IngestResult:
    """Read every shard, validate every sample, write kept rows as Parquet and drops to the ledger.

    Each finished shard leaves a marker in the staging folder (after its parts and drops are written), so an
    interrupted ingestion resumes at the first unfinished shard; the output equals an uninterrupted run's."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shards = list(shards)
    plan = {"version": RESUME_VERSION, "source": source, "limits": dataclasses.asdict(limits),
            "rows_per_file": rows_per_file, "shards": [shard_signature(s) for s in shards]}
    finished = _staged_shards(staging, plan, shards, progress)
    run_id = new_run_id()
    t0 = last = time.perf_counter()
    seen_uids: set[str] = set()
    drops: list[dict] = []
    stats: list[ShardStats] = []
    n_seen = n_kept = 0

    for shard_no, shard in enumerate(shards):
        st = ShardStats(shard.name)
        stats.append(st)
        drops_file = staging / f"_shard-{shard_no:05d}-drops.parquet"
        if shard_no in finished:
            info = finished[shard_no]
            st.n_seen, st.n_kept, st.reasons = info["seen"], info["kept"], Counter(info["reasons"])
            st.coverage = info.get("coverage", {})
            n_seen += st.n_seen
            n_kept += st.n_kept
            drops.extend(pl.read_parquet(drops_file).to_dicts() if drops_file.exists() else [])
            for part in sorted(staging.glob(f"part-{shard_no:05d}-*.parquet")):
                seen_uids.update(pl.read_parquet(part, columns=["uid"])["uid"].to_list())
            continue
        buffer: list[dict] = []
        shard_drops: list[dict] = []
        chunk = 0

        def flush() -> None:
            nonlocal buffer, chunk
            if buffer:
                frame = pl.DataFrame(buffer, schema=RAW_POOL_SCHEMA)
                write_parquet_atomic(frame, staging / f"part-{shard_no:05d}-{chunk:03d}.parquet")
                chunk += 1
                buffer = []

        for rec in _records(shard, limits, st.coverage):
            st.n_seen += 1
            n_seen += 1
            try:
                row_or_rejection = _validate(rec, limits, seen_uids)
            except Exception as exc:  # noqa: BLE001 - one sample never stops the run: it becomes its ledger row
                row_or_rejection = formats.Rejection(formats.RECORD_ERROR, f"{type(exc).__name__}: {exc}")
            if isinstance(row_or_rejection, formats.Rejection):
                rej = row_or_rejection
                st.reasons[rej.reason] += 1
                shard_drops.append({"uid": formats.one_line(rec.uid, 1000), "decision": DROP, "reason": rej.reason,
                                    "value": rej.value, "detail": formats.one_line(f"{rej.detail} [{rec.ref}]", 600)})
            else:
                buffer.append(row_or_rejection)
                st.n_kept += 1
                n_kept += 1
                if len(buffer) >= rows_per_file:
                    flush()
            now = time.perf_counter()
            if now - last >= progress_every_s:
                last = now
                progress(f"raw_pool: shard {shard_no + 1}/{len(shards)} ({shard.name}), {n_seen} samples seen, "
                         f"{n_kept} kept, {n_seen / (now - t0):.0f} samples/s")
        flush()
        drops.extend(shard_drops)
        if shard_drops:
            write_parquet_atomic(pl.DataFrame(shard_drops, schema=_DROP_SCHEMA), drops_file)
        write_json_atomic({"signature": plan["shards"][shard_no], "seen": st.n_seen, "kept": st.n_kept,
                           "reasons": dict(st.reasons), "n_parts": chunk, "coverage": st.coverage},
                          staging / f"_shard-{shard_no:05d}.json")

    reasons = dict(Counter(d["reason"] for d in drops).most_common())
    ledger.write_run(STAGE, run_id, drops)
    seconds = time.perf_counter() - t0
    result = IngestResult(run_id, source, out_dir, n_seen, n_kept, len(drops), reasons, stats, seconds,
                          examples=drops[:10], shards_resumed=len(finished))
    if n_kept == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise AllSamplesFailed(
            f"no sample of {source} could be ingested ({n_seen} seen; reasons: {reasons or 'no samples at all'}). "
            "Check TADS_POOL; `tads explain UID` shows each rejected sample."
        )
    for f in staging.glob("_*"):  # resume bookkeeping: not part of the output
        f.unlink()
    write_json_atomic(result.manifest(), staging / MANIFEST)
    replace_dir(staging, out_dir)
    progress(f"raw_pool: {n_seen} samples seen, {n_kept} kept, {len(drops)} ledgered in {seconds:.1f}s "
             f"({result.samples_per_s:.0f} samples/s)" + (f", {len(finished)} shard(s) resumed" if finished else ""))
    return result


_DROP_SCHEMA = {"uid": pl.Utf8, "decision": pl.Utf8, "reason": pl.Utf8, "value": pl.Float64, "detail": pl.Utf8}


def _records(shard: formats.Shard, limits: formats.IngestLimits, coverage: dict):
    """The shard's records; a reader that breaks off (a defect, not bad data: readers turn bad data into records)
    ends the shard with one record saying so, and the shard's coverage stays short, which the
    raw_pool_sources_fully_read check reports. A `SourceError` (the source is not what its kind promises) stops
    the run naming the file."""
    n = 0
    try:
        for rec in formats.read_shard(shard, limits, coverage):
            n += 1
            yield rec
    except formats.SourceError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("raw_pool: reader of %s broke off after %d records", shard.path, n)
        coverage["reader_error"] = formats.one_line(f"{type(exc).__name__}: {exc}")
        yield formats.RawRecord(f"{shard.path}#reader-error-{n}", shard.name, shard.path, problem=formats.UNREADABLE_SHARD,
                                detail=formats.one_line(f"the reader broke off after {n} records: {type(exc).__name__}: "
                                                        f"{exc}"))


_TEXT_FIELDS = (("uid", "key"), ("url", "url"), ("ref", "source path"))


def _validate(rec: formats.RawRecord, limits: formats.IngestLimits, seen_uids: set[str]) -> dict | formats.Rejection:
    if rec.problem is not None:
        return formats.Rejection(rec.problem, rec.detail or rec.problem, rec.value)
    for attr, what in _TEXT_FIELDS:  # every text stored must be valid Unicode (a lone surrogate from JSON is not)
        if (why := formats.bad_text(getattr(rec, attr), what)) is not None:
            return formats.Rejection(formats.INVALID_METADATA, why)
    if rec.uid in seen_uids:
        return formats.Rejection(formats.DUPLICATE_KEY, f"key {rec.uid!r} already ingested from an earlier record")
    caption = formats.clean_caption(rec.caption, limits)
    if isinstance(caption, formats.Rejection):
        return caption
    image = formats.inspect_image(rec.image, limits)
    if isinstance(image, formats.Rejection):
        return image
    width, height, fmt, tiny = image
    seen_uids.add(rec.uid)
    return {
        "uid": rec.uid,
        "url": rec.url,
        "caption": caption,
        "image_ref": rec.ref,
        "width": width,
        "height": height,
        "sha256": formats.sha256(rec.image),
        "bytes": rec.image,
        "format": fmt,
        "shard": rec.shard,
        "tiny": tiny,
    }
