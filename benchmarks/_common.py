"""Shared loading for the benchmark scripts: a materialized TADS_HOME on the demo pool."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

import tads_assets  # noqa: F401


def home(arg: str | None) -> Path:
    return Path(arg or os.environ.get("TADS_HOME", ".tads")).resolve()


def load_demo_pool_with_vectors(tads_home: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """raw_pool joined with its embeddings and the demo truth; fails with the command that makes them."""
    import lancedb

    from tads_assets.core.embeddings import pool_with_vectors

    truth_path = tads_home / "demo" / "truth.parquet"
    if not truth_path.exists() or not (tads_home / "lance").exists():
        raise SystemExit(f"{tads_home} holds no materialized demo pool with embeddings: run `make demo` first "
                         "(or pass --home)")
    pool, (image, text) = pool_with_vectors(tads_home / "parquet" / "raw_pool", lancedb.connect(str(tads_home / "lance")))
    truth = pl.read_parquet(truth_path).select("uid", "kind", "duplicate_of", "source", "label")
    pool = pool.join(truth, on="uid", how="left", maintain_order="left")
    return pool, image, text
