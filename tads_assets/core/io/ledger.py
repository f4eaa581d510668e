"""The decisions ledger: one row per (uid, stage, decision, reason, value) for every sample a stage
drops (and any other decision worth explaining). Append-only Parquet under `TADS_HOME/ledger/`.

Layout: `ledger/stage=<stage>/run-<run_id>.parquet`, one file per run of a stage, written atomically
and never modified. A run that dropped nothing still writes an empty file, so "the latest run of a
stage" is always well defined: it is the file whose name sorts last (run ids start with a UTC
timestamp). Readers use the latest run per stage unless they ask for all runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tads_assets.core.atomic import write_parquet_atomic
from tads_assets.core.settings import DROP, KEEP  # noqa: F401  (the ledger's decisions; KEEP for readers)

log = logging.getLogger(__name__)


LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Utf8,
    "stage": pl.Utf8,
    "decision": pl.Utf8,
    "reason": pl.Utf8,
    "value": pl.Float64,
    "detail": pl.Utf8,
    "run_id": pl.Utf8,
    "ts": pl.Datetime("us", "UTC"),
}


def new_run_id() -> str:
    """A sortable run id: UTC timestamp to the microsecond plus a random suffix."""
    now = dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class CompletenessReport:
    """Ledger completeness of one stage run: every input is either kept or has a drop row."""

    stage: str
    n_in: int
    n_kept: int
    n_dropped: int

    @property
    def n_unaccounted(self) -> int:
        return self.n_in - self.n_kept - self.n_dropped

    @property
    def ok(self) -> bool:
        return self.n_unaccounted == 0

    def describe(self) -> str:
        verdict = "complete" if self.ok else f"INCOMPLETE: {self.n_unaccounted:+d} samples unaccounted for"
        return f"{self.stage}: in={self.n_in} kept={self.n_kept} dropped={self.n_dropped} -> {verdict}"


class Ledger:
    """Append-only decisions ledger rooted at a directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _stage_dir(self, stage: str) -> Path:
        if not stage or "/" in stage or stage.startswith("."):
            raise ValueError(f"invalid ledger stage name {stage!r}")
        return self.root / f"stage={stage}"

    def write_run(self, stage: str, run_id: str, rows: Iterable[Mapping] | pl.DataFrame) -> Path:
        """Write all decisions of one stage run (possibly none) as one immutable file."""
        frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(list(rows))
        frame = _conform(frame, stage=stage, run_id=run_id)
        path = self._stage_dir(stage) / f"run-{run_id}.parquet"
        if path.exists():
            raise FileExistsError(f"ledger run {run_id} of stage {stage} already written: {path}")
        write_parquet_atomic(frame, path)
        log.info("ledger: %d rows for stage %s (run %s)", frame.height, stage, run_id)
        return path

    def stages(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in self.root.glob("stage=*") if p.is_dir())

    def run_files(self, stage: str) -> list[Path]:
        d = self._stage_dir(stage)
        return sorted(d.glob("run-*.parquet")) if d.exists() else []

    def latest_run_id(self, stage: str) -> str | None:
        files = self.run_files(stage)
        return files[-1].stem.removeprefix("run-") if files else None

    def read(self, stage: str | None = None, run_id: str | None = None, all_runs: bool = False) -> pl.DataFrame:
        """Rows of one stage (or all stages): the latest run of each unless `run_id` or `all_runs`."""
        stages = [stage] if stage else self.stages()
        files: list[Path] = []
        for s in stages:
            runs = self.run_files(s)
            if run_id is not None:
                runs = [f for f in runs if f.stem == f"run-{run_id}"]
            elif not all_runs:
                runs = runs[-1:]
            files.extend(runs)
        if not files:
            return pl.DataFrame(schema=LEDGER_SCHEMA)
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical")

    def history(self, uid: str, all_runs: bool = False) -> pl.DataFrame:
        """Every ledger row about one sample, oldest first."""
        return self.read(all_runs=all_runs).filter(pl.col("uid") == uid).sort("ts")

    def summary(self) -> pl.DataFrame:
        """Counts per (stage, decision, reason) over the latest run of each stage."""
        rows = self.read()
        if rows.is_empty():
            return pl.DataFrame(schema={"stage": pl.Utf8, "decision": pl.Utf8, "reason": pl.Utf8, "n": pl.UInt32})
        return rows.group_by("stage", "decision", "reason").len("n").sort("stage", "n", descending=[False, True])

    def completeness(self, stage: str, run_id: str, n_in: int, n_kept: int) -> CompletenessReport:
        drops = self.read(stage, run_id=run_id).filter(pl.col("decision") == DROP)
        return CompletenessReport(stage=stage, n_in=n_in, n_kept=n_kept, n_dropped=drops.height)


def _conform(frame: pl.DataFrame, stage: str, run_id: str) -> pl.DataFrame:
    missing = {"uid", "decision", "reason"} - set(frame.columns)
    if frame.height and missing:
        raise ValueError(f"ledger rows lack required columns {sorted(missing)}")
    now = dt.datetime.now(dt.UTC)
    exprs = []
    for name, dtype in LEDGER_SCHEMA.items():
        if name == "stage":
            exprs.append(pl.lit(stage, pl.Utf8).alias(name))
        elif name == "run_id":
            exprs.append(pl.lit(run_id, pl.Utf8).alias(name))
        elif name == "ts":
            exprs.append(pl.lit(now, dtype).alias(name))
        elif name in frame.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype).alias(name))
    if frame.height == 0:
        return pl.DataFrame(schema=LEDGER_SCHEMA)
    out = frame.select(exprs)
    if out["uid"].null_count():
        raise ValueError("ledger rows must name a uid")
    return out
