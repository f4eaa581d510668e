"""Atomic file writes: a reader never sees a half-written Parquet or JSON file."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_parquet_atomic(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write `df` to `path` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write through any writer (safetensors, savefig, ...); renamed onto
    `path` when the block ends without an exception, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written staging directory into place of `target` (old contents removed)."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def write_stage_output(out_dir: str | os.PathLike, ledger, stage: str, kept: pl.DataFrame, drops: pl.DataFrame,
                       file_name: str | None = None, extra: dict | None = None) -> dict:
    """A filtering stage's result: kept rows as Parquet (`<stage>.parquet` unless `file_name`), drops as one
    ledger run, and a manifest tying the two together (`n_seen` = kept + dropped; `extra` adds the settings a check
    needs, e.g. the size bound), all replaced atomically."""
    from tads_assets.core.ledger import new_run_id

    out_dir = Path(out_dir)
    run_id = new_run_id()
    ledger.write_run(stage, run_id, drops)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    write_parquet_atomic(kept, staging / (file_name or f"{stage}.parquet"))
    manifest = {"stage": stage, "run_id": run_id, "n_seen": kept.height + drops.height, "n_kept": kept.height,
                "n_dropped": drops.height,
                "reasons": dict(drops.group_by("reason").len().iter_rows()) if drops.height else {}, **(extra or {})}
    write_json_atomic(manifest, staging / "_manifest.json")
    replace_dir(staging, out_dir)
    return manifest
