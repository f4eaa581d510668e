"""select group: TADS's selection (§3.3: trained_dvn, final_subset) and the selections it is compared against
(Table 1's baselines and Table 2's static ablations), one partition per method. Assets load, call the library,
write, report."""

import time
from collections import Counter

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from resources import Budget, ClipEncoder, TadsPaths, TorchDevice, one_writer, one_writer_per_partition
from tads_assets.config import config_from, params_of
from tads_assets.core.harness import baselines, benchmark, clip_proxy, clip_train
from tads_assets.core.harness.baselines import BaselineParams
from tads_assets.core.harness.target_alignment import cached_target_scores, target_key, target_scores
from tads_assets.core.io import embeddings, eval_sets
from tads_assets.core.io.catalog import ClipEncoderDir, PoolEmbeddings, QualityScores, RawPool, RelevanceVectors, Table, TaskSetFile
from tads_assets.core.io.storage import write_stage_output
from tads_assets.core.atomic import write_parquet_atomic
from tads_assets.core.method import dvn, proxy, selection
from tads_assets.core.method.algorithm1 import Algorithm1Params, check_tasks, row_label, run_algorithm1
from tads_assets.core.method.fdo import FdoParams
from tads_assets.core.method.proxy import ProxyParams
from tads_assets.core.report import histogram_markdown, line_plot_markdown
from tads_assets.core.settings import DROP
from tads_assets.core.vectors import joint_vectors
from tads_assets.meta import column_schema, describe, rounded, table
from tads_assets.pool import deduped_pool, scored_samples_grid

# Table 1's baselines and Table 2's static rows (Q+R, Q+R+D, Q+R+D+A at TADS's size); `tads` itself is final_subset.
STATIC_ABLATIONS = ("q_r", "q_r_d", "q_r_d_a")
baseline_partitions = StaticPartitionsDefinition([*baselines.METHODS, *STATIC_ABLATIONS])
SUBSET_COLUMNS = {"uid": "the sample's id (raw_pool uid)", "score": "the method's selection score (TADS: v(x))"}
DVN_COLUMNS = {"uid": "sample id", "v": "data value v(x) ∈ (0, 1)",
               "fdo_cluster": "the FDO group the sample was perturbed with"}

BaselineSubsetsConfig = config_from(
    "BaselineSubsetsConfig", "Baseline settings (`tads_assets.core.harness.baselines.BaselineParams`). `size` 0: "
    "the size of TADS's final_subset when it exists, else the data budget's share of the pool.",
    (BaselineParams, {}), extra={"size": (int, 0)})


def _static_ablation(method: str, size: int, sig: selection.Signals) -> tuple[np.ndarray, baselines.Selection]:
    """Table 2's static rows over the deduplicated pool: the top `size` by equal-weight standardised signals."""
    score = sig.static(selection.ABLATIONS[method])
    keep = selection.threshold_selection(score, -1.0, size).keep
    return sig.uids, baselines.Selection(keep, score.astype(np.float32), f"{method}_static_score_below_cutoff",
                                         {"signals": "+".join(selection.ABLATIONS[method])})


def _signals(quality: QualityScores, relevance: RelevanceVectors, diversity: Table,
             pool_embeddings: PoolEmbeddings | None = None) -> selection.Signals:
    """The deduplicated pool's signals; with `pool_embeddings`, each pair's alignment a too."""
    return embeddings.load_signals(quality.path, relevance.connect(), diversity.path,
                                   pool_embeddings.connect() if pool_embeddings is not None else None)


def _drop_rows(uids: pl.DataFrame, keep: np.ndarray, reason, value: np.ndarray, detail: str) -> pl.DataFrame:
    """The ledger rows of the candidates a selection leaves out; `reason` one for all, or one per candidate."""
    why = (pl.lit(reason) if isinstance(reason, str) else
           pl.Series("reason", np.asarray(reason, object)[~np.asarray(keep)].astype(str), pl.String))
    return uids.filter(~pl.Series(keep)).with_columns(
        pl.lit(DROP).alias("decision"), why.alias("reason"),
        pl.Series("value", np.asarray(value)[~keep], pl.Float64), pl.lit(detail).alias("detail"))


@asset(
    group_name="select", deps=[deduped_pool], partitions_def=baseline_partitions, kinds={"parquet"},
    description=describe(
        "The pool selected by the baselines of Table 1, one partition each: no_filter (every readable sample), "
        "random, clip_score (top by held-out image-caption cosine), semdedup (SemDeDup), dbp (density-based "
        "pruning), quality_only (q_φ threshold). random/clip_score/semdedup/dbp share one size (TADS's subset "
        "size when it exists). q_r, q_r_d and q_r_d_a are Table 2's static rows (equal-weight standardised q_φ, task "
        "relevance, log diversity and held-out image-caption cosine, top at TADS's size, from the deduplicated "
        "pool; q_r_d_a is the DVN's default θ₀). Every candidate a method "
        "drops gets a ledger row. A run over several partitions selects them one after another in one step.",
        SUBSET_COLUMNS),
    backfill_policy=BackfillPolicy.single_run(),
)
@one_writer_per_partition
def baseline_subsets(context: AssetExecutionContext, config: BaselineSubsetsConfig, paths: TadsPaths, budget: Budget,
                     raw_pool: RawPool, clip_encoder: ClipEncoderDir, pool_embeddings: PoolEmbeddings,
                     quality_scores: QualityScores, relevance_vectors: RelevanceVectors,
                     cluster_diversity: Table, partition_key: str) -> dict:
    method, cat, t0 = partition_key, paths.catalog, time.perf_counter()
    builtin = clip_encoder.is_builtin()
    pool = baselines.load_candidates(raw_pool.dir, pool_embeddings.connect(), quality_scores.path,
                                     cat.frozen_cache_dir if builtin else None)
    size, size_source = ((config.size, "config size") if config.size else
                         baselines.matched_size(cat.final_subset.path, budget.samples(raw_pool.height()), budget.rule()))
    if method in STATIC_ABLATIONS:
        uids, sel = _static_ablation(method, size, _signals(quality_scores, relevance_vectors, cluster_diversity,
                                                            pool_embeddings))
    else:
        uids, sel = baselines.select(method, pool, params_of(config, BaselineParams), size)
    size_source = {"no_filter": "the whole pool", "quality_only": f"q_φ ≥ {config.quality_threshold}"}.get(method, size_source)
    seconds = time.perf_counter() - t0
    cand = pl.DataFrame({"uid": uids})
    kept = cand.with_columns(pl.Series("score", sel.score, pl.Float32)).filter(pl.Series(sel.keep))
    drops = _drop_rows(cand, sel.keep, sel.reason if sel.reasons is None else sel.reasons, sel.score, method)
    out = cat.subsets.of(method)
    result = write_stage_output(out.dir, paths.ledger(), f"baseline_{method}", kept, drops, out.path.name)
    context.log.info(f"baseline_subsets[{method}]: kept {kept.height} of {cand.height} ({size_source})")
    return _baseline_metadata(method, sel, cand, kept, drops, size_source, builtin, result, out.dir, seconds)


def _baseline_metadata(method, sel, cand, kept, drops, size_source, builtin, result, out_dir, seconds) -> dict:
    info = {k: v for k, v in sel.info.items() if not isinstance(v, list)}
    meta = {
        "method": MetadataValue.text(method), "path": MetadataValue.path(str(out_dir)),
        "dagster/column_schema": column_schema(kept, SUBSET_COLUMNS), "dagster/row_count": kept.height,
        "n_in": cand.height, "n_out": kept.height, "n_kept": kept.height, "n_dropped": drops.height,
        "kept_fraction": rounded(kept.height / max(cand.height, 1)), "size_from": MetadataValue.text(size_source),
        "image_features": MetadataValue.text("frozen image tower" if builtin else "encoder image_vec"),
        "ledger_stage": MetadataValue.text(f"baseline_{method}"), "run_id": MetadataValue.text(result["run_id"]),
        "seconds": rounded(seconds, 2),
        **{k: rounded(v) if isinstance(v, float) else v for k, v in info.items()},
    }
    if method != "no_filter":
        meta["score_kept_vs_dropped"] = MetadataValue.md(histogram_markdown(
            {"kept": sel.score[sel.keep], "dropped": sel.score[~sel.keep]}, f"{method}: selection score", "score"))
    if "per_cluster" in sel.info:
        meta["per_cluster"] = table(sorted(sel.info["per_cluster"], key=lambda r: -r["quota"]), max_rows=20)
    return meta


# ------------------------------------------------------------------------------------------------ §3.3

TrainedDvnConfig = config_from(
    "TrainedDvnConfig", "Algorithm 1 (`tads_assets.core.method.algorithm1`; FDO from `FdoParams`, the head proxy "
    "from `ProxyParams` as proxy_*). `proxy_mode` `head` (frozen encoder features + trainable projection heads: "
    "the CPU default) or `full` (a whole CLIP fine-tuned per reward, the paper's setting, for a GPU). The data "
    "budget is the `budget` resource. `task_alignment` `target`: weight eq. 15's tasks by how much of the proxy's "
    "skill a target CLIP trained from scratch on θ₀'s selection reaches (`none`: φ_k as in the task file).",
    Algorithm1Params, (FdoParams, {"exclude": ("rate",)}), (ProxyParams, {"prefix": "proxy_", "exclude": ("seed",)}),
    extra={"proxy_mode": (str, "head"), "reward_repeats": (int, 1), "validation_items": (int, 1000),
           "full_budget_samples_seen": (int, 4096), "task_alignment": (str, "target"),
           "target_model": (str, clip_train.TrainParams.model),
           "target_budget_samples_seen": (int, clip_train.TrainParams.budget_samples_seen)})


def _reward(config, encoder: ClipEncoder, dev: str, tasks, uids: np.ndarray, raw_pool: RawPool,
            pool_embeddings: PoolEmbeddings, clip_encoder: ClipEncoderDir, frozen_cache, log, unnamed=None):
    """The proxy of the chosen mode, as an object with reward(mask) → (J, per-task Eval_k); classification tasks
    scored over the classes the benchmark scores (`unnamed` left out, `_unnamed_classes`)."""
    if config.proxy_mode == "head":
        if clip_encoder.is_builtin():  # its heads were fitted on this pool: the proxy trains on the frozen features
            frame = embeddings.load_current_frozen_features(raw_pool.dir, frozen_cache).select("uid", "image_feat", "text_feat")
            towers = encoder.towers(dev, side=clip_encoder.info().get("image_size"))
            columns, enc_i, enc_t = ("image_feat", "text_feat"), towers.image_features, towers.text_features
        else:
            model = encoder.open_clip(dev)
            frame, columns = pool_embeddings.read(("uid", "image_vec", "text_vec")), ("image_vec", "text_vec")
            enc_i, enc_t = model.encode_images, model.encode_texts
        joined = pl.DataFrame({"uid": uids}).join(frame, on="uid", how="left", maintain_order="left")
        if joined[columns[0]].null_count():
            raise ValueError(f"{joined[columns[0]].null_count()} deduplicated samples have no proxy features: "
                             "rematerialize clip_encoder and pool_embeddings")
        val = proxy.validation_tasks(tasks, enc_i, enc_t, "validation", config.validation_items, config.seed, unnamed)
        params = params_of(config, ProxyParams, prefix="proxy_", seed=config.seed)
        return proxy.ProxyEnsemble(*embeddings.arrays(joined, *columns), val, params, config.reward_repeats, dev)
    if config.proxy_mode == "full":
        make_model = clip_proxy.model_factory(encoder.parsed(), config.seed, dev)
        _, preprocess, tokenizer = make_model()
        pairs = raw_pool.rows(uids.tolist())
        images = clip_train.preprocess_images(pairs["bytes"].to_list(), preprocess, log)
        return clip_proxy.ClipProxy(make_model, images, tokenizer(pairs["caption"].to_list()), tasks,
                                    eval_sets.load_eval_sets(tasks, "validation"), config.full_budget_samples_seen,
                                    seed=config.seed, device=dev, unnamed=unnamed)
    raise ValueError(f"trained_dvn: proxy_mode must be 'head' or 'full', got {config.proxy_mode!r}")


@asset(
    group_name="select", kinds={"pytorch", "safetensors"},
    description=describe(
        "§3.3: the Data Value Network v_θ = σ(MLP([E_q(q), E_r(h_r), E_d(d), E_a(a)])) (eq. 13 with the alignment "
        "stream E_a of the held-out pair cosine, a labelled variant; alignment_stream False: the paper's three), "
        "from θ₀ fitted to a static row (prior; `auto`, the default: of the candidate rows, the one whose top budget "
        "share trains the best target CLIP on the tasks' validation sets), trained by Algorithm 1: "
        "per meta-iteration S(θ) by Bernoulli draws, the proxy adapted on it (eq. 14), the reward J on the tasks' "
        "validation sets (eq. 15), per-cluster finite differences with the same draws (eq. 16), the eq. 17 "
        "policy loss, Adam. In head mode the tasks' weights in J are first scaled by how much of the proxy's "
        "skill a target CLIP trained from scratch reaches (task_alignment). Writes the checkpoint and v(x) for "
        "every deduplicated sample.", DVN_COLUMNS),
)
@one_writer
def trained_dvn(context: AssetExecutionContext, config: TrainedDvnConfig, paths: TadsPaths, budget: Budget,
                encoder: ClipEncoder, device: TorchDevice, raw_pool: RawPool, clip_encoder: ClipEncoderDir,
                pool_embeddings: PoolEmbeddings, quality_scores: QualityScores, relevance_vectors: RelevanceVectors,
                cluster_diversity: Table, task_set: TaskSetFile) -> MaterializeResult:
    if config.task_alignment not in ("target", "none"):
        raise ValueError(f"trained_dvn: task_alignment must be 'target' or 'none', got {config.task_alignment!r}")
    dev, cat, log = device.resolve(), paths.catalog, lambda m: context.log.info(f"trained_dvn: {m}")
    tasks, digest = task_set.read()
    sig = _signals(quality_scores, relevance_vectors, cluster_diversity,
                   pool_embeddings if config.alignment_stream else None)
    rate = draw_rate(budget, raw_pool.height(), len(sig.uids), log)
    params = params_of(config, Algorithm1Params, fdo=params_of(config, FdoParams, rate=rate))
    check_tasks(sig, tasks)
    unnamed = _unnamed_classes(config, tasks, raw_pool, log, lambda m: context.log.warning(f"trained_dvn: {m}"))
    reward = _reward(config, encoder, dev, tasks, sig.uids, raw_pool, pool_embeddings, clip_encoder, cat.frozen_cache_dir,
                     context.log.info, unnamed)
    target, target_cache = None, Counter()
    if config.task_alignment == "target" and config.proxy_mode == "head":
        def target(mask):
            uids = sig.uids[mask].tolist()

            def train():
                pairs = raw_pool.rows(uids)
                return target_scores(pairs["bytes"].to_list(), pairs["caption"].to_list(), tasks, config.target_model,
                                     config.target_budget_samples_seen, config.validation_items, config.seed, dev, log,
                                     unnamed)
            key = target_key(uids, digest, config.target_model, config.target_budget_samples_seen,
                             config.validation_items, config.seed, dev, unnamed)
            scores, hit = cached_target_scores(cat.target_cache_dir, key, train, log)
            target_cache["cached" if hit else "trained"] += 1
            return scores
    joint = (joint_vectors(*pool_embeddings.aligned(sig.uids.tolist(), "image_vec", "text_vec"))
             if config.fdo_cluster_space == "embeddings" else None)
    res = run_algorithm1(sig, tasks, reward, params, joint=joint, target_scores=target, progress=log)
    dvn.save_dvn(res.net, cat.trained_dvn.models, {
        "tasks": [t.name for t in tasks], "tasks_sha256": digest, "log_d_stats": list(res.log_d_stats),
        "alignment_stats": list(res.alignment_stats) if res.alignment_stats else None,
        "fdo": params.fdo.__dict__, "proxy_mode": config.proxy_mode, "init": config.init, "prior": res.prior,
        "prior_setting": config.prior, "prior_trials": res.prior_trials,
        "task_alignment": res.alignment, "reward_top_final": res.reward_top_final,
        "returned_iterate": res.returned_iterate, "reward_top_last_update": res.reward_top_last,
        "metrics_top_final": res.metrics_top_final, "history": res.history})
    scores = pl.DataFrame({"uid": sig.uids, "v": res.v.astype(np.float32), "fdo_cluster": res.clusters.astype(np.int32)})
    write_parquet_atomic(scores, cat.trained_dvn.path)
    meta = _dvn_metadata(res, config, rate, reward, scores, cat, digest)
    meta.update({"budget_rule": MetadataValue.text(budget.rule()), "budget_samples": budget.samples(raw_pool.height()),
                 "draw_rate": rounded(rate)})
    if target_cache:
        meta["target_models"] = MetadataValue.text(", ".join(f"{n} {k}" for k, n in sorted(target_cache.items())))
    meta["classes_scored"] = MetadataValue.text(_classes_scored(tasks, unnamed, config.target_budget_samples_seen))
    blind = [r for r in res.alignment if r.get("proxy_at_chance")]
    meta["tasks_at_chance"] = MetadataValue.text(", ".join(r["task"] for r in blind) or "none")
    for r in blind:
        context.log.warning(
            f"trained_dvn: WARNING the head proxy stays at chance on task {r['task']!r} (Eval_k {r['Eval_k proxy']:.3f}, "
            f"chance {r['chance']:.3f}), so its weight in eq. 15 is {r['φ_k in J']:.2f} and the selection ignores it: "
            "check that its class names and prompts describe what its images show, or give it a larger validation set")
    return MaterializeResult(metadata=meta)


VOCABULARY_CAPTIONS = 200_000  # captions the naming rule counts words in (a seeded sample of larger pools)


def _unnamed_classes(config, tasks, raw_pool: RawPool, log, warn) -> dict[str, list[str]]:
    """Per classification task, the classes the benchmark leaves out of its score (`benchmark.NAMING_RULE` for the
    target model's tokenizer at target_budget_samples_seen, over the pool's captions: the words a CLIP trained from
    scratch on this pool can know). Algorithm 1's validation sets leave them out too, so the rows, the task
    alignment and the reward are judged on the metric Table 1 reports. A task left with fewer than two classes is
    scored over all of them (the benchmark has no metric for it), with a warning."""
    if not any(t.kind == "classification" for t in tasks):
        return {}
    captions = raw_pool.scan().select("caption").collect()["caption"]
    if len(captions) > VOCABULARY_CAPTIONS:
        captions = captions.sample(VOCABULARY_CAPTIONS, seed=config.seed)
    vocabulary = benchmark.Vocabulary.of_captions(captions.to_list(), clip_train.get_tokenizer(config.target_model))
    unnamed = benchmark.unnamed_classes(tasks, vocabulary, config.target_budget_samples_seen)
    out = {}
    for t in tasks:
        left = unnamed.get(t.name)
        if not left:
            continue
        if len(t.classes) - len(left) < 2:
            warn(f"WARNING task {t.name!r}: the pool's captions name fewer than two of its classes ({', '.join(left)} "
                "unnamed), so the benchmark has no metric for it; Algorithm 1 scores it over all its classes")
            continue
        out[t.name] = left
        log(f"task {t.name!r}: {', '.join(left)} left out of its validation score, as the benchmark leaves them out "
            f"of its test score (no word for them in the pool's captions at {config.target_budget_samples_seen} "
            "samples seen)")
    return out


def _classes_scored(tasks, unnamed: dict[str, list[str]], samples_seen: int) -> str:
    parts = []
    for t in tasks:
        if t.kind != "classification":
            continue
        left = unnamed.get(t.name, [])
        named = [c for c in t.classes if c not in left]
        parts.append(f"{t.name}: {len(named)} of {len(t.classes)}" + (f" ({', '.join(left)} unnamed)" if left else ""))
    return ("; ".join(parts) + f" — the benchmark's naming rule at {samples_seen} samples seen") if parts else \
        "no classification task"


MAX_DRAW_RATE = 0.95  # with a budget at or above the candidates there is nothing to select; the draws still need room


def draw_rate(budget: Budget, n_pool: int, n_candidates: int, log) -> float:
    """Algorithm 1's draw rate over the deduplicated pool: the budget in samples over the candidates (at most
    MAX_DRAW_RATE), so the expected draw is the budget whatever share of the pool dedup left."""
    n_budget = budget.samples(n_pool)
    if n_budget >= n_candidates:
        log(f"the budget ({budget.rule()}: {n_budget} samples) is at least the {n_candidates} deduplicated candidates; "
            f"Algorithm 1 draws at {MAX_DRAW_RATE:.0%} and final_subset will keep every candidate")
    return min(MAX_DRAW_RATE, n_budget / max(n_candidates, 1))


def _proxy_features(reward, config) -> str:
    """What the head proxy learns on: per tower, the variance its FeatureReduction keeps (proxy_feature_dims)."""
    kept = getattr(reward, "variance_kept", None)
    if kept is None:
        return f"{config.proxy_mode} proxy: the model's own inputs"
    if not kept:
        return "full-width frozen features"
    return ", ".join(f"{tower}: {share:.1%} of the variance in {config.proxy_feature_dims} dims" for tower, share in kept.items())


def _dvn_metadata(res, config, rate: float, reward, scores: pl.DataFrame, cat, digest: str) -> dict:
    history, v, coarse = res.history, res.v, res.clusters
    rewards = [h["reward"] for h in history]
    # J of the deterministic top-rate selection before each update and after the last one
    top_curve = [h["reward_top"] for h in history if "reward_top" in h] + [res.reward_top_last]
    mean_adv = {}
    for h in history:
        for c, g in h["advantages"].items():
            mean_adv.setdefault(c, []).append(g)
    adv_rows = sorted(({"cluster": c, "size": int((coarse == c).sum()), "probed": len(g), "mean g_C": float(np.mean(g)),
                        "mean v": float(v[coarse == c].mean())} for c, g in mean_adv.items()), key=lambda r: -r["mean g_C"])
    per_iteration = [{"iteration": h["iteration"], "J(S(θ))": h["reward"], "J(top)": h.get("reward_top", float("nan")),
                      "selection rate": h["selection_rate"], **{k: float(m) for k, m in h["metrics"].items()},
                      "rewards": h["rewards"], "seconds": round(h["seconds"], 2)}
                     for h in history]
    n = len(v)
    return {
        "path": MetadataValue.path(str(cat.trained_dvn.models)), "samples": n, "n_in": n, "n_out": n,
        "dagster/column_schema": column_schema(scores, DVN_COLUMNS), "dagster/row_count": scores.height,
        "proxy_mode": MetadataValue.text(config.proxy_mode), "meta_iterations": len(history),
        "proxy_adaptations": reward.n_adaptations,
        "proxy_features": MetadataValue.text(_proxy_features(reward, config)),
        "reward_first": rounded(rewards[0]), "reward_last": rounded(rewards[-1]),
        "reward_gain_last3_vs_first3": rounded(np.mean(rewards[-3:]) - np.mean(rewards[:3])),
        "reward_curve": MetadataValue.md(line_plot_markdown(rewards, "reward J(S(θ)) of each iteration's draw",
                                                            "meta-iteration", "J (eq. 15)")),
        "reward_top_curve": MetadataValue.md(line_plot_markdown(top_curve, f"J of the top {rate:.0%} by v (θ₀, then "
                                                                "after each update)", "meta-iteration", "J (eq. 15)")),
        "reward_top_first": rounded(top_curve[0]), "reward_top_final": rounded(res.reward_top_final),
        "reward_top_last_update": rounded(res.reward_top_last),
        "returned_iterate": MetadataValue.text(f"θ_{res.returned_iterate} of θ_0..θ_{len(history)}"
                                               + (" (the highest J(top))" if config.keep_best else " (the last)")),
        "task_alignment": table(res.alignment) if res.alignment else MetadataValue.text(
            f"off ({config.task_alignment}, proxy {config.proxy_mode}): φ_k as in the task file"),
        "selection_rate_curve": MetadataValue.md(line_plot_markdown([h["selection_rate"] for h in history],
                                                                    "mean v (selection rate)", "meta-iteration", "mean v")),
        "per_iteration": table(per_iteration), "cluster_advantages": table(adv_rows),
        "value_distribution": MetadataValue.md(histogram_markdown({"v(x)": v}, "data value v(x)", "v")),
        "final_selection_rate": rounded(v.mean()),
        "init": MetadataValue.text(config.init if res.prior is None else
                                   f"{config.init} {res.prior} ({row_label(res.prior)}"
                                   + (", chosen by the target model" if res.prior_trials else "")
                                   + ("; θ₀ is the row exactly, FDO learns a correction" if config.init == "residual"
                                      else f"; BCE {res.prior_loss:.4f}") + f", Spearman {res.prior_spearman:.3f})"),
        "prior_choice": table(res.prior_trials) if res.prior_trials else MetadataValue.text(
            "init constant: no static row" if res.prior is None else f"prior {config.prior}"
            + (" without a target model: the first candidate" if config.prior == "auto" else "")),
        "streams": MetadataValue.text("E_q, E_r, E_d, E_a (alignment: held-out pair cosine)" if config.alignment_stream
                                      else "E_q, E_r, E_d (the paper's eq. 13)"),
        "tasks_sha256": MetadataValue.text(digest), "seconds": rounded(res.seconds, 1),
        "seconds_per_meta_iteration_median": rounded(float(np.median([h["seconds"] for h in history])), 2),
    }


FinalSubsetConfig = config_from(
    "FinalSubsetConfig", "{x : v(x) > τ} under the data budget (the `budget` resource, samples set by the readable "
    "raw pool): τ < 0 picks the τ that keeps exactly the budget; an explicit τ is raised if it would keep more. `export` "
    "writes WebDataset shards and an open_clip CSV of the subset under TADS_HOME/exports/tads.",
    extra={"tau": (float, -1.0), "export": (bool, True)})


@asset(
    group_name="select", kinds={"parquet", "webdataset"},
    description=describe("TADS's selection: {x : v(x) > τ} over the deduplicated pool, at most the data budget "
                         "(a share of the readable raw pool, or a count); every sample left out in the ledger with its v, and an export to train on "
                         "(WebDataset shards and an open_clip CSV).", SUBSET_COLUMNS),
)
@one_writer
def final_subset(context: AssetExecutionContext, config: FinalSubsetConfig, paths: TadsPaths, budget: Budget,
                 trained_dvn: Table, raw_pool: RawPool) -> MaterializeResult:
    t0, cat = time.perf_counter(), paths.catalog
    scores = trained_dvn.read()
    v = scores["v"].to_numpy().astype(np.float64)
    n_pool = raw_pool.height()
    n_budget = budget.samples(n_pool)
    th = selection.threshold_selection(v, config.tau, n_budget)
    kept = scores.select("uid", pl.col("v").alias("score")).filter(pl.Series(th.keep))
    drops = _drop_rows(scores.select("uid"), th.keep, "dvn_value_at_or_below_tau", v, f"tau={th.tau:.4f}")
    short = n_budget - kept.height
    short_reason = ("" if short <= 0 else f"only {scores.height} candidates survived deduplication"
                    if scores.height < n_budget else f"τ = {config.tau} keeps fewer than the budget")
    result = write_stage_output(cat.final_subset.dir, paths.ledger(), "final_subset", kept, drops,
                                cat.final_subset.path.name,
                                extra={"budget": n_budget, "budget_rule": budget.rule(), "n_pool": n_pool,
                                       "short_of_budget": max(short, 0), "short_reason": short_reason})
    context.log.info(f"final_subset: kept {kept.height} of {scores.height} (τ {th.tau:.4f}; budget {n_budget} = "
                     f"{budget.rule()} of {n_pool})")
    if short > 0:
        context.log.warning(f"final_subset: {kept.height} samples, {short} short of the budget of {n_budget}: "
                            f"{short_reason}")
    meta = {"path": MetadataValue.path(str(cat.final_subset.dir)), "n_in": scores.height, "n_out": kept.height,
            "dagster/column_schema": column_schema(kept, SUBSET_COLUMNS), "dagster/row_count": kept.height,
            "n_kept": kept.height, "n_dropped": drops.height, "kept_fraction": rounded(kept.height / max(scores.height, 1)),
            "tau": rounded(th.tau), "tau_requested": rounded(th.requested_tau), "tau_raised_by_budget": th.budget_bound,
            "budget_rule": MetadataValue.text(budget.rule()), "budget_samples": n_budget,
            "share_of_raw_pool": rounded(kept.height / max(n_pool, 1)), "short_of_budget": max(short, 0),
            "short_reason": MetadataValue.text(short_reason or "none"), "run_id": MetadataValue.text(result["run_id"]),
            "v_kept_vs_dropped": MetadataValue.md(histogram_markdown(
                {"kept": v[th.keep], "dropped": v[~th.keep]}, "v(x) of kept and dropped samples", "v")),
            "samples_by_value": MetadataValue.md(scored_samples_grid(
                raw_pool, scores["uid"].to_list(), v, "v", "highest and lowest data value v(x) (cf. the paper's Fig. 6)"))}
    if config.export:
        meta.update(export_pairs(raw_pool, kept["uid"].to_list(), cat.export_dir("tads")))
    return MaterializeResult(metadata={**meta, "seconds": rounded(time.perf_counter() - t0, 2)})


def export_pairs(raw_pool: RawPool, uids: list[str], out_dir) -> dict:
    """Write the samples as WebDataset shards and an open_clip CSV; the metadata naming them."""
    pairs = raw_pool.rows(uids)
    exported = clip_train.export_subset(pairs["uid"].to_list(), pairs["bytes"].to_list(), pairs["format"].to_list(),
                                        pairs["caption"].to_list(), out_dir)
    return {"export_webdataset": MetadataValue.path(exported["webdataset"]),
            "export_csv": MetadataValue.path(exported["csv"])}
