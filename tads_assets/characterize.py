"""characterize group, §3.2.1 intrinsic quality (feature_table, weak_labels, quality_scores) and §3.2.2-3.2.3 the
task set, relevance and diversity. Assets load, call the library, write, report."""

import dataclasses
import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, DataVersion, MaterializeResult, MetadataValue, asset
from safetensors.numpy import load_file, save_file

from resources import ClipEncoder, LangId, Ocr, TadsPaths, TorchDevice, one_writer
from tads_assets.config import config_from, params_of
from tads_assets.core.atomic import atomic_path, write_json_atomic, write_parquet_atomic
from tads_assets.core.io import embeddings
from tads_assets.core.io.catalog import (ClipEncoderDir, FeatureTable, PoolEmbeddings, RawPool, Table,
                                         TaskSetFile)
from tads_assets.core.io.eval_sets import check_eval_set, read_eval_set
from tads_assets.core.io.feature_table import FeatureInputs, build_feature_table, feature_inputs, part_features
from tads_assets.core.io.tasks import TaskSetError, load_task_set, task_set_hash
from tads_assets.core.method import diversity, operators, quality_model, relevance, weak_supervision
from tads_assets.core.method.encoder import fold_of, heldout_embeddings, heldout_side, load_heads
from tads_assets.core.method.operators import FEATURE_COLUMNS, OperatorParams, reference_rows
from tads_assets.core.method.diversity import DiversityParams
from tads_assets.core.method.quality_model import QualityParams
from tads_assets.core.method.relevance import RelevanceParams
from tads_assets.core.method.weak_supervision import WeakParams
from tads_assets.core.report import grouped_bars_markdown, histogram_markdown, line_plot_markdown
from tads_assets.core.sanitize import one_line
from tads_assets.core.vectors import joint_vectors, kmeans_clusters
from tads_assets.meta import column_schema, describe, rounded, table
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool_parts, scored_samples_grid

FEATURE_DESCRIPTIONS = {"uid": "sample id", **operators.FEATURE_DESCRIPTIONS}
# the Ocr resource sets these three
FeatureTableConfig = config_from("FeatureTableConfig", "Operator settings (`operators.OperatorParams`).",
                                 (OperatorParams, {"exclude": ("ocr_min_confidence", "ocr_workers", "ocr_batch")}))


def _feature_inputs(context: AssetExecutionContext, config, deduped_pool: Table, pool_embeddings: PoolEmbeddings,
                    clip_encoder: ClipEncoderDir, parts_dir, encoder: ClipEncoder, device: TorchDevice, ocr: Ocr,
                    langid: LangId, part: str | None = None) -> tuple[FeatureInputs, OperatorParams]:
    """Everything the operators read besides a part's own rows (the same for feature_table and operator_features,
    so both compute the same cache key and values for a part). With `part`, only that part's vectors and the
    reference images are read, not the whole table."""
    lang_id = langid.load()
    context.log.info(f"{context.asset_key.to_user_string()}: Tesseract {ocr.version()}, fastText model {lang_id.path}")
    params = params_of(config, OperatorParams, ocr_min_confidence=ocr.min_confidence, ocr_workers=ocr.workers,
                       ocr_batch=ocr.batch)
    enc, info = encoder.load(clip_encoder, device.resolve())
    emb, kept = pool_embeddings, deduped_pool.uids()
    columns = ("uid", "image_vec", "text_vec", "flipped_image_vec", "heldout_pair_cos")
    reference = None
    if part is None:
        vectors = emb.read(columns)
    else:  # the same reference rows as the whole-pool run: the kept uids in table order, sampled alike
        kept_set = set(kept)
        order = [u for u in emb.read(("uid",))["uid"].to_list() if u in kept_set]
        ref_uids = [order[i] for i in reference_rows(len(order), params.reference_images, params.seed)]
        (reference,) = emb.aligned(ref_uids, "image_vec")
        vectors = emb.read(columns, part=part)
        kept = [u for u in vectors["uid"].to_list() if u in kept_set]
    inputs = feature_inputs(kept, vectors, parts_dir, info["encoder_id"], lang_id, enc.encode_texts,
                            params, reference=reference)
    return inputs, params


@asset(
    group_name="characterize", deps=[deduped_pool, pool_embeddings, clip_encoder], partitions_def=raw_pool_parts,
    kinds={"parquet", "tesseract", "fasttext"},
    description=describe(
        "Scale-out form of feature_table's per-sample work: the §3.2.1 operators over one raw_pool part (partition = "
        "part), written to feature_table's part cache (TADS_HOME/cache/feature_parts/PART.parquet). A backfill over "
        "the parts fans out over processes or machines; feature_table then only reads them back and fits the "
        "corpus-level statistics.", FEATURE_DESCRIPTIONS),
)
@one_writer
def operator_features(context: AssetExecutionContext, config: FeatureTableConfig, paths: TadsPaths,
                      encoder: ClipEncoder, device: TorchDevice, ocr: Ocr, langid: LangId) -> MaterializeResult:
    cat = paths.catalog
    part = cat.raw_pool.part(context.partition_key)
    inputs, _ = _feature_inputs(context, config, cat.deduped_pool, cat.pool_embeddings, cat.clip_encoder,
                                cat.feature_parts_dir, encoder, device, ocr, langid, part=part.stem)
    t0 = time.perf_counter()
    result = part_features(part, inputs, context.log.info)
    return MaterializeResult(metadata={
        "part": MetadataValue.text(context.partition_key), "n_in": result.frame.height, "n_out": result.frame.height,
        "dagster/row_count": result.frame.height, "dagster/column_schema": column_schema(result.frame, FEATURE_DESCRIPTIONS),
        "computed": result.computed, "ocr_run": result.ocr_run, "seconds": rounded(time.perf_counter() - t0, 2),
        "seconds_by_operator_group": table([{"group": k, "seconds": v} for k, v in result.seconds.items()])
        if result.computed else MetadataValue.text("read from the cache (nothing it depends on changed)"),
    })


@asset(
    group_name="characterize", deps=[operator_features], kinds={"parquet", "tesseract", "fasttext"},
    description=describe(
        "§3.2.1 operators over the deduplicated pool, one column each (OCR by Tesseract behind a cheap text "
        "pre-filter, language by fastText). Computed per raw_pool part, resumable; parts an operator_features "
        "backfill computed are read back.", FEATURE_DESCRIPTIONS),
)
@one_writer
def feature_table(context: AssetExecutionContext, config: FeatureTableConfig, paths: TadsPaths, encoder: ClipEncoder,
                  device: TorchDevice, ocr: Ocr, langid: LangId, raw_pool: RawPool, deduped_pool: Table,
                  pool_embeddings: PoolEmbeddings, clip_encoder: ClipEncoderDir) -> MaterializeResult:
    out = paths.catalog.feature_table
    inputs, params = _feature_inputs(context, config, deduped_pool, pool_embeddings, clip_encoder,
                                     paths.catalog.feature_parts_dir, encoder, device, ocr, langid)
    run = build_feature_table(raw_pool.dir, inputs, progress=context.log.info)
    run.table = run.table.with_columns(*_match_p_columns(run.table["uid"].to_list(), clip_encoder, pool_embeddings,
                                                          paths.catalog.frozen_cache_dir, device.resolve(), params))
    write_parquet_atomic(run.table, out.path)
    with atomic_path(out.rater_path) as tmp:
        save_file(run.rater.to_tensors(), str(tmp))
    # quality_scores recomputes operators for its synthetic pairs with exactly these settings
    write_json_atomic(dataclasses.asdict(params), out.params_path)
    return MaterializeResult(metadata=_feature_metadata(run, inputs, out))


def _match_p_columns(uids: list[str], clip_encoder: ClipEncoderDir, pool_embeddings: PoolEmbeddings, frozen_cache_dir,
                     device: str, params: OperatorParams) -> list[pl.Series]:
    """caption_match_p and image_match_p (`operators.match_p_values`) of the feature table's rows, scored as
    clip_similarity is: by the builtin encoder's cross-fitted heads, each fold's pairs against random pairings
    within the fold (no head trained on either pair), or by an open_clip encoder's own embeddings."""
    scorer = _PairScorer(uids, clip_encoder, pool_embeddings, frozen_cache_dir, device)
    caption_p, image_p = operators.match_p_values(scorer.img, scorer.txt, scorer.groups, seed=params.seed)
    return [pl.Series("caption_match_p", caption_p), pl.Series("image_match_p", image_p)]


def _feature_metadata(run, inputs, out: FeatureTable) -> dict:
    t = run.table
    langs = t.group_by("lang").len("samples").sort("samples", descending=True).head(10)
    return {
        "path": MetadataValue.path(str(out.path)), "dagster/column_schema": column_schema(t, FEATURE_DESCRIPTIONS),
        "dagster/row_count": t.height, "n_in": len(inputs.kept), "n_out": t.height, "n_dropped": 0,
        "n_features": len(FEATURE_COLUMNS), "seconds": run.seconds["total"],
        "parts_computed": run.parts_computed, "parts_resumed": run.parts_cached,
        "ocr_run": run.ocr_run, "ocr_skipped_by_prefilter": run.ocr_skipped,
        "seconds_by_operator_group": table([{"group": k, "seconds": v} for k, v in run.seconds.items()]),
        "samples_per_s": rounded(t.height / max(run.seconds["total"], 1e-9), 1),
        "languages": table(langs.to_dicts()),
        "feature_summary": table([
            {"feature": c, "p5": float(t[c].cast(float).quantile(0.05)), "median": float(t[c].cast(float).median()),
             "p95": float(t[c].cast(float).quantile(0.95))} for c in FEATURE_COLUMNS]),
        "distributions": MetadataValue.md(histogram_markdown(
            {c: t[c].cast(float).to_numpy() for c in ("clip_similarity", "concreteness", "flip_consistency",
                                                      "grounding_confidence")}, "cross-modal and text features", "value")),
        "blur_and_text": MetadataValue.md(histogram_markdown(
            {"log1p Laplacian variance": np.log1p(t["laplacian_var"].to_numpy()),
             "OCR pre-filter text likelihood": t["text_likelihood"].to_numpy()}, "image features", "value")),
    }


WEAK_COLUMNS = {"uid": "sample id", "y_weak": "P(good) from the LabelModel",
                "lf_*": "each labelling function's vote: 1 good, 0 bad, -1 abstain"}
WeakLabelsConfig = config_from("WeakLabelsConfig", "Labelling-function and LabelModel settings "
                               "(`weak_supervision.WeakParams`).", WeakParams)


@asset(
    group_name="characterize", kinds={"parquet", "snorkel"},
    description=describe("Labelling functions on feature thresholds read off the pool's distributions, combined by "
                         "a Snorkel LabelModel into weak labels ŷ_weak = P(good).",
                         WEAK_COLUMNS),
)
@one_writer
def weak_labels(context: AssetExecutionContext, config: WeakLabelsConfig, paths: TadsPaths,
                feature_table: FeatureTable) -> MaterializeResult:
    t0, out_path = time.perf_counter(), paths.catalog.weak_labels.path
    features = feature_table.read()
    params = params_of(config, WeakParams)
    lfs = weak_supervision.labelling_functions(features, params)
    L = weak_supervision.apply_lfs(features, lfs)
    fit = weak_supervision.fit_label_model(L, lfs, params)
    context.log.info(f"weak_labels: {len(lfs)} LFs over {features.height} samples, mean ŷ_weak {fit.probs.mean():.3f}")
    out = pl.DataFrame({"uid": features["uid"], "y_weak": fit.probs}).hstack(
        pl.DataFrame({lf.name: L[:, j].astype(np.int8) for j, lf in enumerate(lfs)}))
    write_parquet_atomic(out, out_path)
    summary = fit.lf_summary
    accuracy = dict(zip(summary["lf"].to_list(), summary["learned_accuracy"].round(4).to_list()))
    write_json_atomic({"n": out.height, "label_model_epochs": fit.epochs, "inverted_lfs": fit.inverted,
                       "learned_accuracy": accuracy}, out_path.parent / "_manifest.json")
    if fit.inverted:
        context.log.warning(f"weak_labels: the LabelModel inverted {', '.join(fit.inverted)} on this pool (learned "
                            "accuracy < 0.5: its BAD vote would have raised P(good)); ŷ_weak is fitted without them. "
                            "Look at their thresholds and votes in lf_summary")
    return MaterializeResult(metadata={
        "inverted_lfs": MetadataValue.text(", ".join(fit.inverted) or "none"),
        "disabled_lfs": MetadataValue.text(params.disabled_lfs.strip() or "none"),  # left out by config, not by the fit
        "path": MetadataValue.path(str(out_path)), "n_in": features.height, "n_out": out.height, "n_dropped": 0,
        "dagster/column_schema": column_schema(out, {**WEAK_COLUMNS, **{lf.name: f"vote of {lf.name}: 1 good, 0 bad, "
                                                                         "-1 abstain" for lf in lfs}}),
        "dagster/row_count": out.height, "n_lfs": len(lfs), "seconds": round(time.perf_counter() - t0, 2),
        "label_model_epochs": fit.epochs, "lf_summary": table(summary.to_dicts()),
        "lf_summary_plot": MetadataValue.md(grouped_bars_markdown(
            summary["lf"].to_list(), {c: summary[c].to_list() for c in ("coverage", "overlaps", "conflicts",
                                                                         "learned_accuracy")},
            "labelling functions: coverage, overlaps, conflicts, learned accuracy", "share / accuracy")),
        "abstain_all_share": rounded((L == weak_supervision.ABSTAIN).all(axis=1).mean()),
        "y_weak": MetadataValue.md(histogram_markdown({"ŷ_weak": fit.probs}, "weak label distribution", "P(good)")),
    })


QUALITY_COLUMNS = {"uid": "sample id", "quality": "q_φ(x) ∈ [0, 1]"}
QualityScoresConfig = config_from("QualityScoresConfig", "q_φ and D_true settings (`quality_model.QualityParams`).",
                                  QualityParams)


def _negative_features(features: pl.DataFrame, feature_table: FeatureTable, pool_embeddings: PoolEmbeddings,
                       clip_encoder: ClipEncoderDir, frozen_cache_dir, encoder: ClipEncoder, langid: LangId, dev: str):
    """negative_features(rows, captions) for D_true: the operators recomputed for new captions on the pool's
    images, with exactly feature_table's settings and on its scales (the CLIP similarity and the permutation tests
    by the scorer the feature table used)."""
    img, flip = pool_embeddings.aligned(features["uid"].to_list(), "image_vec", "flipped_image_vec")
    op_params = OperatorParams(**feature_table.operator_params())
    enc, _ = encoder.load(clip_encoder, dev)
    rater = operators.ConcretenessRater.from_tensors(load_file(str(feature_table.rater_path)))
    dominant = operators.dominant_language(features["lang"].to_list())
    refs = operators.reference_images(img, op_params.reference_images, op_params.seed)
    scorer = _PairScorer(features["uid"].to_list(), clip_encoder, pool_embeddings, frozen_cache_dir, dev, enc)

    def negative_features(rows: np.ndarray, captions: list[str]) -> pl.DataFrame:
        return operators.recombined_features(features, rows, captions, img, flip, refs, langid.load(), enc.encode_texts,
                                             rater, dominant, op_params, scorer.cosine_of_new_pairs(rows, captions))

    return negative_features


@asset(
    group_name="characterize", kinds={"parquet", "pytorch"},
    description=describe("MLP quality predictor q_φ ∈ [0, 1] trained with eq. 7-9: BCE on D_true (high-ŷ_weak "
                         "pairs and synthetic negatives by caption shuffling and mismatch injection) plus λ-weighted "
                         "MSE to ŷ_weak.", QUALITY_COLUMNS),
)
@one_writer
def quality_scores(context: AssetExecutionContext, config: QualityScoresConfig, paths: TadsPaths, encoder: ClipEncoder,
                   device: TorchDevice, langid: LangId, feature_table: FeatureTable, weak_labels: Table,
                   deduped_pool: Table, raw_pool: RawPool, pool_embeddings: PoolEmbeddings,
                   clip_encoder: ClipEncoderDir) -> MaterializeResult:
    t0, dev, cat = time.perf_counter(), device.resolve(), paths.catalog
    features = feature_table.read().join(weak_labels.read(["uid", "y_weak"]), on="uid", how="left", maintain_order="left")
    if features["y_weak"].null_count():
        raise ValueError("weak_labels does not cover the feature table: materialize weak_labels again")
    clusters = features.select("uid").join(deduped_pool.read(["uid", "cluster"]), on="uid", how="left",
                                           maintain_order="left")["cluster"].fill_null(-1).to_numpy()
    params = params_of(config, QualityParams)
    captions = raw_pool.captions(features["uid"].to_list())
    fit = quality_model.train_quality_ensemble(
        features, captions, clusters, params,
        _negative_features(features, feature_table, pool_embeddings, clip_encoder, cat.frozen_cache_dir, encoder,
                           langid, dev), dev, progress=context.log.info)
    x_pool = fit.d_trues[0].x_pool
    q = quality_model.predict_quality(fit.model, x_pool)
    quality_model.save_quality_model(fit.model, cat.quality_scores.checkpoint, FEATURE_COLUMNS)
    out = pl.DataFrame({"uid": features["uid"], "quality": q.astype(np.float32)})
    write_parquet_atomic(out, cat.quality_scores.path)
    return MaterializeResult(metadata=_quality_metadata(fit, out, captions, params, raw_pool, cat,
                                                        time.perf_counter() - t0))


def _member_agreement(fit: quality_model.EnsembleFit, x_pool: np.ndarray) -> dict:
    """How far the ensemble's members agree on the pool: the mean Spearman correlation of their rankings over every
    pair of members, and the mean standard deviation of their scores per sample."""
    if len(fit.fits) < 2:
        return {}
    scores = fit.member_scores(x_pool)
    ranks = scores.argsort(1).argsort(1).astype(np.float64)
    corr = np.corrcoef(ranks)
    return {"member_rank_correlation": rounded(float(corr[np.triu_indices(len(corr), 1)].mean())),
            "member_score_std": rounded(float(scores.std(0).mean()))}


def _quality_metadata(fit: quality_model.EnsembleFit, out: pl.DataFrame, captions, params, raw_pool: RawPool, cat,
                      seconds) -> dict:
    q = out["quality"].to_numpy()
    how = np.concatenate([d.how for d in fit.d_trues])
    q_true = np.concatenate([quality_model.predict_quality(f.model, d.x_true) for f, d in zip(fit.fits, fit.d_trues)])
    ranked = out.with_columns(caption=pl.Series(captions)).sort("quality")

    def mean_of(curve: str) -> list[float]:
        return np.mean([getattr(f, curve) for f in fit.fits], axis=0).tolist()

    return {
        "path": MetadataValue.path(str(cat.quality_scores.path)),
        "checkpoint": MetadataValue.path(str(cat.quality_scores.checkpoint)),
        "dagster/column_schema": column_schema(out, QUALITY_COLUMNS),
        "dagster/row_count": out.height, "n_in": out.height, "n_out": out.height, "n_dropped": 0,
        "seconds": round(seconds, 2),
        "members": len(fit.fits), **_member_agreement(fit, fit.d_trues[0].x_pool),
        "d_true": table([{"examples": k, "count": int((how == k).sum()), "mean q_phi": float(q_true[how == k].mean())}
                         for k in ("positive", "shuffled", "mismatch_injected") if (how == k).any()]),
        "loss_curve": MetadataValue.md(line_plot_markdown(mean_of("loss_per_epoch"),
                                                          "eq. 9 loss per epoch (mean over the members)", "epoch", "loss")),
        "final_bce_d_true": rounded(mean_of("sup_per_epoch")[-1]), "final_mse_weak": rounded(mean_of("weak_per_epoch")[-1]),
        "quality": MetadataValue.md(histogram_markdown({"q_phi": q}, "quality score distribution", "q")),
        "samples_by_quality": MetadataValue.md(scored_samples_grid(raw_pool, out["uid"].to_list(), q, "q",
                                                                   "highest and lowest quality q_φ")),
        "lowest_scored": table(ranked.head(8).select("uid", "quality", "caption").to_dicts()),
        "highest_scored": table(ranked.tail(8).select("uid", "quality", "caption").to_dicts()),
        "training_seconds": rounded(fit.seconds, 2), "params": MetadataValue.json(dataclasses.asdict(params)),
    }


class _PairScorer:
    """The pool's pairs embedded as feature_table scores them — by the builtin encoder's cross-fitted heads (each pair by
    the head of its uid's fold, never one that trained on it) or an open_clip encoder's own embeddings — for the
    permutation tests and for new (pool image, caption) pairs."""

    def __init__(self, uids: list[str], clip_encoder: ClipEncoderDir, pool_embeddings: PoolEmbeddings, frozen_cache_dir,
                 device: str, enc=None):
        info = clip_encoder.info()
        self.enc, self.heads = enc, None
        if info["kind"] == "builtin" and info.get("heldout_heads"):
            self.heads = [load_heads(clip_encoder.file(f), device) for f in info["heldout_heads"]]
            frozen = pl.DataFrame({"uid": uids}).join(embeddings.load_frozen_features(frozen_cache_dir), on="uid",
                                                     how="left", maintain_order="left")
            self.groups = fold_of(uids, len(self.heads))
            self.img, self.txt = heldout_embeddings(*embeddings.arrays(frozen, "image_feat", "text_feat"), self.groups,
                                                    self.heads)
        else:
            self.img, self.txt = pool_embeddings.aligned(uids, "image_vec", "text_vec")
            self.groups = np.zeros(len(uids), np.int64)

    def cosine_of_new_pairs(self, rows: np.ndarray, captions: list[str]) -> np.ndarray | None:
        """The held-out cos(z_I, z_T) of row rows[i]'s image with captions[i] (None for an open_clip encoder, whose
        cosine the operators compute from its own embeddings)."""
        if self.heads is None:
            return None
        rows = np.asarray(rows, np.int64)
        new_txt = heldout_side(self.enc.towers.text_features(list(captions)), self.groups[rows], self.heads, "text")
        return np.sum(self.img[rows] * new_txt, axis=1).astype(np.float32)


# ------------------------------------------------------------------------- §3.2.2-3.2.3: tasks, relevance, diversity


def _held_out_sets(path, tasks) -> tuple[list[dict], list[dict]]:
    """Every held-out set opened and checked now, so a bad one fails here naming its task: a row per set, and
    the label histogram per (task, class)."""
    sets, hist_rows = [], {}
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
    return sets, list(hist_rows.values())


@asset(
    group_name="characterize", kinds={"yaml"},
    description="The downstream task set (TADS_TASKS, default the demo's), parsed and validated: a bad file fails "
    "naming the task and field. Its data version is the file's sha256, so a changed task set makes every "
    "asset downstream of it stale (and only those).",
)
@one_writer
def task_set(context: AssetExecutionContext, paths: TadsPaths) -> MaterializeResult:
    t0, path = time.perf_counter(), paths.tasks_path()
    tasks = load_task_set(path)
    sets, histogram = _held_out_sets(path, tasks)
    digest = task_set_hash(path)
    write_json_atomic({"path": str(path), "sha256": digest, "tasks": [t.as_dict() for t in tasks]},
                      paths.catalog.task_set.path)
    context.log.info(f"task_set: {len(tasks)} tasks from {path} (sha256 {digest[:12]})")
    return MaterializeResult(data_version=DataVersion(digest), metadata={
        "path": MetadataValue.path(str(path)), "sha256": MetadataValue.text(digest), "n_tasks": len(tasks),
        "n_in": len(tasks), "n_out": len(tasks), "seconds": round(time.perf_counter() - t0, 3),
        "tasks": table([{"name": t.name, "kind": t.kind, "classes": len(t.classes), "templates": len(t.templates),
                         "weight": t.weight, "validation": t.sets["validation"].name, "test": t.sets["test"].name}
                        for t in tasks]),
        "held_out_sets": table(sets), "label_histogram": table(histogram, max_rows=500),
        "n_held_out_items": sum(r["items"] for r in sets),
    })


RelevanceConfig = config_from("RelevanceConfig", "Eq. 10-11 settings (`relevance.RelevanceParams`).", RelevanceParams)


RELEVANCE_COLUMNS = {"uid": "sample id", "r": "r_k(x) per task (eq. 10)", "h_r": "r/(‖r‖+ε) (eq. 11)",
                     "tasks": "the task order, comma-separated", "tasks_sha256": "the task file the rows are for"}


@asset(
    group_name="characterize", kinds={"lancedb"},
    description=describe("Eq. 10-11: r_k(x), a sample's cosine to task k's nearest textual prototype (a class's "
                         "templates averaged; a sample of validation captions for retrieval; `aggregate: mean` is eq. "
                         "10's mean over every prototype), and h_r; LanceDB table `relevance_vectors` beside the "
                         "embeddings, over the deduplicated pool.", RELEVANCE_COLUMNS),
)
@one_writer
def relevance_vectors(context: AssetExecutionContext, config: RelevanceConfig, paths: TadsPaths, encoder: ClipEncoder,
                      device: TorchDevice, task_set: TaskSetFile, deduped_pool: Table, pool_embeddings: PoolEmbeddings,
                      clip_encoder: ClipEncoderDir) -> MaterializeResult:
    t0, out = time.perf_counter(), paths.catalog.relevance_vectors
    tasks, digest = task_set.read()
    enc, _ = encoder.load(clip_encoder, device.resolve())
    protos, sizes = [], {}
    for t in tasks:
        captions = read_eval_set(t.sets["validation"]).captions if t.kind == "retrieval" else ()
        texts = relevance.support_texts(t.kind, t.templates, t.classes, captions, config.max_support_captions,
                                        config.seed)
        protos.append(relevance.task_prototypes(t.kind, enc.encode_texts(texts), len(t.classes), config.aggregate))
        sizes[t.name] = len(protos[-1])
    uids = deduped_pool.uids()
    r = relevance.relevance_scores(*pool_embeddings.aligned(uids, "image_vec", "text_vec"), protos, config.modality,
                                   config.aggregate)
    h = relevance.relevance_vector(r)
    written = embeddings.write_relevance_table(out.connect(), uids, r, h, [t.name for t in tasks], digest)
    top = np.argmax(r, axis=1)
    return MaterializeResult(metadata={
        "table": MetadataValue.text(out.label), "rows": len(uids), "n_in": len(uids), "n_out": len(uids),
        "dagster/row_count": len(uids), "dagster/column_schema": column_schema(written.schema, RELEVANCE_COLUMNS),
        "seconds": round(time.perf_counter() - t0, 2),
        "tasks": table([{"task": t.name, "prototypes": sizes[t.name], "r mean": float(r[:, k].mean()),
                         "r p5": float(np.percentile(r[:, k], 5)), "r p95": float(np.percentile(r[:, k], 95)),
                         "closest task for": int((top == k).sum())} for k, t in enumerate(tasks)]),
        "relevance": MetadataValue.md(histogram_markdown({t.name: r[:, k] for k, t in enumerate(tasks)},
                                                         "r_k(x) per task", "mean cosine to the task's prototypes")),
        "tasks_sha256": MetadataValue.text(digest), "modality": MetadataValue.text(config.modality),
        "aggregate": MetadataValue.text(config.aggregate),
    })


ClusterDiversityConfig = config_from("ClusterDiversityConfig", "Eq. 12 settings (`diversity.DiversityParams`): δ "
                                     "(density sensitivity; 0 switches diversity off) and the number of clusters.",
                                     DiversityParams)


DIVERSITY_COLUMNS = {"uid": "sample id", "cluster": "k-means cluster of [z_I; z_T]",
                     "cluster_size": "|C_x|", "diversity": "d(x) = (1/(|C_x|+ε))^δ"}


@asset(
    group_name="characterize", kinds={"parquet"},
    description=describe("Eq. 12: MiniBatch K-Means over the deduplicated pool's joint embeddings [z_I; z_T]; each "
                         "sample's cluster, cluster size and diversity factor.", DIVERSITY_COLUMNS),
)
@one_writer
def cluster_diversity(context: AssetExecutionContext, config: ClusterDiversityConfig, paths: TadsPaths,
                      deduped_pool: Table, pool_embeddings: PoolEmbeddings) -> MaterializeResult:
    t0, path = time.perf_counter(), paths.catalog.cluster_diversity.path
    uids = deduped_pool.uids()
    labels = kmeans_clusters(joint_vectors(*pool_embeddings.aligned(uids, "image_vec", "text_vec")), config.n_clusters,
                             seed=config.seed)
    d = diversity.diversity_factor(labels, config.delta)
    out = pl.DataFrame({"uid": uids, "cluster": labels, "cluster_size": diversity.cluster_sizes(labels), "diversity": d})
    write_parquet_atomic(out, path)
    counts = np.bincount(labels)
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(path)), "rows": out.height, "n_in": len(uids), "n_out": out.height,
        "dagster/row_count": out.height, "dagster/column_schema": column_schema(out, DIVERSITY_COLUMNS),
        "seconds": round(time.perf_counter() - t0, 2), "clusters": int((counts > 0).sum()),
        "delta": rounded(config.delta), "largest_cluster": int(counts.max()),
        "smallest_cluster": int(counts[counts > 0].min()),
        "cluster_sizes": MetadataValue.md(histogram_markdown({"samples per cluster": counts[counts > 0]},
                                                             "cluster sizes", "samples")),
        "diversity": MetadataValue.md(histogram_markdown({"d(x)": d}, "diversity factor", "d(x)")),
    })
