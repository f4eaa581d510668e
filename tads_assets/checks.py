"""Asset checks: each stage's output is sound and its ledger accounts for every input."""


import numpy as np
import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from resources import LanceStore, TadsPaths
from tads_assets.core import embeddings, ingest
from tads_assets.characterize import FEATURE_FILE, feature_table, quality_scores, weak_labels
from tads_assets.core.report import markdown_table
from tads_assets.pool import deduped_pool, pool_embeddings, raw_pool
from tads_assets.select import (DVN_SCORES_FILE, STATIC_ABLATIONS, SUBSET_FILE, baseline_partitions, baseline_subsets,
                                final_subset, subset_dir, trained_dvn)


def _raw_pool_rows(paths: TadsPaths) -> int:
    return ingest.scan_raw_pool(paths.parquet_dir("raw_pool")).select(pl.len()).collect().item()


def _ledger_completeness(paths: TadsPaths, stage: str, n_in: int, n_kept: int, extra: dict) -> AssetCheckResult:
    """Samples into `stage` = rows it kept + drop rows of its latest ledger run (and any extra counts are 0)."""
    manifest = ingest.read_manifest(paths.parquet_dir(stage))
    report = paths.ledger().completeness(stage, manifest["run_id"], n_in, n_kept)
    problems = {**extra, "manifest_kept_mismatch": int(n_kept != manifest["n_kept"])}
    description = report.describe() if n_kept == manifest["n_kept"] else (
        f"{stage} holds {n_kept} rows but its manifest says {manifest['n_kept']}")
    return AssetCheckResult(
        passed=report.ok and not any(problems.values()),
        severity=AssetCheckSeverity.ERROR,
        description=description,
        metadata={"n_in": report.n_in, "n_kept": report.n_kept, "n_dropped": report.n_dropped,
                  "n_unaccounted": report.n_unaccounted, "run_id": MetadataValue.text(manifest["run_id"]), **problems},
    )


@asset_check(asset=raw_pool, blocking=True,
             description="Ledger completeness: samples read = rows kept + ledgered drops, for the latest run.")
def raw_pool_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    manifest = ingest.read_manifest(paths.parquet_dir("raw_pool"))
    return _ledger_completeness(paths, ingest.STAGE, manifest["n_seen"], _raw_pool_rows(paths), {})


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


@asset_check(asset=pool_embeddings, blocking=True,
             description="One row per raw_pool sample; every vector finite and L2-normalised (|norm - 1| < 1e-3).")
def pool_embeddings_normalised(paths: TadsPaths, lance: LanceStore) -> AssetCheckResult:
    frame = embeddings.read_embeddings(lance.connect())
    problems: dict[str, int] = {"rows_missing": _raw_pool_rows(paths) - frame.height,
                                "duplicate_uids": frame.height - frame["uid"].n_unique()}
    for col in ("image_vec", "text_vec", "flipped_image_vec"):
        (vecs,) = embeddings.arrays(frame, col)
        norms = np.linalg.norm(vecs, axis=1)
        problems[f"{col}_non_finite"] = int((~np.isfinite(vecs).all(axis=1)).sum())
        problems[f"{col}_not_unit"] = int((np.abs(norms - 1) > 1e-3).sum())
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": frame.height, **problems})


@asset_check(asset=deduped_pool, blocking=True,
             description="Ledger completeness: raw_pool rows = deduped rows kept + ledgered dedup drops; no uid twice.")
def deduped_pool_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    kept = pl.read_parquet(paths.parquet_dir("deduped_pool") / "deduped_pool.parquet", columns=["uid"])
    return _ledger_completeness(paths, "deduped_pool", _raw_pool_rows(paths), kept.height,
                                {"duplicate_uids": kept.height - kept["uid"].n_unique()})


def _deduped_uids(paths: TadsPaths) -> pl.Series:
    return pl.read_parquet(paths.parquet_dir("deduped_pool") / "deduped_pool.parquet", columns=["uid"])["uid"]


def _coverage_problems(uids: pl.Series, expected: pl.Series) -> dict[str, int]:
    """Rows that should be there and are not, rows that should not, and repeated uids."""
    have, want = set(uids.to_list()), set(expected.to_list())
    return {"missing_uids": len(want - have), "unexpected_uids": len(have - want),
            "duplicate_uids": len(uids) - uids.n_unique()}


@asset_check(asset=feature_table, blocking=True,
             description="One row per deduplicated sample; every feature of f(x) finite; ratios and confidences in [0, 1].")
def feature_table_valid(paths: TadsPaths) -> AssetCheckResult:
    from tads_assets.core.operators import FEATURE_COLUMNS, feature_matrix

    frame = pl.read_parquet(paths.parquet_dir("feature_table") / FEATURE_FILE)
    problems = _coverage_problems(frame["uid"], _deduped_uids(paths))
    problems["rows_non_finite"] = int((~np.isfinite(feature_matrix(frame)).all(axis=1)).sum())
    for col in ("ocr_text_ratio", "lang_confidence", "grounding_confidence", "caption_info_gain"):
        problems[f"{col}_out_of_range"] = frame.filter(~pl.col(col).is_between(0, 1)).height
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "features": len(FEATURE_COLUMNS), **problems})


@asset_check(asset=weak_labels, blocking=True,
             description="One row per feature-table sample; ŷ_weak in [0, 1]; at least 8 labelling functions; votes in {-1, 0, 1}.")
def weak_labels_valid(paths: TadsPaths) -> AssetCheckResult:
    frame = pl.read_parquet(paths.parquet_dir("weak_labels") / "weak_labels.parquet")
    features = pl.read_parquet(paths.parquet_dir("feature_table") / FEATURE_FILE, columns=["uid"])
    lfs = [c for c in frame.columns if c.startswith("lf_")]
    problems = _coverage_problems(frame["uid"], features["uid"])
    problems["y_weak_out_of_range"] = frame.filter(~pl.col("y_weak").is_between(0, 1)).height
    problems["too_few_lfs"] = int(len(lfs) < 8)
    problems["bad_votes"] = sum(frame.filter(~pl.col(c).is_in([-1, 0, 1])).height for c in lfs)
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": frame.height, "lfs": len(lfs), **problems})


@asset_check(asset=quality_scores, blocking=True,
             description="One score per feature-table sample, finite and in [0, 1]; the q_φ checkpoint exists.")
def quality_scores_in_range(paths: TadsPaths) -> AssetCheckResult:
    frame = pl.read_parquet(paths.parquet_dir("quality_scores") / "quality_scores.parquet")
    features = pl.read_parquet(paths.parquet_dir("feature_table") / FEATURE_FILE, columns=["uid"])
    problems = _coverage_problems(frame["uid"], features["uid"])
    problems["out_of_range"] = frame.filter(~pl.col("quality").is_between(0, 1) | pl.col("quality").is_nan()).height
    problems["checkpoint_missing"] = int(not (paths.models_dir / "quality_scores" / "q_phi.safetensors").exists())
    q = frame["quality"]
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "median": float(q.median() or 0.0), **problems})


@asset_check(asset=baseline_subsets, blocking=True,
             description="For every materialized method: its candidates (raw_pool rows; quality_scores rows for "
             "quality_only) = subset rows + ledgered drops of that method's latest run; no uid both kept and dropped.")
def baseline_subsets_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    per_method, ok = [], True
    n_quality = pl.scan_parquet(paths.parquet_dir("quality_scores") / "quality_scores.parquet").select(pl.len()).collect().item()
    for method in baseline_partitions.get_partition_keys():
        out = subset_dir(paths, method)
        if not (out / "_manifest.json").exists():
            continue
        manifest = ingest.read_manifest(out)
        kept = pl.read_parquet(out / SUBSET_FILE, columns=["uid"])
        drops = paths.ledger().read(f"baseline_{method}", run_id=manifest["run_id"])
        overlap = len(set(kept["uid"].to_list()) & set(drops["uid"].to_list()))
        n_in = n_quality if method in ("quality_only", *STATIC_ABLATIONS) else _raw_pool_rows(paths)
        report = paths.ledger().completeness(f"baseline_{method}", manifest["run_id"], n_in, kept.height)
        ok &= report.ok and not overlap
        per_method.append({"method": method, "in": report.n_in, "kept": report.n_kept, "dropped": report.n_dropped,
                           "unaccounted": report.n_unaccounted, "kept_and_dropped": overlap})
    return AssetCheckResult(passed=ok and bool(per_method), severity=AssetCheckSeverity.ERROR,
                            description="no method materialized yet" if not per_method else None,
                            metadata={"methods": MetadataValue.md(markdown_table(per_method)) if per_method else "none"})


@asset_check(asset=trained_dvn, blocking=True,
             description="v(x) for every deduplicated sample, each in (0, 1) and finite; the checkpoint on disk.")
def trained_dvn_scores_valid(paths: TadsPaths) -> AssetCheckResult:
    from tads_assets.core.dvn import DVN_CHECKPOINT

    frame = pl.read_parquet(paths.parquet_dir("trained_dvn") / DVN_SCORES_FILE, columns=["uid", "v"])
    quality = pl.read_parquet(paths.parquet_dir("quality_scores") / "quality_scores.parquet", columns=["uid"])
    problems = _coverage_problems(frame["uid"], quality["uid"])
    problems["out_of_range"] = frame.filter(~pl.col("v").is_between(0, 1) | pl.col("v").is_nan()).height
    problems["checkpoint_missing"] = int(not (paths.models_dir / "trained_dvn" / DVN_CHECKPOINT).exists())
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "mean_v": float(frame["v"].mean() or 0.0), **problems})


@asset_check(asset=final_subset, blocking=True,
             description="trained_dvn's samples = final_subset rows + ledgered drops of the latest run; no uid both "
             "kept and dropped; the subset is not empty.")
def final_subset_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    out = paths.parquet_dir("final_subset")
    manifest = ingest.read_manifest(out)
    kept = pl.read_parquet(out / "final_subset.parquet", columns=["uid"])
    drops = paths.ledger().read("final_subset", run_id=manifest["run_id"])
    n_in = pl.scan_parquet(paths.parquet_dir("trained_dvn") / DVN_SCORES_FILE).select(pl.len()).collect().item()
    report = paths.ledger().completeness("final_subset", manifest["run_id"], n_in, kept.height)
    overlap = len(set(kept["uid"].to_list()) & set(drops["uid"].to_list()))
    return AssetCheckResult(passed=report.ok and not overlap and kept.height > 0,
                            metadata={"in": report.n_in, "kept": report.n_kept, "dropped": report.n_dropped,
                                      "unaccounted": report.n_unaccounted, "kept_and_dropped": overlap})
