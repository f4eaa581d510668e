"""Asset checks: each stage's output is sound and its ledger accounts for every input. Every output is read
through the catalogue (`paths.catalog`, `tads_assets.core.io.catalog`)."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import polars.selectors as cs
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check
from safetensors.numpy import load_file

from resources import Guard, TadsPaths
from tads_assets.characterize import (cluster_diversity, feature_table, operator_features, quality_scores,
                                      relevance_vectors, task_set, weak_labels)
from tads_assets.core.harness import clip_train
from tads_assets.core.io import embeddings, ingest
from tads_assets.core.method.operators import FEATURE_COLUMNS, feature_matrix
from tads_assets.pool import clip_encoder, deduped_pool, frozen_features, pool_embeddings, raw_pool
from tads_assets.select import STATIC_ABLATIONS, baseline_partitions, baseline_subsets, final_subset, trained_dvn
from tads_assets.train_eval import benchmark_scores, checkpoints, trained_clip, training_partitions
from tads_assets.meta import table


def _ledger_completeness(paths: TadsPaths, stage: str, manifest: dict, n_in: int, n_kept: int,
                         extra: dict) -> AssetCheckResult:
    """Samples into `stage` = rows it kept + drop rows of its latest ledger run (`manifest`'s), and any extra
    counts are 0."""
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
    pool = paths.catalog.raw_pool
    manifest = pool.manifest()
    return _ledger_completeness(paths, ingest.STAGE, manifest, manifest["n_seen"], pool.height(), {})


@asset_check(asset=raw_pool, blocking=True,
             description="Every byte of every source accounted for: each tar's bytes were read as members or lie in "
             "an unreadable range that a ledger row of the latest run names; each table's rows were all read.")
def raw_pool_sources_fully_read(paths: TadsPaths) -> AssetCheckResult:
    manifest = paths.catalog.raw_pool.manifest()
    ledgered = set(paths.ledger().read(ingest.STAGE, run_id=manifest["run_id"])["uid"].to_list())
    rows, problems = ingest.source_coverage(manifest, ledgered)
    return AssetCheckResult(
        passed=not problems, severity=AssetCheckSeverity.ERROR,
        description="every source fully read or its unreadable ranges ledgered" if not problems else
        f"{len(problems)} problem(s), e.g. {problems[0]}",
        metadata={"shards": len(rows), "unreadable_ranges": sum(r["unreadable ranges"] for r in rows),
                  "unreadable_bytes": sum(r["unreadable bytes"] for r in rows), "problems": len(problems),
                  "coverage": table(rows[:50]),
                  **({"first_problems": MetadataValue.md("\n".join(f"- {p}" for p in problems[:20]))} if problems else {})},
    )


@asset_check(asset=raw_pool, blocking=True,
             description="uids unique; captions non-empty; sizes positive; sha256 well-formed.")
def raw_pool_rows_valid(paths: TadsPaths) -> AssetCheckResult:
    frame = paths.catalog.raw_pool.scan().select("uid", "caption", "width", "height", "sha256").collect()
    problems = {
        "duplicate_uids": frame.height - frame["uid"].n_unique(),
        "empty_captions": frame.filter(pl.col("caption").is_null() | (pl.col("caption").str.strip_chars() == "")).height,
        "non_positive_sizes": frame.filter((pl.col("width") <= 0) | (pl.col("height") <= 0)).height,
        "bad_sha256": frame.filter(pl.col("sha256").str.len_chars() != 64).height,
    }
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": frame.height, **problems})


@asset_check(asset=pool_embeddings, blocking=True,
             description="One row per raw_pool sample; every vector finite and L2-normalised (|norm - 1| < 1e-3).")
def pool_embeddings_normalised(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    frame = cat.pool_embeddings.read()
    problems: dict[str, int] = {"rows_missing": cat.raw_pool.height() - frame.height,
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
    cat = paths.catalog
    kept = cat.deduped_pool.read(["uid"])
    return _ledger_completeness(paths, "deduped_pool", cat.deduped_pool.manifest(), cat.raw_pool.height(), kept.height,
                                {"duplicate_uids": kept.height - kept["uid"].n_unique()})


@asset_check(asset=deduped_pool, description="Guard against a degenerate dedup: removing more than the guard's "
             "share of the pool (TADS_GUARD_DEDUP_MAX_SHARE, 0.4) flags the run, naming the dominant removal reason "
             "with examples (severity TADS_GUARD_SEVERITY: warn by default, or error).")
def deduped_pool_removal_within_guard(paths: TadsPaths, guard: Guard) -> AssetCheckResult:
    manifest = paths.catalog.deduped_pool.manifest()
    n_in, n_dropped = int(manifest.get("n_seen", 0)), int(manifest.get("n_dropped", 0))
    reasons = manifest.get("reasons", {}) or {}
    share = n_dropped / max(n_in, 1)
    dominant = max(reasons, key=reasons.get) if reasons else "none"
    meta = {"n_in": n_in, "removed": n_dropped, "removed_share": round(share, 4), "max_share": guard.dedup_max_share,
            "dominant_reason": MetadataValue.text(dominant),
            "dominant_reason_share": round(reasons.get(dominant, 0) / max(n_dropped, 1), 4),
            "reasons": MetadataValue.json(reasons)}
    passed = share <= guard.dedup_max_share
    if not passed:
        rows = paths.ledger().read("deduped_pool").filter(pl.col("reason") == dominant).head(5)
        meta["examples"] = MetadataValue.md("\n".join(f"- `{r['uid']}`: {r['detail']}" for r in rows.iter_rows(named=True)))
        meta["what_to_do"] = MetadataValue.text(
            f"deduped_pool removed {share:.0%} of its input, mostly as {dominant}: look at the examples; if they are "
            "distinct samples, use the text_and_image rule (redundancy) or raise its thresholds; see the calibration "
            "curve in deduped_pool's metadata")
    return AssetCheckResult(passed=passed, metadata=meta, severity=(
        AssetCheckSeverity.ERROR if guard.severity == "error" else AssetCheckSeverity.WARN))


def _deduped_uids(paths: TadsPaths) -> pl.Series:
    return paths.catalog.deduped_pool.read(["uid"])["uid"]


def _coverage_problems(uids: pl.Series, expected: pl.Series) -> dict[str, int]:
    """Rows that should be there and are not, rows that should not, and repeated uids."""
    have, want = set(uids.to_list()), set(expected.to_list())
    return {"missing_uids": len(want - have), "unexpected_uids": len(have - want),
            "duplicate_uids": len(uids) - uids.n_unique()}


@asset_check(asset=feature_table, blocking=True,
             description="One row per deduplicated sample; every feature of f(x) finite; ratios and confidences in [0, 1].")
def feature_table_valid(paths: TadsPaths) -> AssetCheckResult:
    frame = paths.catalog.feature_table.read()
    problems = _coverage_problems(frame["uid"], _deduped_uids(paths))
    problems["rows_non_finite"] = int((~np.isfinite(feature_matrix(frame)).all(axis=1)).sum())
    for col in ("ocr_text_ratio", "lang_confidence", "grounding_confidence", "caption_info_gain"):
        problems[f"{col}_out_of_range"] = frame.filter(~pl.col(col).is_between(0, 1)).height
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "features": len(FEATURE_COLUMNS), **problems})


@asset_check(asset=weak_labels, blocking=True,
             description="One row per feature-table sample; ŷ_weak in [0, 1]; at least 8 labelling functions; votes in {-1, 0, 1}.")
def weak_labels_valid(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    frame = cat.weak_labels.read()
    features = cat.feature_table.read(["uid"])
    lfs = [c for c in frame.columns if c.startswith("lf_")]
    problems = _coverage_problems(frame["uid"], features["uid"])
    problems["y_weak_out_of_range"] = frame.filter(~pl.col("y_weak").is_between(0, 1)).height
    problems["too_few_lfs"] = int(len(lfs) < 8)
    problems["bad_votes"] = sum(frame.filter(~pl.col(c).is_in([-1, 0, 1])).height for c in lfs)
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": frame.height, "lfs": len(lfs), **problems})


@asset_check(asset=weak_labels, description="No labelling function inverted: the LabelModel learned every LF's "
             "accuracy at 0.5 or above. An inverted LF (its BAD vote would raise P(good)) is left out of ŷ_weak and "
             "flagged here as a warning, with its learned accuracy.")
def weak_labels_no_inverted_lf(paths: TadsPaths) -> AssetCheckResult:
    manifest = paths.catalog.weak_labels.manifest()
    inverted = list(manifest.get("inverted_lfs", []))
    accuracy = manifest.get("learned_accuracy", {})
    return AssetCheckResult(passed=not inverted, severity=AssetCheckSeverity.WARN, metadata={
        "inverted_lfs": MetadataValue.text(", ".join(inverted) or "none"),
        "learned_accuracy": MetadataValue.json(accuracy),
        **({"what_to_do": MetadataValue.text(
            "an inverted LF fires where this pool's good samples are (look at its threshold and its BAD votes' "
            "examples): fix its threshold or leave it out; ŷ_weak was fitted without it")} if inverted else {})})


@asset_check(asset=quality_scores, blocking=True,
             description="One score per feature-table sample, finite and in [0, 1]; the q_φ checkpoint exists.")
def quality_scores_in_range(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    frame = cat.quality_scores.read()
    features = cat.feature_table.read(["uid"])
    problems = _coverage_problems(frame["uid"], features["uid"])
    problems["out_of_range"] = frame.filter(~pl.col("quality").is_between(0, 1) | pl.col("quality").is_nan()).height
    problems["checkpoint_missing"] = int(not cat.quality_scores.checkpoint.exists())
    q = frame["quality"]
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "median": float(q.median() or 0.0), **problems})


@asset_check(asset=baseline_subsets, blocking=True,
             description="For every materialized method: its candidates (raw_pool rows; quality_scores rows for "
             "quality_only) = subset rows + ledgered drops of that method's latest run; no uid both kept and dropped.")
def baseline_subsets_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    cat, per_method, ok = paths.catalog, [], True
    n_quality, n_raw = cat.quality_scores.height(), cat.raw_pool.height()
    for method in baseline_partitions.get_partition_keys():
        subset = cat.baseline_subsets.of(method)
        try:
            manifest = subset.manifest()
        except FileNotFoundError:  # this method was never materialized
            continue
        kept = subset.read(["uid"])
        drops = paths.ledger().read(f"baseline_{method}", run_id=manifest["run_id"])
        overlap = len(set(kept["uid"].to_list()) & set(drops["uid"].to_list()))
        n_in = n_quality if method in ("quality_only", *STATIC_ABLATIONS) else n_raw
        report = paths.ledger().completeness(f"baseline_{method}", manifest["run_id"], n_in, kept.height)
        ok &= report.ok and not overlap
        per_method.append({"method": method, "in": report.n_in, "kept": report.n_kept, "dropped": report.n_dropped,
                           "unaccounted": report.n_unaccounted, "kept_and_dropped": overlap})
    return AssetCheckResult(passed=ok and bool(per_method), severity=AssetCheckSeverity.ERROR,
                            description="no method materialized yet" if not per_method else None,
                            metadata={"methods": table(per_method) if per_method else "none"})


@asset_check(asset=trained_dvn, blocking=True,
             description="v(x) for every deduplicated sample, each in (0, 1) and finite; the checkpoint on disk.")
def trained_dvn_scores_valid(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    frame = cat.trained_dvn.read(["uid", "v"])
    quality = cat.quality_scores.read(["uid"])
    problems = _coverage_problems(frame["uid"], quality["uid"])
    problems["out_of_range"] = frame.filter(~pl.col("v").is_between(0, 1) | pl.col("v").is_nan()).height
    problems["checkpoint_missing"] = int(not cat.trained_dvn.checkpoint.exists())
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "mean_v": float(frame["v"].mean() or 0.0), **problems})


@asset_check(asset=final_subset, blocking=True,
             description="trained_dvn's samples = final_subset rows + ledgered drops of the latest run; no uid both "
             "kept and dropped; the subset is not empty.")
def final_subset_ledger_complete(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    manifest = cat.final_subset.manifest()
    kept = cat.final_subset.read(["uid"])
    drops = paths.ledger().read("final_subset", run_id=manifest["run_id"])
    n_in = cat.trained_dvn.height()
    report = paths.ledger().completeness("final_subset", manifest["run_id"], n_in, kept.height)
    overlap = len(set(kept["uid"].to_list()) & set(drops["uid"].to_list()))
    return AssetCheckResult(passed=report.ok and not overlap and kept.height > 0,
                            metadata={"in": report.n_in, "kept": report.n_kept, "dropped": report.n_dropped,
                                      "unaccounted": report.n_unaccounted, "kept_and_dropped": overlap})


def _finite_tensors(path: Path) -> tuple[int, int]:
    """(tensors, tensors holding NaN or inf) of a safetensors file."""
    tensors = load_file(str(path))
    return len(tensors), sum(int(not np.isfinite(t).all()) for t in tensors.values() if t.dtype.kind == "f")


@asset_check(asset=final_subset, blocking=True,
             description="Subset size within the data budget: 1 ≤ kept ≤ the budget in samples final_subset ran "
             "under (kept in its manifest), every kept v finite and in (0, 1), no uid twice.")
def final_subset_size_within_bounds(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    kept = cat.final_subset.read(["uid", "score"])
    n_in = cat.trained_dvn.height()
    manifest = cat.final_subset.manifest()
    cap = int(manifest.get("budget", n_in))
    problems = {"empty": int(kept.height == 0), "above_budget": max(0, kept.height - cap),
                "duplicate_uids": kept.height - kept["uid"].n_unique(),
                "score_out_of_range": kept.filter(~pl.col("score").is_between(0, 1) | pl.col("score").is_nan()).height}
    return AssetCheckResult(passed=not any(problems.values()), metadata={
        "kept": kept.height, "n_in": n_in, "budget": cap, "budget_rule": manifest.get("budget_rule", ""), **problems})


@asset_check(asset=final_subset, description="The subset fills the data budget; when fewer candidates survive "
             "deduplication than the budget (or an explicit τ keeps fewer), a warning names how many are missing and why.")
def final_subset_fills_budget(paths: TadsPaths) -> AssetCheckResult:
    manifest = paths.catalog.final_subset.manifest()
    short = int(manifest.get("short_of_budget", 0))
    return AssetCheckResult(passed=short == 0, severity=AssetCheckSeverity.WARN, metadata={
        "budget": int(manifest.get("budget", 0)), "short_of_budget": short,
        "reason": manifest.get("short_reason") or "none", "budget_rule": manifest.get("budget_rule", ""),
        "raw_pool": int(manifest.get("n_pool", 0))})


@asset_check(asset=clip_encoder, blocking=True,
             description="The encoder's description and weights are on disk; every weight tensor is finite.")
def clip_encoder_weights_finite(paths: TadsPaths) -> AssetCheckResult:
    encoder = paths.catalog.clip_encoder
    info = encoder.info()
    names = [info["heads"], *info.get("heldout_heads", [])] if info["kind"] == "builtin" else []
    files = [encoder.file(f) for f in names]
    problems = {"files_missing": sum(int(not f.exists()) for f in files)}
    counts = [_finite_tensors(f) for f in files if f.exists()]
    problems["tensors_non_finite"] = sum(bad for _, bad in counts)
    return AssetCheckResult(passed=not any(problems.values()), metadata={
        "kind": MetadataValue.text(info["kind"]), "weight_files": len(files),
        "tensors": sum(n for n, _ in counts), **problems})


@asset_check(asset=frozen_features, blocking=True,
             description="The part's cached frozen features: one row per raw_pool row of the part, all finite.")
def frozen_features_part_valid(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    handle = cat.frozen_features
    cache = handle.dir
    rows = []
    for part in cat.raw_pool.parts():
        cached = handle.part(part.name)
        if not cached.exists():
            continue
        frame = pl.read_parquet(cached)
        vecs = [embeddings.arrays(frame, c)[0] for c in embeddings.FROZEN_COLUMNS]
        rows.append({"part": part.stem, "rows": frame.height, "current": embeddings.frozen_part_is_current(cache, part),
                     "non_finite_rows": int(sum((~np.isfinite(v).all(axis=1)).sum() for v in vecs))})
    ok = all(r["current"] and not r["non_finite_rows"] for r in rows)
    return AssetCheckResult(passed=ok, metadata={"parts_cached": len(rows),
                                                 "parts": table(rows) if rows else "none"})


@asset_check(asset=task_set, blocking=True,
             description="At least one task; unique names; weights φ_k ≥ 0, not all 0; classification tasks have ≥ 2 "
             "classes; every validation and test set exists.")
def task_set_valid(paths: TadsPaths) -> AssetCheckResult:
    tasks, digest = paths.catalog.task_set.read()
    names = [t.name for t in tasks]
    problems = {"no_tasks": int(not tasks), "duplicate_names": len(names) - len(set(names)),
                "negative_weights": sum(int(t.weight < 0) for t in tasks),
                "all_weights_zero": int(bool(tasks) and all(t.weight == 0 for t in tasks)),
                "too_few_classes": sum(int(t.kind == "classification" and len(t.classes) < 2) for t in tasks),
                "missing_sets": sum(int(not Path(s).exists()) for t in tasks for s in t.sets.values())}
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"tasks": len(tasks), "sha256": MetadataValue.text(digest), **problems})


@asset_check(asset=relevance_vectors, blocking=True,
             description="One row per deduplicated sample; r_k finite and in [-1, 1]; h_r = r/(‖r‖+ε) has norm ≤ 1 "
             "(≈ 1 unless r ≈ 0); the tasks are task_set's.")
def relevance_vectors_valid(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    uids, r, h, names = cat.relevance_vectors.read()
    tasks, _ = cat.task_set.read()
    norms_h, norms_r = np.linalg.norm(h, axis=1), np.linalg.norm(r, axis=1)
    problems = _coverage_problems(pl.Series(uids, dtype=pl.Utf8), _deduped_uids(paths))
    problems["non_finite_rows"] = int((~np.isfinite(r).all(axis=1) | ~np.isfinite(h).all(axis=1)).sum())
    problems["r_out_of_range"] = int((np.abs(r) > 1 + 1e-5).any(axis=1).sum())
    problems["h_not_normalised"] = int(((np.abs(norms_h - 1) > 1e-3) & (norms_r > 1e-3)).sum())
    problems["tasks_differ_from_task_set"] = int(names != [t.name for t in tasks])
    return AssetCheckResult(passed=not any(problems.values()), metadata={"rows": len(uids), "tasks": len(names),
                                                                         **problems})


@asset_check(asset=cluster_diversity, blocking=True,
             description="One row per deduplicated sample; d(x) finite and in (0, 1]; cluster_size matches the "
             "cluster's member count.")
def cluster_diversity_valid(paths: TadsPaths) -> AssetCheckResult:
    frame = paths.catalog.cluster_diversity.read()
    counts = frame.group_by("cluster").len("members")
    joined = frame.join(counts, on="cluster")
    problems = _coverage_problems(frame["uid"], _deduped_uids(paths))
    problems["d_out_of_range"] = frame.filter(~pl.col("diversity").is_between(0, 1, closed="right")
                                              | pl.col("diversity").is_nan()).height
    problems["size_mismatch"] = joined.filter(pl.col("cluster_size") != pl.col("members")).height
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"rows": frame.height, "clusters": counts.height, **problems})


@asset_check(asset=trained_clip, blocking=True,
             description="For every trained method and training seed: the checkpoint's tensors are finite and the run "
             "spent its budget of samples seen.")
def trained_clip_checkpoints_valid(paths: TadsPaths) -> AssetCheckResult:
    rows = []
    for method in training_partitions.get_partition_keys():
        for out in checkpoints(paths.catalog, method):
            info = json.loads((out / clip_train.INFO).read_text())
            n, bad = _finite_tensors(out / clip_train.CHECKPOINT)
            rows.append({"method": method, "seed": info["params"]["seed"], "tensors": n, "non_finite": bad,
                         "samples_seen": info["samples_seen"], "budget": info["params"]["budget_samples_seen"]})
    ok = bool(rows) and all(not r["non_finite"] and r["samples_seen"] >= r["budget"] for r in rows)
    return AssetCheckResult(passed=ok, metadata={"methods": table(rows) if rows else "none"})


@asset_check(asset=benchmark_scores, blocking=True,
             description="Every score finite and within [0, 100] percent; a chance row; every trained method scored.")
def benchmark_scores_in_range(paths: TadsPaths) -> AssetCheckResult:
    path = paths.catalog.benchmark_scores.file("json")
    if not path.exists():
        raise paths.catalog.benchmark_scores.missing(path)
    report = json.loads(path.read_text())
    rows = report["rows"]
    # the score columns, named positively: each task's metrics ("task/metric"), the average, and the average of
    # each training seed (average_runs); counts and the spread over seeds are not percentages
    values = [v for r in rows for k, v in r.items() if ("/" in k or k == "average") and v is not None]
    values += [v for r in rows for v in (r.get("average_runs") or [])]
    problems = {"out_of_range": sum(int(not (np.isfinite(v) and 0 <= v <= 100)) for v in values),
                "no_chance_row": int(not any(r["method"] == "chance" for r in rows)),
                "no_method": int(len(rows) < 2)}
    return AssetCheckResult(passed=not any(problems.values()),
                            metadata={"methods": len(rows) - 1, "scores": len(values), **problems})


@asset_check(asset=operator_features, blocking=True,
             description="Every cached feature part: one row per kept sample of its raw_pool part, every numeric "
             "feature finite.")
def operator_features_part_valid(paths: TadsPaths) -> AssetCheckResult:
    cat = paths.catalog
    handle = cat.operator_features
    kept = set(_deduped_uids(paths).to_list())
    rows = []
    for part in cat.raw_pool.parts():
        cached = handle.part(part.name)
        if not cached.exists():
            continue
        frame = pl.read_parquet(cached)
        numeric = frame.select(cs.numeric()).to_numpy().astype(np.float64)
        expected = sum(u in kept for u in pl.read_parquet(part, columns=["uid"])["uid"].to_list())
        rows.append({"part": part.stem, "rows": frame.height, "kept_in_part": expected,
                     "non_finite_rows": int((~np.isfinite(numeric).all(axis=1)).sum())})
    ok = all(r["rows"] == r["kept_in_part"] and not r["non_finite_rows"] for r in rows)
    return AssetCheckResult(passed=ok, metadata={"parts_cached": len(rows),
                                                 "parts": table(rows) if rows else "none"})
