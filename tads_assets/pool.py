"""pool group: raw_pool, frozen_features (per part), clip_encoder, pool_embeddings, deduped_pool.
Assets load, call the library, write, report."""

import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, DynamicPartitionsDefinition, MaterializeResult, MetadataValue, asset

from resources import ClipEncoder, TadsPaths, TorchDevice, one_writer
from tads_assets.config import config_from, params_of
from tads_assets.core.io import embeddings, formats, ingest
from tads_assets.core.io.catalog import ClipEncoderDir, PoolEmbeddings, RawPool
from tads_assets.core.io.formats import IngestLimits
from tads_assets.core.io.storage import staged_dir, write_stage_output
from tads_assets.core.method import dedup
from tads_assets.core.method.dedup import DedupParams
from tads_assets.core.method.encoder import (HeadsConfig, HeldoutCleaning, fit_builtin_encoder, fit_heldout_heads, fold_of,
                                             save_heads, write_encoder_info)
from tads_assets.core.report import histogram_markdown, line_plot_markdown, multi_line_plot_markdown, sample_grid_markdown
from tads_assets.meta import column_schema, describe, rounded, table


# The per-sample stages' partitions: one per raw_pool part (a source shard, or a chunk of a large one). raw_pool
# registers them when it materializes; a backfill of frozen_features or operator_features fans out over them.
raw_pool_parts = DynamicPartitionsDefinition(name="raw_pool_parts")


def register_parts(context: AssetExecutionContext, part_names: list[str]) -> dict[str, int]:
    """Make the Dagster instance's raw_pool_parts partitions exactly the current parts."""
    instance = context.instance
    have = set(instance.get_dynamic_partitions(raw_pool_parts.name))
    new = [p for p in part_names if p not in have]
    gone = sorted(have - set(part_names))
    if new:
        instance.add_dynamic_partitions(raw_pool_parts.name, new)
    for key in gone:
        instance.delete_dynamic_partition(raw_pool_parts.name, key)
    return {"partitions_added": len(new), "partitions_removed": len(gone)}


def scored_samples_grid(raw_pool: RawPool, uids: list[str], scores: np.ndarray, score_name: str, title: str,
                        n: int = 6) -> str:
    """Metadata markdown: the n highest- and n lowest-scored samples, image and caption (the paper's Figure 6)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    picks = {"highest": order[:n], "lowest": order[::-1][:n]}
    wanted = [uids[i] for idx in picks.values() for i in idx]
    pool = raw_pool.scan().filter(pl.col("uid").is_in(wanted)).select("uid", "bytes", "caption").collect()
    by_uid = {row["uid"]: row for row in pool.iter_rows(named=True)}
    rows = {f"{label} {score_name}": [(by_uid[uids[i]]["bytes"], by_uid[uids[i]]["caption"], float(scores[i]))
                                      for i in idx if uids[i] in by_uid] for label, idx in picks.items()}
    return sample_grid_markdown(rows, title, score_name)


RawPoolConfig = config_from("RawPoolConfig", "Ingestion limits (`formats.IngestLimits`). Samples beyond them are "
                            "ledgered, not raised.", IngestLimits, extra={"rows_per_file": (int, 5_000)})
RAW_POOL_COLUMNS = {"uid": "the sample's key in its source", "url": "source URL (empty when unknown)",
                    "caption": "the caption, NFC-normalised", "image_ref": "where the image came from (shard#member or file)",
                    "width": "image width (pixels)", "height": "image height (pixels)", "sha256": "of the image bytes",
                    "bytes": "the encoded image", "format": "image format (jpeg, png, webp, ...)",
                    "shard": "the source shard", "tiny": "a 16×16 RGB thumbnail (the quality-guided dedup's visual key)"}


@asset(
    group_name="pool",
    kinds={"parquet", "polars"},
    description=describe("The raw pool (TADS_POOL) as Parquet parts. Unreadable images, bad captions, duplicate keys "
                         "and broken shards go to the decisions ledger.", RAW_POOL_COLUMNS),
)
@one_writer
def raw_pool(context: AssetExecutionContext, config: RawPoolConfig, paths: TadsPaths) -> MaterializeResult:
    if paths.pool == "demo":
        context.log.info(f"raw_pool: demo pool of {paths.demo_samples} samples under {paths.catalog.demo_dir} "
                         "(generated on first use, about 20 s for 10,000)")
    spec = paths.pool_spec()
    shards = formats.list_shards(spec)
    context.log.info(f"raw_pool: reading {len(shards)} shard(s) of {spec}")
    result = ingest.ingest_pool(shards, paths.catalog.raw_pool.dir, paths.ledger(), source=str(spec),
                                limits=params_of(config, IngestLimits), rows_per_file=config.rows_per_file,
                                progress=context.log.info)
    registered = register_parts(context, [p.stem for p in paths.catalog.raw_pool.parts()])
    return MaterializeResult(metadata={**_raw_pool_metadata(spec, result, paths.catalog.raw_pool), **registered})


def _raw_pool_metadata(spec, result: ingest.IngestResult, raw_pool: RawPool) -> dict:
    sizes = raw_pool.scan().select("width", "height", "format", pl.col("bytes").bin.size().alias("n_bytes")).collect()
    return {
            "source": MetadataValue.text(str(spec)),
            "path": MetadataValue.path(str(result.out_dir)),
            "run_id": MetadataValue.text(result.run_id),
            "n_in": MetadataValue.int(result.n_seen),
            "n_out": MetadataValue.int(result.n_kept),
            "n_kept": MetadataValue.int(result.n_kept),
            "n_dropped": MetadataValue.int(result.n_dropped),
            "dagster/column_schema": column_schema(raw_pool.scan().collect_schema(), RAW_POOL_COLUMNS),
            "dagster/row_count": MetadataValue.int(result.n_kept),
            "dropped_by_reason": table([{"reason": r, "samples": n} for r, n in result.reasons.items()]),
            "dropped_examples": table(result.examples, ["uid", "reason", "detail"]),
            "per_shard": table(
                [{"shard": s.shard, "seen": s.n_seen, "kept": s.n_kept, "dropped": sum(s.reasons.values()),
                  "bytes": s.coverage.get("bytes_total"),
                  "unreadable bytes": sum(r["end"] - r["start"] for r in s.coverage.get("unreadable", []))}
                 for s in result.shards]),
            "image_formats": table(sizes.group_by("format").len("samples").sort("samples", descending=True).to_dicts()),
            "image_sizes": MetadataValue.md(histogram_markdown(
                {"width": sizes["width"].to_numpy(), "height": sizes["height"].to_numpy()},
                "image width and height", "pixels")),
            "median_image_kib": rounded(float(sizes["n_bytes"].median() or 0) / 1024, 1),
            "seconds": MetadataValue.float(round(result.seconds, 2)),
            "samples_per_s": MetadataValue.float(round(result.samples_per_s, 1)),
            "shards_resumed": MetadataValue.int(result.shards_resumed),
        }


FROZEN_COLUMNS = {"uid": "sample id", "image_feat": "EfficientNet-Lite0 features of the image",
                  "flip_feat": "the same of the mirrored image", "text_feat": "all-MiniLM-L6-v2 features of the caption",
                  "part_fingerprint": "the raw_pool part's content hash (cache key)"}
ClipEncoderConfig = config_from(
    "ClipEncoderConfig", "Training of the builtin encoder's projection heads (`encoder.HeadsConfig`; ignored for "
    "open_clip encoders). Few epochs: more make the heads memorise the pool's misaligned pairs.",
    HeadsConfig, (HeldoutCleaning, {"prefix": "heldout_clean_", "exclude": ("seed", "partners")}),
    extra={"val_fraction": (float, 0.05)})


@asset(
    group_name="pool", deps=[raw_pool], partitions_def=raw_pool_parts, kinds={"pytorch", "parquet"},
    description=describe(
        "Scale-out form of the builtin encoder's per-sample work: the frozen EfficientNet-Lite0 and MiniLM features "
        "of one raw_pool part (partition = part), into the cache clip_encoder and pool_embeddings read "
        "(TADS_HOME/cache/frozen_features/PART.parquet). A backfill over the parts fans out over processes or "
        "machines. Nothing to do for an open_clip encoder (TADS_ENCODER).", FROZEN_COLUMNS),
)
@one_writer
def frozen_features(context: AssetExecutionContext, paths: TadsPaths, encoder: ClipEncoder,
                    device: TorchDevice) -> MaterializeResult:
    cat = paths.catalog
    part = cat.raw_pool.part(context.partition_key)
    if encoder.parsed()[0] != "builtin":
        return MaterializeResult(metadata={"part": MetadataValue.text(context.partition_key), "n_in": 0, "n_out": 0,
                                           "seconds": 0.0,
                                           "skipped": MetadataValue.text(f"encoder {encoder.spec} has no frozen towers")})
    t0 = time.perf_counter()
    towers = encoder.towers(device.resolve(), cat.raw_pool)
    rows, computed = embeddings.frozen_features_for_part(part, cat.frozen_cache_dir, towers, encoder.tower_batch_size,
                                                         context.log.info)
    seconds = time.perf_counter() - t0
    return MaterializeResult(metadata={
        "part": MetadataValue.text(context.partition_key), "n_in": rows, "n_out": rows, "computed": computed,
        "dagster/row_count": rows,
        "dagster/column_schema": column_schema(pl.read_parquet_schema(cat.frozen_features.part(part.name)), FROZEN_COLUMNS),
        "path": MetadataValue.path(str(cat.frozen_features.part(part.name))), "seconds": rounded(seconds, 2),
        "samples_per_s": rounded(rows / max(seconds, 1e-9), 1),
    })


@asset(
    group_name="pool", deps=[frozen_features], kinds={"pytorch"},
    description="The encoder behind every embedding: `builtin` (frozen EfficientNet-Lite0 + MiniLM towers with "
    "projection heads trained on the pool's pairs, InfoNCE) or the user's open_clip weights (TADS_ENCODER).",
)
@one_writer
def clip_encoder(context: AssetExecutionContext, config: ClipEncoderConfig, paths: TadsPaths, encoder: ClipEncoder,
                 device: TorchDevice, raw_pool: RawPool) -> MaterializeResult:
    t0, dev, cat = time.perf_counter(), device.resolve(), paths.catalog
    kind, model_name, weights = encoder.parsed()
    out = cat.clip_encoder.dir
    if kind == "open_clip":
        dim = int(encoder.open_clip(dev).encode_texts(["a photo"]).shape[1])
        info = write_encoder_info(out, {"kind": kind, "model": model_name, "weights": weights, "embed_dim": dim})
        return MaterializeResult(metadata={"encoder": MetadataValue.text(encoder.spec), "embed_dim": dim,
                                           "n_in": 0, "n_out": 0, "seconds": round(time.perf_counter() - t0, 2),
                                           "encoder_id": MetadataValue.text(info["encoder_id"]), "device": dev})
    towers = encoder.towers(dev, raw_pool)
    context.log.info(f"clip_encoder: image tower input {towers.image_size} px"
                     + (" (matched to the pool's image sizes and detail)" if not encoder.image_size else " (TADS_IMAGE_SIDE)"))
    stats = embeddings.cache_frozen_features(raw_pool.dir, cat.frozen_cache_dir, towers, encoder.tower_batch_size,
                                             progress=context.log.info)
    context.log.info(f"clip_encoder: frozen features {stats}")
    frozen = embeddings.load_frozen_features(cat.frozen_cache_dir)
    img, txt = embeddings.arrays(frozen, "image_feat", "text_feat")
    heads_config = params_of(config, HeadsConfig)
    heads, report = fit_builtin_encoder(img, txt, heads_config, config.val_fraction, dev, progress=context.log.info)
    cleaning = params_of(config, HeldoutCleaning, prefix="heldout_clean_", seed=heads_config.seed)
    heldout, cleaning_report = fit_heldout_heads(img, txt, fold_of(frozen["uid"].to_list()), heads_config, dev,
                                                 context.log.info, cleaning)
    # heads, held-out heads and encoder.json replace the previous encoder together (never a mix of two runs)
    with staged_dir(out, context.run_id) as staging:
        save_heads(heads, staging / "heads.safetensors")
        heldout_files = [f"heads-heldout-{f}.safetensors" for f in range(len(heldout))]
        for h, name in zip(heldout, heldout_files):
            save_heads(h, staging / name)
        info = write_encoder_info(staging, {"kind": "builtin", "embed_dim": config.embed_dim,
                                            "heads": "heads.safetensors", "heldout_heads": heldout_files,
                                            "image_size": towers.image_size})
    return MaterializeResult(metadata={
        "encoder": MetadataValue.text("builtin: EfficientNet-Lite0 + all-MiniLM-L6-v2, trained heads"),
        "encoder_id": MetadataValue.text(info["encoder_id"]), "path": MetadataValue.path(str(out)),
        "n_in": frozen.height, "n_out": frozen.height, "seconds": round(time.perf_counter() - t0, 2),
        "pairs_train": report.n_train, "pairs_val": report.n_val,
        "val_i2t_recall_at_1": rounded(report.val_i2t_r1), "val_t2i_recall_at_1": rounded(report.val_t2i_r1),
        "val_chance_recall_at_1": rounded(report.chance_r1, 5), "final_infonce": rounded(report.loss_per_epoch[-1]),
        "loss_curve": MetadataValue.md(line_plot_markdown(report.loss_per_epoch, "InfoNCE per epoch", "epoch", "loss")),
        "frozen_parts_computed": stats["parts_computed"], "frozen_parts_cached": stats["parts_cached"],
        "frozen_feature_seconds": rounded(stats["seconds"], 2), "image_tower_side_px": towers.image_size,
        "frozen_rows_per_s": (rounded(stats["rows"] / max(stats["seconds"], 1e-9), 1) if stats["parts_computed"]
                              else MetadataValue.text("every part cached")),
        "head_training_seconds": rounded(report.seconds, 2), "device": MetadataValue.text(dev),
        "heldout_cleaning": table(cleaning_report) if cleaning_report else MetadataValue.text("off (heldout_clean_rounds 0)"),
    })


class PoolEmbeddingsConfig(Config):
    """`recompute`: rewrite every part, even those the table already holds for this encoder and pool content
    (after the table was damaged, e.g. deduped_pool ledgered non_finite_embedding rows)."""

    recompute: bool = False


EMBEDDING_COLUMNS = {"uid": "sample id", "part": "the raw_pool part", "encoder_id": "the encoder that wrote the row",
                     "part_fingerprint": "the raw_pool part's content hash (resume key)", "image_vec": "z_I, L2-normalised",
                     "text_vec": "z_T, L2-normalised", "flipped_image_vec": "z_I of the mirrored image",
                     "heldout_pair_cos": "cos(z_I, z_T) by a cross-fitted head that never trained on the pair"}


@asset(
    group_name="pool", kinds={"lancedb"},
    description=describe("LanceDB table `embeddings`, written per raw_pool part so an interrupted run resumes "
                         "where it stopped.", EMBEDDING_COLUMNS),
)
@one_writer
def pool_embeddings(context: AssetExecutionContext, config: PoolEmbeddingsConfig, paths: TadsPaths,
                    encoder: ClipEncoder, device: TorchDevice, raw_pool: RawPool,
                    clip_encoder: ClipEncoderDir) -> MaterializeResult:
    dev, out = device.resolve(), paths.catalog.pool_embeddings
    info = clip_encoder.info()
    embed_part = (embeddings.builtin_part_embedder(clip_encoder.file(info["heads"]), paths.catalog.frozen_cache_dir, dev,
                                                   [clip_encoder.file(f) for f in info.get("heldout_heads", [])])
                  if info["kind"] == "builtin" else embeddings.model_part_embedder(encoder.open_clip(dev)))
    result = embeddings.embed_pool(raw_pool.dir, out.connect(), info["encoder_id"], embed_part,
                                   progress=context.log.info, recompute=config.recompute)
    return MaterializeResult(metadata={
        "table": MetadataValue.text(out.label), "n_in": result["rows"], "n_out": result["rows"], "rows": result["rows"],
        "dagster/row_count": result["rows"], "embed_dim": result["dim"],
        "dagster/column_schema": column_schema(out.connect().open_table(out.name).schema, EMBEDDING_COLUMNS),
        "parts_computed": result["parts_computed"], "parts_resumed": result["parts_skipped"],
        "encoder_id": MetadataValue.text(info["encoder_id"]), "seconds": rounded(result["seconds"], 2),
        "image_text_cosine": MetadataValue.md(histogram_markdown(
            {"matched pair cos(z_I, z_T)": result["pair_cosine"]}, "image-text cosine of each pair", "cosine")),
        "flip_consistency_median": rounded(np.median(result["flip_cosine"])),
    })


DedupConfig = config_from("DedupConfig", "§3.1 thresholds (`tads_assets.core.method.dedup.DedupParams`; "
                          "benchmarks/dedup_calibration.py).", DedupParams)
DEDUP_COLUMNS = {"uid": "sample id", "cluster": "its semantic cluster (eq. 2)",
                 "alignment": "cos(z_I, z_T) of the pair"}


@asset(
    group_name="pool", kinds={"parquet", "lancedb"},
    description=describe("§3.1 three-layer deduplication: metadata (sha256/url, eq. 1), semantic (MiniBatch "
                         "K-Means, eq. 2), quality-guided (edit distance, text cosine or tiny-image cosine within a "
                         "cluster among k nearest neighbours, and tiny-image cosine among each sample's k nearest by image "
                         "embedding in any cluster: exact below 50,000 rows, a LanceDB index above; eq. 3-6); every removed sample in the ledger with the one it "
                         "duplicates.", DEDUP_COLUMNS),
)
@one_writer
def deduped_pool(context: AssetExecutionContext, config: DedupConfig, paths: TadsPaths, raw_pool: RawPool,
                 pool_embeddings: PoolEmbeddings) -> MaterializeResult:
    t0, out = time.perf_counter(), paths.catalog.deduped_pool
    pool, (image_vec, text_vec) = embeddings.pool_with_vectors(raw_pool.dir, pool_embeddings.connect())
    finite, bad_vectors = embeddings.non_finite_rows(pool["uid"].to_list(), image_vec=image_vec, text_vec=text_vec)
    if bad_vectors.height:
        context.log.warning(f"deduped_pool: {bad_vectors.height} sample(s) have NaN/inf vectors (e.g. "
                            f"{bad_vectors['uid'][0]}); ledgered as {embeddings.NON_FINITE_EMBEDDING}")
        if not finite.any():
            raise ValueError(f"every vector in LanceDB table {embeddings.EMBEDDINGS_TABLE} holds NaN or inf: the "
                             "encoder is broken; materialize clip_encoder, then pool_embeddings with recompute: true")
        pool, image_vec, text_vec = pool.filter(pl.Series(finite)), image_vec[finite], text_vec[finite]
    captions = pool["caption"].to_list()
    outcome = dedup.deduplicate(pool["sha256"].to_numpy(), pool["url"].to_numpy(), captions, pool["width"].to_numpy(),
                                pool["height"].to_numpy(), image_vec, text_vec, params_of(config, DedupParams),
                                progress=context.log.info, tiny_vec=dedup.tiny_image_vectors(pool["tiny"].to_list()))
    kept, drops = dedup.outcome_tables(pool["uid"].to_numpy(), captions, outcome, np.sum(image_vec * text_vec, axis=1))
    drops = pl.concat([drops, bad_vectors], how="diagonal_relaxed")
    result = write_stage_output(out.dir, paths.ledger(), "deduped_pool", kept, drops)
    return MaterializeResult(metadata=_dedup_metadata(pool, kept, drops, outcome, bad_vectors, result, out,
                                                      time.perf_counter() - t0))


def _calibration_metadata(quality: dedup.LayerResult) -> dict:
    """The quality layer's rule and thresholds, and (when calibrated) the calibration curves: per threshold, the
    estimated false-removal rate over the pool's own null pairs (`dedup.calibrate_thresholds`)."""
    cal = quality.extra.get("calibration")
    meta = {"redundancy_rule": MetadataValue.text(quality.extra.get("mode", "")),
            **{t: rounded(quality.extra[t]) for t in ("tau_vis", "tau_img", "tau_sem") if t in quality.extra},
            "thresholds_calibrated": cal is not None}
    if cal is None:
        return meta
    meta.update({"calibration_null_pairs": cal["null_pairs"], "calibration_null_samples": cal["null_rows"],
                 "calibration_visual_null_pairs": cal.get("visual_null_pairs", 0),
                 "max_false_removal": cal["max_false_removal"], "calibration_attainable": cal["attainable"],
                 "calibration_note": MetadataValue.text(cal.get("note", "none"))})
    if "estimated_false_removal" in cal:
        meta["estimated_false_removal"] = rounded(cal["estimated_false_removal"])
    curves = cal["curves"]
    if curves:
        meta["calibration_curve"] = MetadataValue.md(multi_line_plot_markdown(
            {name: curve for name, curve in curves.items()}, "estimated false-removal rate on null pairs",
            "threshold", "share of samples flagged", reference=cal["max_false_removal"]))
        meta["calibration_table"] = table([{"threshold": name, "tau": t, "estimated_false_removal": round(e, 4),
                                            "chosen": t == cal[name]} for name, curve in curves.items()
                                           for t, e in curve])
    return meta


def _dedup_metadata(pool, kept, drops, outcome, bad_vectors, result, out, seconds: float) -> dict:
    sizes = kept.group_by("cluster").len()["len"].to_numpy()
    per_layer = [{"layer": r.name, "in": int(len(r.removed)), "removed": int(r.removed.sum()),
                  "out": int(len(r.removed) - r.removed.sum()), "seconds": round(r.seconds, 2),
                  **{k: v for k, v in r.extra.items() if k != "calibration"}}
                 for r in outcome.layers]
    examples = drops.join(pool.select("uid", "caption"), left_on="duplicate_of", right_on="uid", suffix="_kept")
    return {
        "path": MetadataValue.path(str(out.dir)), "dagster/column_schema": column_schema(kept, DEDUP_COLUMNS),
        "dagster/row_count": kept.height, "n_in": pool.height + bad_vectors.height, "n_out": kept.height,
        "n_kept": kept.height, "n_dropped": drops.height, "non_finite_embeddings": bad_vectors.height,
        "seconds": round(seconds, 2), "per_layer": table(per_layer),
        "removed_examples": table([{"layer": r["reason"], "removed": r["uid"], "kept": r["duplicate_of"],
                                    "detail": r["detail"]} for r in examples.group_by("reason").head(5).iter_rows(named=True)]),
        "cluster_sizes": MetadataValue.md(histogram_markdown({"kept samples per cluster": sizes},
                                                             "cluster sizes after dedup", "samples")),
        "run_id": MetadataValue.text(result["run_id"]), "removed_share": rounded(drops.height / max(pool.height, 1)),
        **_calibration_metadata(outcome.layers[-1]),
    }
