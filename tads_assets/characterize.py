"""characterize group (DESIGN.md), §3.2.1 intrinsic quality: feature_table, weak_labels, quality_scores.
Assets load, call core, write, report."""

import dataclasses
import json
import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, DataVersion, MaterializeResult, MetadataValue, asset

from resources import ClipEncoder, LanceStore, LangId, Ocr, TadsPaths, TorchDevice, one_writer
from tads_assets.core.method import diversity, operators, quality_model, relevance, weak_supervision
from tads_assets.core.io import embeddings
from tads_assets.core.harness.benchmark import check_eval_set, read_eval_set
from tads_assets.core.vectors import kmeans_clusters
from tads_assets.core.io.feature_table import (FeatureInputs, build_feature_table, feature_inputs, part_features,
                                            reference_images, reference_rows)
from tads_assets.core.method.operators import FEATURE_COLUMNS, OperatorParams, feature_matrix
from tads_assets.core.method.quality_model import QualityParams
from tads_assets.core.report import grouped_bars_markdown, histogram_markdown, line_plot_markdown, markdown_table
from tads_assets.core.sanitize import one_line
from tads_assets.core.atomic import atomic_path, write_json_atomic, write_parquet_atomic
from tads_assets.core.io.tasks import Task, TaskSetError, load_task_set, task_set_hash
from tads_assets.core.method.weak_supervision import WeakParams
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool_parts, scored_samples_grid

FEATURE_FILE = "feature_table.parquet"
RATER_FILE = "concreteness.safetensors"
PARAMS_FILE = "operator_params.json"
TASK_SET_FILE = "task_set.json"
DIVERSITY_FILE = "cluster_diversity.parquet"


class FeatureTableConfig(Config):
    """Operator settings; defaults from `tads_assets.core.method.operators.OperatorParams`."""

    ocr_min_text_likelihood: float = OperatorParams.ocr_min_text_likelihood
    max_phrases: int = OperatorParams.max_phrases
    grounding_percentile: float = OperatorParams.grounding_percentile
    reference_images: int = OperatorParams.reference_images
    seed: int = OperatorParams.seed


def _kept_uids(paths: TadsPaths) -> list[str]:
    return pl.read_parquet(paths.parquet_dir("deduped_pool") / "deduped_pool.parquet", columns=["uid"])["uid"].to_list()


def _kept_vectors(paths: TadsPaths, lance: LanceStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    """uids of the deduplicated pool with their image and text vectors, in deduped_pool's order."""
    uids = _kept_uids(paths)
    vecs = pl.DataFrame({"uid": uids}).join(embeddings.read_embeddings(lance.connect(), ("uid", "image_vec", "text_vec")),
                                            on="uid", how="left", maintain_order="left")
    return uids, *embeddings.arrays(vecs, "image_vec", "text_vec")


def _read_features(paths: TadsPaths) -> pl.DataFrame:
    return pl.read_parquet(paths.parquet_dir("feature_table") / FEATURE_FILE)


def _feature_inputs(context: AssetExecutionContext, config: FeatureTableConfig, paths: TadsPaths, lance: LanceStore,
                    encoder: ClipEncoder, device: TorchDevice, ocr: Ocr, langid: LangId,
                    part: str | None = None) -> tuple[FeatureInputs, OperatorParams]:
    """Everything the operators read besides a part's own rows (the same for feature_table and operator_features,
    so both compute the same cache key and values for a part). With `part`, only that part's vectors and the
    reference images are read, not the whole table."""
    lang_id = langid.load()
    context.log.info(f"{context.asset_key.to_user_string()}: Tesseract {ocr.version()}, fastText model {lang_id.path}")
    params = OperatorParams(**config.model_dump(), ocr_min_confidence=ocr.min_confidence, ocr_workers=ocr.workers,
                            ocr_batch=ocr.batch)
    enc, info = encoder.load(paths.models_dir, device.resolve())
    db, columns, kept = lance.connect(), ("uid", "image_vec", "text_vec", "flipped_image_vec", "heldout_pair_cos"), _kept_uids(paths)
    reference = None
    if part is None:
        vectors = embeddings.read_embeddings(db, columns)
    else:  # the same reference rows as the whole-pool run: the kept uids in table order, sampled alike
        kept_set = set(kept)
        order = [u for u in embeddings.read_embeddings(db, ("uid",))["uid"].to_list() if u in kept_set]
        ref_uids = [order[i] for i in reference_rows(len(order), params.reference_images, params.seed)]
        ref = embeddings.read_embeddings(db, ("uid", "image_vec"), uids=ref_uids)
        (reference,) = embeddings.arrays(pl.DataFrame({"uid": ref_uids}).join(ref, on="uid", maintain_order="left"),
                                         "image_vec")
        vectors = embeddings.read_embeddings(db, columns, part=part)
        kept = [u for u in vectors["uid"].to_list() if u in kept_set]
    inputs = feature_inputs(kept, vectors, paths.root / "cache" / "feature_parts", info["encoder_id"],
                            lang_id, enc.encode_texts, params, reference=reference)
    return inputs, params


@asset(
    group_name="characterize",
    deps=[deduped_pool, pool_embeddings, clip_encoder],
    partitions_def=raw_pool_parts,
    kinds={"parquet", "tesseract", "fasttext"},
    description="Scale-out form of feature_table's per-sample work: the §3.2.1 operators over one raw_pool part "
    "(partition = part), written to feature_table's part cache. A backfill over the parts fans out over "
    "processes or machines; feature_table then only reads them back and fits the corpus-level statistics.",
)
@one_writer
def operator_features(context: AssetExecutionContext, config: FeatureTableConfig, paths: TadsPaths, lance: LanceStore,
                      encoder: ClipEncoder, device: TorchDevice, ocr: Ocr, langid: LangId) -> MaterializeResult:
    part = paths.parquet_dir("raw_pool") / f"{context.partition_key}.parquet"
    if not part.exists():
        raise FileNotFoundError(f"raw_pool has no part {context.partition_key} (it was re-ingested since the "
                                "partition was registered): materialize raw_pool, then the current partitions")
    inputs, _ = _feature_inputs(context, config, paths, lance, encoder, device, ocr, langid, part=part.stem)
    t0 = time.perf_counter()
    result = part_features(part, inputs, context.log.info)
    return MaterializeResult(metadata={
        "part": MetadataValue.text(context.partition_key), "n_in": result.frame.height, "n_out": result.frame.height,
        "computed": result.computed, "ocr_run": result.ocr_run,
        "seconds": MetadataValue.float(round(time.perf_counter() - t0, 2)),
        "seconds_by_operator_group": MetadataValue.md(markdown_table(
            [{"group": k, "seconds": round(v, 2)} for k, v in result.seconds.items()]) if result.computed else
            "read from the cache (nothing it depends on changed)"),
    })


@asset(
    group_name="characterize",
    deps=[deduped_pool, pool_embeddings, clip_encoder, operator_features],
    kinds={"parquet", "tesseract", "fasttext"},
    description="§3.2.1 operators over the deduplicated pool, one column each: resolution, aspect ratio, "
    "Laplacian blur, OCR text-region ratio and text (Tesseract, behind a cheap text pre-filter), fastText "
    "language, caption length and concreteness, CLIP similarity, flipped-image consistency, grounding, "
    "caption information gain over the OCR text. Computed per raw_pool part, resumable; parts an "
    "operator_features backfill computed are read back.",
)
@one_writer
def feature_table(context: AssetExecutionContext, config: FeatureTableConfig, paths: TadsPaths, lance: LanceStore,
                  encoder: ClipEncoder, device: TorchDevice, ocr: Ocr, langid: LangId) -> MaterializeResult:
    inputs, params = _feature_inputs(context, config, paths, lance, encoder, device, ocr, langid)
    run = build_feature_table(paths.parquet_dir("raw_pool"), inputs, progress=context.log.info)
    out = paths.parquet_dir("feature_table")
    write_parquet_atomic(run.table, out / FEATURE_FILE)
    from safetensors.numpy import save_file

    with atomic_path(paths.models_dir / "feature_table" / RATER_FILE) as tmp:
        save_file(run.rater.to_tensors(), str(tmp))
    # quality_scores recomputes operators for its synthetic pairs with exactly these settings
    write_json_atomic(dataclasses.asdict(params), paths.models_dir / "feature_table" / PARAMS_FILE)
    t = run.table
    langs = t.group_by("lang").len("samples").sort("samples", descending=True).head(10)
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(out / FEATURE_FILE)),
        "n_in": len(inputs.kept), "n_out": t.height, "n_dropped": 0, "n_features": len(FEATURE_COLUMNS),
        "seconds": run.seconds["total"],
        "parts_computed": run.parts_computed, "parts_resumed": run.parts_cached,
        "ocr_run": run.ocr_run, "ocr_skipped_by_prefilter": run.ocr_skipped,
        "seconds_by_operator_group": MetadataValue.md(markdown_table([{"group": k, "seconds": v} for k, v in run.seconds.items()])),
        "samples_per_s": MetadataValue.float(round(t.height / max(run.seconds["total"], 1e-9), 1)),
        "languages": MetadataValue.md(markdown_table(langs.to_dicts())),
        "feature_summary": MetadataValue.md(markdown_table([
            {"feature": c, "p5": float(t[c].cast(float).quantile(0.05)), "median": float(t[c].cast(float).median()),
             "p95": float(t[c].cast(float).quantile(0.95))} for c in FEATURE_COLUMNS])),
        "distributions": MetadataValue.md(histogram_markdown(
            {c: t[c].cast(float).to_numpy() for c in ("clip_similarity", "concreteness", "flip_consistency",
                                                      "grounding_confidence")}, "cross-modal and text features", "value")),
        "blur_and_text": MetadataValue.md(histogram_markdown(
            {"log1p Laplacian variance": np.log1p(t["laplacian_var"].to_numpy()),
             "OCR pre-filter text likelihood": t["text_likelihood"].to_numpy()}, "image features", "value")),
    })


class WeakLabelsConfig(Config):
    """Labelling-function and LabelModel settings; defaults from `weak_supervision.WeakParams`."""

    outlier_sigmas: float = WeakParams.outlier_sigmas
    n_epochs: int = WeakParams.n_epochs
    min_epochs: int = WeakParams.min_epochs
    lr: float = WeakParams.lr
    l2: float = WeakParams.l2
    prec_init: float = WeakParams.prec_init
    seed: int = WeakParams.seed


@asset(
    group_name="characterize",
    deps=[feature_table],
    kinds={"parquet", "snorkel"},
    description="Labelling functions on feature thresholds read off the pool's distributions, combined by a "
    "Snorkel LabelModel into weak labels ŷ_weak = P(good).",
)
@one_writer
def weak_labels(context: AssetExecutionContext, config: WeakLabelsConfig, paths: TadsPaths) -> MaterializeResult:
    t0 = time.perf_counter()
    features = _read_features(paths)
    params = WeakParams(**config.model_dump())
    lfs = weak_supervision.labelling_functions(features, params)
    L = weak_supervision.apply_lfs(features, lfs)
    fit = weak_supervision.fit_label_model(L, lfs, params)
    context.log.info(f"weak_labels: {len(lfs)} LFs over {features.height} samples, mean ŷ_weak {fit.probs.mean():.3f}")
    out = pl.DataFrame({"uid": features["uid"], "y_weak": fit.probs}).hstack(
        pl.DataFrame({lf.name: L[:, j].astype(np.int8) for j, lf in enumerate(lfs)}))
    write_parquet_atomic(out, paths.parquet_dir("weak_labels") / "weak_labels.parquet")
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(paths.parquet_dir("weak_labels") / "weak_labels.parquet")),
        "n_in": features.height, "n_out": out.height, "n_dropped": 0, "n_lfs": len(lfs),
        "seconds": round(time.perf_counter() - t0, 2),
        "label_model_epochs": fit.epochs,
        "lf_summary": MetadataValue.md(markdown_table(fit.lf_summary.to_dicts())),
        "lf_summary_plot": MetadataValue.md(grouped_bars_markdown(
            fit.lf_summary["lf"].to_list(), {c: fit.lf_summary[c].to_list() for c in
                                             ("coverage", "overlaps", "conflicts", "learned_accuracy")},
            "labelling functions: coverage, overlaps, conflicts, learned accuracy", "share / accuracy")),
        "abstain_all_share": MetadataValue.float(round(float((L == weak_supervision.ABSTAIN).all(axis=1).mean()), 4)),
        "y_weak": MetadataValue.md(histogram_markdown({"ŷ_weak": fit.probs}, "weak label distribution", "P(good)")),
    })


class QualityScoresConfig(Config):
    """q_φ and D_true settings; defaults from `quality_model.QualityParams`."""

    hidden_dim: int = QualityParams.hidden_dim
    epochs: int = QualityParams.epochs
    batch_size: int = QualityParams.batch_size
    lr: float = QualityParams.lr
    lambda_sup: float = QualityParams.lambda_sup
    lambda_weak: float = QualityParams.lambda_weak
    true_positives: int = QualityParams.true_positives
    positive_quantile: float = QualityParams.positive_quantile
    shuffle_share: float = QualityParams.shuffle_share
    seed: int = QualityParams.seed


@asset(
    group_name="characterize",
    deps=[feature_table, weak_labels],
    kinds={"parquet", "pytorch"},
    description="MLP quality predictor q_φ ∈ [0, 1] trained with eq. 7-9: BCE on D_true (high-ŷ_weak pairs and "
    "synthetic negatives by caption shuffling and mismatch injection) plus λ-weighted MSE to ŷ_weak.",
)
@one_writer
def quality_scores(context: AssetExecutionContext, config: QualityScoresConfig, paths: TadsPaths, lance: LanceStore,
                   encoder: ClipEncoder, device: TorchDevice, langid: LangId) -> MaterializeResult:
    t0 = time.perf_counter()
    dev = device.resolve()
    features = _read_features(paths)
    weak = pl.read_parquet(paths.parquet_dir("weak_labels") / "weak_labels.parquet", columns=["uid", "y_weak"])
    features = features.join(weak, on="uid", how="left", maintain_order="left")
    if features["y_weak"].null_count():
        raise ValueError("weak_labels does not cover the feature table: materialize weak_labels again")
    clusters = features.join(pl.read_parquet(paths.parquet_dir("deduped_pool") / "deduped_pool.parquet",
                                             columns=["uid", "cluster"]), on="uid", how="left", maintain_order="left")
    vecs = features.select("uid").join(embeddings.read_embeddings(lance.connect()), on="uid", how="left",
                                       maintain_order="left")
    img, flip = embeddings.arrays(vecs, "image_vec", "flipped_image_vec")
    params = QualityParams(**config.model_dump())
    params_path = paths.models_dir / "feature_table" / PARAMS_FILE
    if not params_path.exists():
        raise FileNotFoundError(f"{params_path} missing (written by an older feature_table): materialize feature_table again")
    op_params = OperatorParams(**json.loads(params_path.read_text()))
    captions = _captions(paths, features)
    true_set = quality_model.build_true_set(features["y_weak"].to_numpy(), captions,
                                            clusters["cluster"].fill_null(-1).to_numpy(), params)
    enc, _ = encoder.load(paths.models_dir, dev)
    from safetensors.numpy import load_file

    rater = operators.ConcretenessRater.from_tensors(load_file(str(paths.models_dir / "feature_table" / RATER_FILE)))
    dominant = operators.dominant_language(features["lang"].to_list())
    neg = true_set.labels == 0
    neg_rows = true_set.rows[neg]
    neg_captions = [c for c, n in zip(true_set.captions, neg) if n]
    neg_feats = operators.recombined_features(
        features, neg_rows, neg_captions, img, flip,
        reference_images(img, op_params.reference_images, op_params.seed), langid.load(), enc.encode_texts, rater,
        dominant, op_params, _heldout_cos(paths, dev, features["uid"].gather(neg_rows).to_list(), neg_captions, enc))
    x_pool = feature_matrix(features)
    x_true = np.concatenate([x_pool[true_set.rows[~neg]], feature_matrix(neg_feats)])
    y_true = np.concatenate([true_set.labels[~neg], true_set.labels[neg]])
    fit = quality_model.train_quality_model(x_pool, features["y_weak"].to_numpy(), x_true, y_true, params, dev,
                                            progress=context.log.info)
    q = quality_model.predict_quality(fit.model, x_pool)
    ckpt = paths.models_dir / "quality_scores" / "q_phi.safetensors"
    quality_model.save_quality_model(fit.model, ckpt, FEATURE_COLUMNS)
    out = pl.DataFrame({"uid": features["uid"], "quality": q.astype(np.float32)})
    write_parquet_atomic(out, paths.parquet_dir("quality_scores") / "quality_scores.parquet")
    q_true = quality_model.predict_quality(fit.model, x_true)
    ranked = out.with_columns(caption=pl.Series(captions)).sort("quality")
    how = np.array(true_set.how)[np.r_[np.flatnonzero(~neg), np.flatnonzero(neg)]]
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(paths.parquet_dir("quality_scores") / "quality_scores.parquet")),
        "checkpoint": MetadataValue.path(str(ckpt)),
        "n_in": features.height, "n_out": out.height, "n_dropped": 0, "seconds": round(time.perf_counter() - t0, 2),
        "d_true": MetadataValue.md(markdown_table([
            {"examples": k, "count": int((how == k).sum()), "mean q_phi": float(q_true[how == k].mean())}
            for k in ("positive", "shuffled", "mismatch_injected") if (how == k).any()])),
        "loss_curve": MetadataValue.md(line_plot_markdown(fit.loss_per_epoch, "eq. 9 loss per epoch", "epoch", "loss")),
        "final_bce_d_true": MetadataValue.float(round(fit.sup_per_epoch[-1], 4)),
        "final_mse_weak": MetadataValue.float(round(fit.weak_per_epoch[-1], 4)),
        "quality": MetadataValue.md(histogram_markdown({"q_phi": q}, "quality score distribution", "q")),
        "samples_by_quality": MetadataValue.md(scored_samples_grid(paths, out["uid"].to_list(), q, "q",
                                                                   "highest and lowest quality q_φ")),
        "lowest_scored": MetadataValue.md(markdown_table(ranked.head(8).select("uid", "quality", "caption").to_dicts())),
        "highest_scored": MetadataValue.md(markdown_table(ranked.tail(8).select("uid", "quality", "caption").to_dicts())),
        "training_seconds": MetadataValue.float(round(fit.seconds, 2)),
        "params": MetadataValue.json(dataclasses.asdict(params)),
    })


def _heldout_cos(paths: TadsPaths, device: str, uids: list[str], captions: list[str], enc) -> np.ndarray | None:
    """The new pairs' CLIP similarity on the feature table's scale: the builtin encoder's cross-fitted heads
    (None for an open_clip encoder, whose own cosine is already held out)."""
    from tads_assets.core.method.encoder import heldout_cosine_for_new_captions, load_heads, read_encoder_info

    info = read_encoder_info(paths.models_dir / "clip_encoder")
    if info["kind"] != "builtin" or not info.get("heldout_heads"):
        return None
    heads = [load_heads(paths.models_dir / "clip_encoder" / f, device) for f in info["heldout_heads"]]
    frozen = pl.DataFrame({"uid": uids}).join(embeddings.load_frozen_features(paths.frozen_cache_dir), on="uid",
                                             how="left", maintain_order="left")
    (image_feats,) = embeddings.arrays(frozen, "image_feat")
    return heldout_cosine_for_new_captions(uids, image_feats, captions, heads, enc.towers)


def _captions(paths: TadsPaths, features: pl.DataFrame) -> list[str]:
    from tads_assets.core.io.ingest import scan_raw_pool

    caps = scan_raw_pool(paths.parquet_dir("raw_pool")).select("uid", "caption").collect()
    return features.select("uid").join(caps, on="uid", how="left", maintain_order="left")["caption"].to_list()


# ------------------------------------------------------------------------- §3.2.2-3.2.3: tasks, relevance, diversity


@asset(
    group_name="characterize",
    kinds={"yaml"},
    description="The downstream task set (TADS_TASKS, default the demo's), parsed and validated: a bad file fails "
    "naming the task and field. Its data version is the file's sha256, so a changed task set makes every "
    "asset downstream of it stale (and only those).",
)
@one_writer
def task_set(context: AssetExecutionContext, paths: TadsPaths) -> MaterializeResult:
    t0 = time.perf_counter()
    path = paths.tasks_path()
    tasks = load_task_set(path)
    sets, hist_rows = [], {}  # every held-out set opened and checked now, so a bad one fails here naming its task
    for t in tasks:
        for split in ("validation", "test"):
            try:
                es = check_eval_set(t, split)
            except (ValueError, OSError) as exc:  # OSError: a shard that cannot be opened (permissions, a FIFO)
                raise TaskSetError(f"{path}: task {one_line(t.name, 120)!r}.{split}: {one_line(exc, 1000)}") from None
            row = {"task": t.name, "split": split, "items": len(es.keys), "labels": "(captions)"}
            if t.kind == "classification":
                hist = np.bincount(es.labels, minlength=len(t.classes))
                row["labels"] = (f"{int((hist > 0).sum())} of {len(t.classes)} classes, {int(hist.min())}-"
                                 f"{int(hist.max())} items each")
                for c, n in zip(t.classes, hist):
                    hist_rows.setdefault((t.name, c), {"task": t.name, "class": c})[split] = int(n)
            sets.append(row)
    digest = task_set_hash(path)
    write_json_atomic({"path": str(path), "sha256": digest, "tasks": [t.as_dict() for t in tasks]},
                      paths.parquet_dir("task_set") / TASK_SET_FILE)
    context.log.info(f"task_set: {len(tasks)} tasks from {path} (sha256 {digest[:12]})")
    return MaterializeResult(data_version=DataVersion(digest), metadata={
        "path": MetadataValue.path(str(path)), "sha256": MetadataValue.text(digest), "n_tasks": len(tasks),
        "n_in": len(tasks), "n_out": len(tasks), "seconds": round(time.perf_counter() - t0, 3),
        "tasks": MetadataValue.md(markdown_table([{"name": t.name, "kind": t.kind, "classes": len(t.classes),
                                                   "templates": len(t.templates), "weight": t.weight,
                                                   "validation": t.sets["validation"].name, "test": t.sets["test"].name}
                                                  for t in tasks])),
        "held_out_sets": MetadataValue.md(markdown_table(sets)),
        "label_histogram": MetadataValue.md(markdown_table(list(hist_rows.values()), max_rows=500)),
        "n_held_out_items": sum(r["items"] for r in sets),
    })


def read_task_set(paths: TadsPaths) -> tuple[list[Task], str]:
    """The tasks `task_set` materialized, and their sha256."""
    path = paths.parquet_dir("task_set") / TASK_SET_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: materialize task_set first")
    doc = json.loads(path.read_text())
    return [Task.from_dict(t) for t in doc["tasks"]], doc["sha256"]


class RelevanceConfig(Config):
    """Eq. 10-11 settings: which embedding of a sample meets the prototypes, and the retrieval support size."""

    modality: str = "both"  # image, text or both (mean of the two cosines)
    max_support_captions: int = 256
    seed: int = 0


@asset(
    group_name="characterize",
    deps=[task_set, deduped_pool, pool_embeddings, clip_encoder],
    kinds={"lancedb"},
    description="Eq. 10-11: r_k(x), the mean cosine of a sample to task k's textual prototypes (templates × "
    "class names; a sample of validation captions for retrieval), and h_r = r/(‖r‖+ε); LanceDB table "
    "`relevance_vectors` beside the embeddings, over the deduplicated pool.",
)
@one_writer
def relevance_vectors(context: AssetExecutionContext, config: RelevanceConfig, paths: TadsPaths, lance: LanceStore,
                      encoder: ClipEncoder, device: TorchDevice) -> MaterializeResult:
    t0 = time.perf_counter()
    tasks, digest = read_task_set(paths)
    enc, _ = encoder.load(paths.models_dir, device.resolve())
    protos, sizes = [], {}
    for t in tasks:
        captions = read_eval_set(t.sets["validation"]).captions if t.kind == "retrieval" else ()
        texts = relevance.support_texts(t.kind, t.templates, t.classes, captions, config.max_support_captions,
                                        config.seed)
        protos.append(enc.encode_texts(texts))
        sizes[t.name] = len(texts)
    uids, image, text = _kept_vectors(paths, lance)
    r = relevance.relevance_scores(image, text, protos, config.modality)
    h = relevance.relevance_vector(r)
    relevance.write_relevance_table(lance.connect(), uids, r, h, [t.name for t in tasks], digest)
    top = np.argmax(r, axis=1)
    return MaterializeResult(metadata={
        "table": MetadataValue.text(f"{lance.uri}::{relevance.RELEVANCE_TABLE}"), "rows": len(uids),
        "n_in": len(uids), "n_out": len(uids), "seconds": round(time.perf_counter() - t0, 2),
        "tasks": MetadataValue.md(markdown_table([
            {"task": t.name, "prototypes": sizes[t.name], "r mean": float(r[:, k].mean()),
             "r p5": float(np.percentile(r[:, k], 5)), "r p95": float(np.percentile(r[:, k], 95)),
             "closest task for": int((top == k).sum())} for k, t in enumerate(tasks)])),
        "relevance": MetadataValue.md(histogram_markdown({t.name: r[:, k] for k, t in enumerate(tasks)},
                                                         "r_k(x) per task", "mean cosine to the task's prototypes")),
        "tasks_sha256": MetadataValue.text(digest), "modality": MetadataValue.text(config.modality),
    })


class ClusterDiversityConfig(Config):
    """Eq. 12 settings: δ (density sensitivity; 0 switches diversity off) and the number of clusters."""

    delta: float = 0.5
    n_clusters: int = 100
    seed: int = 0


@asset(
    group_name="characterize",
    deps=[deduped_pool, pool_embeddings],
    kinds={"parquet"},
    description="Eq. 12: MiniBatch K-Means over the deduplicated pool's joint embeddings [z_I; z_T]; each "
    "sample's cluster, cluster size and diversity factor d(x) = (1/(|C_x|+ε))^δ.",
)
@one_writer
def cluster_diversity(context: AssetExecutionContext, config: ClusterDiversityConfig, paths: TadsPaths,
                      lance: LanceStore) -> MaterializeResult:
    t0 = time.perf_counter()
    uids, image, text = _kept_vectors(paths, lance)
    labels = kmeans_clusters(np.hstack([image, text]) / np.sqrt(2.0), config.n_clusters, seed=config.seed)
    d = diversity.diversity_factor(labels, config.delta)
    sizes = diversity.cluster_sizes(labels)
    out = pl.DataFrame({"uid": uids, "cluster": labels, "cluster_size": sizes, "diversity": d})
    write_parquet_atomic(out, paths.parquet_dir("cluster_diversity") / DIVERSITY_FILE)
    counts = np.bincount(labels)
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(paths.parquet_dir("cluster_diversity") / DIVERSITY_FILE)),
        "rows": out.height, "n_in": len(uids), "n_out": out.height, "seconds": round(time.perf_counter() - t0, 2),
        "clusters": int((counts > 0).sum()), "delta": MetadataValue.float(config.delta),
        "largest_cluster": int(counts.max()), "smallest_cluster": int(counts[counts > 0].min()),
        "cluster_sizes": MetadataValue.md(histogram_markdown({"samples per cluster": counts[counts > 0]},
                                                             "cluster sizes", "samples")),
        "diversity": MetadataValue.md(histogram_markdown({"d(x)": d}, "diversity factor", "d(x)")),
    })
