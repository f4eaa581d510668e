"""Asset checks: each stage's output is sound and its ledger accounts for every input."""


import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from resources import TadsPaths
from tads_assets.core import ingest
from tads_assets.pool import raw_pool


@asset_check(asset=raw_pool, blocking=True,
             description="Ledger completeness: samples read = rows kept + ledgered drops, for the latest run.")
def raw_pool_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    out = paths.parquet_dir("raw_pool")
    manifest = ingest.read_manifest(out)
    n_kept = ingest.scan_raw_pool(out).select(pl.len()).collect().item()
    report = paths.ledger().completeness(ingest.STAGE, manifest["run_id"], manifest["n_seen"], n_kept)
    passed = report.ok and n_kept == manifest["n_kept"]
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.describe() if n_kept == manifest["n_kept"]
        else f"raw_pool holds {n_kept} rows but its manifest says {manifest['n_kept']}",
        metadata={"n_in": report.n_in, "n_kept": report.n_kept, "n_dropped": report.n_dropped,
                  "n_unaccounted": report.n_unaccounted, "run_id": MetadataValue.text(manifest["run_id"])},
    )


@asset_check(asset=raw_pool, blocking=True,
             description="uids unique; captions non-empty; sizes positive; sha256 well-formed.")
def raw_pool_rows_valid(paths: TadsPaths) -> AssetCheckResult:
    frame = ingest.scan_raw_pool(paths.parquet_dir("raw_pool")).select("uid", "caption", "width", "height", "sha256").collect()
    problems = {
        "duplicate_uids": frame.height - frame["uid"].n_unique(),
        "empty_captions": frame.filter(pl.col("caption").is_null() | (pl.col("caption").str.strip_chars() == "")).height,
        "non_positive_sizes": frame.filter((pl.col("width") <= 0) | (pl.col("height") <= 0)).height,
        "bad_sha256": frame.filter(pl.col("sha256").str.len_chars() != 64).height,
    }
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": frame.height, **problems})
