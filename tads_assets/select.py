"""select group (DESIGN.md): TADS's selection (§3.3: trained_dvn, final_subset) and the selections it is
compared against (Table 1's baselines and Table 2's static ablations), one partition per method. Assets
load, call core, write, report."""

import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from resources import ClipEncoder, LanceStore, TadsPaths, TorchDevice, one_writer
from tads_assets.characterize import (DIVERSITY_FILE, cluster_diversity, quality_scores, read_task_set,
                                      relevance_vectors, task_set)
from tads_assets.core.harness import baselines, clip_train
from tads_assets.core.method import dvn, fdo, proxy, selection
from tads_assets.core.io import embeddings
from tads_assets.core.harness.baselines import BaselineParams
from tads_assets.core.vectors import kmeans_clusters
from tads_assets.core.method.dvn import DvnConfig
from tads_assets.core.method.encoder import read_encoder_info
from tads_assets.core.method.fdo import FdoParams
from tads_assets.core.io.ingest import scan_raw_pool
from tads_assets.core.method.proxy import ProxyParams
from tads_assets.core.report import histogram_markdown, line_plot_markdown, markdown_table
from tads_assets.core.atomic import write_parquet_atomic
from tads_assets.core.io.storage import write_stage_output
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool, scored_samples_grid

# Table 1's baselines and Table 2's static rows (Q+R, Q+R+D at TADS's size); `tads` itself is final_subset.
STATIC_ABLATIONS = ("q_r", "q_r_d")
baseline_partitions = StaticPartitionsDefinition([*baselines.METHODS, *STATIC_ABLATIONS])
SUBSET_FILE = "subset.parquet"
DVN_SCORES_FILE = "dvn_scores.parquet"


class BaselineSubsetsConfig(Config):
    """Baseline settings; defaults from `tads_assets.core.harness.baselines.BaselineParams`. `size` 0 means: the size
    of TADS's final_subset when it exists, else keep_fraction of the pool."""

    size: int = 0
    keep_fraction: float = BaselineParams.keep_fraction
    n_clusters: int = BaselineParams.n_clusters
    dbp_neighbours: int = BaselineParams.dbp_neighbours
    dbp_temperature: float = BaselineParams.dbp_temperature
    quality_threshold: float = BaselineParams.quality_threshold
    seed: int = BaselineParams.seed


def subset_dir(paths: TadsPaths, method: str):
    return paths.parquet_dir("baseline_subsets") / method


def subset_file(paths: TadsPaths, method: str):
    """Where a method's selected uids live: final_subset for `tads`, baseline_subsets[method] otherwise."""
    if method == "tads":
        return paths.parquet_dir("final_subset") / "final_subset.parquet"
    return subset_dir(paths, method) / SUBSET_FILE


def read_subset_uids(paths: TadsPaths, method: str) -> list[str]:
    path = subset_file(paths, method)
    if not path.exists():
        asset_name = "final_subset" if method == "tads" else f"baseline_subsets[{method}]"
        raise FileNotFoundError(f"no subset {method!r} at {path}: materialize {asset_name} first")
    return pl.read_parquet(path, columns=["uid"])["uid"].to_list()


def subset_pairs(paths: TadsPaths, uids: list[str]) -> pl.DataFrame:
    """uid, caption, bytes, format of the given samples, in the given order."""
    want = pl.DataFrame({"uid": uids})
    frame = scan_raw_pool(paths.parquet_dir("raw_pool")).select("uid", "caption", "bytes", "format").join(
        want.lazy(), on="uid", how="semi").collect()
    return want.join(frame, on="uid", how="left", maintain_order="left")


def _static_ablation(paths: TadsPaths, lance: LanceStore, method: str, size: int) -> tuple[np.ndarray, baselines.Selection]:
    """Table 2's static rows over the deduplicated pool: the top `size` by equal-weight standardised signals."""
    sig = selection.load_signals(paths.parquet_dir("quality_scores") / "quality_scores.parquet", lance.connect(),
                                 paths.parquet_dir("cluster_diversity") / DIVERSITY_FILE)
    score = selection.static_score(sig.q, sig.r, sig.d, selection.ABLATIONS[method])
    keep = selection.threshold_selection(score, -1.0, min(1.0, size / len(score))).keep
    return sig.uids, baselines.Selection(keep, score.astype(np.float32), f"{method}_static_score_below_cutoff",
                                         {"signals": "+".join(selection.ABLATIONS[method])})


def target_size(paths: TadsPaths, config: BaselineSubsetsConfig, n_pool: int) -> tuple[int, str]:
    """(size, where it came from) for the size-matched methods."""
    if config.size:
        return config.size, "config size"
    return baselines.matched_size(paths.parquet_dir("final_subset") / "final_subset.parquet", config.keep_fraction,
                                  n_pool)


@asset(
    group_name="select",
    deps=[raw_pool, clip_encoder, pool_embeddings, deduped_pool, quality_scores, relevance_vectors, cluster_diversity],
    partitions_def=baseline_partitions,
    kinds={"parquet"},
    description="The pool selected by the baselines of Table 1, one partition each: no_filter (every readable "
    "sample), random, clip_score (top by held-out image-caption cosine), semdedup (SemDeDup), dbp "
    "(density-based pruning), quality_only (q_φ threshold). random/clip_score/semdedup/dbp share one size "
    "(TADS's subset size when it exists). q_r and q_r_d are Table 2's static ablations (equal-weight "
    "standardised q_φ, task relevance and log diversity, top at TADS's size, from the deduplicated pool). Every "
    "candidate a method drops gets a ledger row.",
)
@one_writer
def baseline_subsets(context: AssetExecutionContext, config: BaselineSubsetsConfig, paths: TadsPaths,
                     lance: LanceStore) -> MaterializeResult:
    method = context.partition_key
    t0 = time.perf_counter()
    builtin = read_encoder_info(paths.models_dir / "clip_encoder")["kind"] == "builtin"
    pool = baselines.load_candidates(paths.parquet_dir("raw_pool"), lance.connect(),
                                     paths.parquet_dir("quality_scores") / "quality_scores.parquet",
                                     paths.frozen_cache_dir if builtin else None)
    size, size_source = target_size(paths, config, len(pool.uids))
    if method in STATIC_ABLATIONS:
        uids, sel = _static_ablation(paths, lance, method, size)
    else:
        uids, sel = baselines.select(method, pool, BaselineParams(**config.model_dump(exclude={"size"})), size)
    size_source = {"no_filter": "the whole pool", "quality_only": f"q_φ ≥ {config.quality_threshold}"}.get(method, size_source)
    seconds = time.perf_counter() - t0
    cand = pl.DataFrame({"uid": uids})
    kept = cand.with_columns(pl.Series("score", sel.score, pl.Float32)).filter(pl.Series(sel.keep))
    drops = cand.filter(~pl.Series(sel.keep)).with_columns(
        pl.lit("drop").alias("decision"), pl.lit(sel.reason).alias("reason"),
        pl.Series("value", sel.score[~sel.keep], pl.Float64), pl.lit(method).alias("detail"))
    result = write_stage_output(subset_dir(paths, method), paths.ledger(), f"baseline_{method}", kept, drops,
                                SUBSET_FILE)
    context.log.info(f"baseline_subsets[{method}]: kept {kept.height} of {cand.height} ({size_source})")
    info = {k: v for k, v in sel.info.items() if not isinstance(v, list)}
    meta = {
        "method": MetadataValue.text(method), "path": MetadataValue.path(str(subset_dir(paths, method))),
        "n_in": cand.height, "n_out": kept.height, "n_kept": kept.height, "n_dropped": drops.height,
        "kept_fraction": MetadataValue.float(round(kept.height / max(cand.height, 1), 4)),
        "size_from": MetadataValue.text(size_source),
        "image_features": MetadataValue.text("frozen image tower" if builtin else "encoder image_vec"),
        "ledger_stage": MetadataValue.text(f"baseline_{method}"),
        "run_id": MetadataValue.text(result["run_id"]), "seconds": MetadataValue.float(round(seconds, 2)),
        **{k: MetadataValue.float(float(v)) if isinstance(v, float) else v for k, v in info.items()},
    }
    if method != "no_filter":
        meta["score_kept_vs_dropped"] = MetadataValue.md(histogram_markdown(
            {"kept": sel.score[sel.keep], "dropped": sel.score[~sel.keep]}, f"{method}: selection score", "score"))
    if "per_cluster" in sel.info:
        rows = sorted(sel.info["per_cluster"], key=lambda r: -r["quota"])
        meta["per_cluster"] = MetadataValue.md(markdown_table(rows, max_rows=20))
    return MaterializeResult(metadata=meta)


# ------------------------------------------------------------------------------------------------ §3.3


class TrainedDvnConfig(Config):
    """Algorithm 1; defaults from `FdoParams`, `ProxyParams` and `DvnConfig` (tads_assets/core). `proxy_mode`
    `head` (frozen encoder features + trainable projection heads: the CPU default) or `full` (a whole CLIP
    fine-tuned per reward, the paper's setting, for a GPU)."""

    proxy_mode: str = "head"
    init: str = "prior"  # θ₀: "prior" fits v to the static Q+R+D ranking first; "constant": v ≈ init_rate everywhere
    meta_iterations: int = FdoParams.meta_iterations
    fdo_clusters: int = 20  # groups perturbed by eq. 16 (k-means; coarser than the diversity clusters)
    fdo_cluster_space: str = "inputs"  # "inputs": k-means over the DVN's inputs [q, h_r, log d]; "embeddings": over [z_I; z_T]
    probe_clusters: int = FdoParams.probe_clusters
    sigma: float = FdoParams.sigma
    antithetic: bool = FdoParams.antithetic
    lr: float = FdoParams.lr
    beta: float = FdoParams.beta
    surrogate: str = FdoParams.surrogate
    rate: float = 0.4  # the draws' budget (FdoParams.rate); match final_subset's max_fraction
    rate_penalty: float = FdoParams.rate_penalty
    reward_repeats: int = 1  # head proxies (seeds) averaged per reward (each adds ~1 s per reward on the demo)
    validation_items: int = 1000  # per task, from its validation set
    proxy_steps: int = ProxyParams.steps
    proxy_batch_size: int = ProxyParams.batch_size
    proxy_lr: float = ProxyParams.lr
    proxy_embed_dim: int = ProxyParams.embed_dim
    full_budget_samples_seen: int = 4096  # full mode: CLIP fine-tuning budget per reward
    # head mode: weight eq. 15's tasks by how much of the proxy's skill the target model reaches on them
    # (proxy.alignment_factors): one target CLIP trained from scratch on θ₀'s selection, as trained_clip
    # would train it. "none": the task file's φ_k as they are.
    task_alignment: str = "target"
    target_model: str = clip_train.TrainParams.model  # keep equal to trained_clip's model and budget
    target_budget_samples_seen: int = clip_train.TrainParams.budget_samples_seen
    embed_dim: int = DvnConfig.embed_dim
    hidden_dim: int = DvnConfig.hidden_dim
    init_rate: float = DvnConfig.init_rate
    seed: int = FdoParams.seed


def dvn_dir(paths: TadsPaths):
    return paths.models_dir / "trained_dvn"


def _proxy_features(paths: TadsPaths, lance: LanceStore, uids: np.ndarray, builtin: bool) -> tuple[np.ndarray, np.ndarray]:
    """What the head proxy trains on: the builtin encoder's frozen tower features (its heads were fitted on
    this pool, so their outputs would hand the proxy a finished answer), or the open_clip embeddings."""
    want = pl.DataFrame({"uid": uids})
    if builtin:
        frame = embeddings.load_current_frozen_features(paths.parquet_dir("raw_pool"), paths.frozen_cache_dir)
        frame, columns = frame.select("uid", "image_feat", "text_feat"), ("image_feat", "text_feat")
    else:
        frame, columns = embeddings.read_embeddings(lance.connect(), ("uid", "image_vec", "text_vec")), ("image_vec", "text_vec")
    joined = want.join(frame, on="uid", how="left", maintain_order="left")
    if joined[columns[0]].null_count():
        raise ValueError(f"{joined[columns[0]].null_count()} deduplicated samples have no proxy features: "
                         "rematerialize clip_encoder and pool_embeddings")
    return tuple(embeddings.arrays(joined, *columns))


def _joint_vectors(lance: LanceStore, uids: np.ndarray) -> np.ndarray:
    frame = pl.DataFrame({"uid": uids}).join(embeddings.read_embeddings(lance.connect(), ("uid", "image_vec", "text_vec")),
                                             on="uid", how="left", maintain_order="left")
    image, text = embeddings.arrays(frame, "image_vec", "text_vec")
    return np.hstack([image, text]) / np.sqrt(2.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def _reward_fn(context, config: TrainedDvnConfig, paths, lance, encoder: ClipEncoder, dev: str, tasks, uids, builtin):
    """The proxy of the chosen mode, as a callable mask → (J, per-task Eval_k)."""
    if config.proxy_mode == "head":
        image_feats, text_feats = _proxy_features(paths, lance, uids, builtin)
        if builtin:
            towers = encoder.towers(dev)
            enc_i, enc_t = towers.image_features, towers.text_features
        else:
            model = encoder.open_clip(dev)
            enc_i, enc_t = model.encode_images, model.encode_texts
        val = proxy.validation_tasks(tasks, enc_i, enc_t, "validation", config.validation_items, config.seed)
        params = ProxyParams(embed_dim=config.proxy_embed_dim, steps=config.proxy_steps,
                             batch_size=config.proxy_batch_size, lr=config.proxy_lr, seed=config.seed)
        return proxy.ProxyEnsemble(image_feats, text_feats, val, params, config.reward_repeats, dev)
    if config.proxy_mode == "full":
        import torch

        from tads_assets.core.harness import benchmark
        from tads_assets.core.harness.clip_train import create_model, preprocess_images, TrainParams

        kind, name, weights = encoder.parsed()

        def make_model():
            torch.manual_seed(config.seed)
            if kind == "builtin":
                return create_model(TrainParams.model, dev)
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=dev)
            return model, preprocess, open_clip.get_tokenizer(name)

        _, preprocess, tokenizer = make_model()
        pairs = subset_pairs(paths, uids.tolist())
        images = preprocess_images(pairs["bytes"].to_list(), preprocess, context.log.info)
        val_sets = benchmark.load_eval_sets(tasks, "validation")
        return proxy.ClipProxy(make_model, images, tokenizer(pairs["caption"].to_list()), tasks, val_sets,
                               config.full_budget_samples_seen, seed=config.seed, device=dev)
    raise ValueError(f"trained_dvn: proxy_mode must be 'head' or 'full', got {config.proxy_mode!r}")


def _align_tasks(context, config: TrainedDvnConfig, paths, dev: str, tasks, uids: np.ndarray, mask: np.ndarray,
                 reward: proxy.ProxyEnsemble) -> list[dict]:
    """Train the target CLIP from scratch on `mask`'s samples (θ₀'s selection at the budget), score it and the
    head proxy adapted on the same samples on the same validation items, and multiply each φ_k by its
    alignment factor. Returns the per-task table for the metadata."""
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    model, preprocess, tokenizer = clip_train.create_model(config.target_model, dev)
    pairs = subset_pairs(paths, uids[mask].tolist())
    params = clip_train.TrainParams(model=config.target_model, budget_samples_seen=config.target_budget_samples_seen,
                                    seed=config.seed)
    context.log.info(f"trained_dvn: task alignment: training {config.target_model} from scratch on θ₀'s "
                     f"{len(pairs)} samples ({params.budget_samples_seen} samples seen)")
    res = clip_train.train_on_tensors(model, clip_train.preprocess_images(pairs["bytes"].to_list(), preprocess, context.log.info),
                                      tokenizer(pairs["caption"].to_list()), params, dev, progress=context.log.info)
    enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer, dev)
    target_val = proxy.validation_tasks(tasks, enc.encode_images, enc.encode_texts, "validation",
                                        config.validation_items, config.seed)
    target = proxy.evaluate_embeddings(target_val, lambda x: x, lambda x: x)
    _, proxy_scores = reward.reward(mask)
    chance = proxy.chance_levels(reward.val)
    factors = proxy.alignment_factors(target, proxy_scores, chance)
    reward.reweight({t.name: t.weight * factors[t.name] for t in tasks})
    if not any(t.weight * factors[t.name] > 0 for t in tasks):
        raise ValueError("trained_dvn: the target model stays at chance on every task after "
                         f"{params.budget_samples_seen} samples seen ({target}), so no task can reward a "
                         "selection: raise target_budget_samples_seen or set task_alignment: none")
    rows = [{"task": t.name, "φ_k (task file)": t.weight, "chance": chance[t.name], "Eval_k proxy": proxy_scores[t.name],
             "Eval_k target": target[t.name], "a_k": factors[t.name], "φ_k in J": t.weight * factors[t.name]}
            for t in tasks]
    context.log.info("trained_dvn: task alignment (" + f"{time.perf_counter() - t0:.0f} s): " + ", ".join(
        f"{r['task']} proxy {r['Eval_k proxy']:.3f} target {r['Eval_k target']:.3f} chance {r['chance']:.3f} "
        f"→ a_k {r['a_k']:.2f}" for r in rows))
    return rows


@asset(
    group_name="select",
    deps=[quality_scores, relevance_vectors, cluster_diversity, task_set, clip_encoder],
    kinds={"pytorch", "safetensors"},
    description="§3.3: the Data Value Network v_θ = σ(MLP([E_q(q), E_r(h_r), E_d(d)])) (eq. 13) trained by "
    "Algorithm 1: per meta-iteration S(θ) by Bernoulli draws, the proxy adapted on it (eq. 14), the reward J "
    "on the tasks' validation sets (eq. 15), per-cluster finite differences with the same draws (eq. 16), the "
    "eq. 17 policy loss, Adam. In head mode the tasks' weights in J are first scaled by how much of the proxy's "
    "skill a target CLIP trained from scratch reaches (task_alignment). Writes the checkpoint and v(x) for every "
    "deduplicated sample.",
)
@one_writer
def trained_dvn(context: AssetExecutionContext, config: TrainedDvnConfig, paths: TadsPaths, lance: LanceStore,
                encoder: ClipEncoder, device: TorchDevice) -> MaterializeResult:
    import torch

    t0 = time.perf_counter()
    if config.init not in ("prior", "constant"):
        raise ValueError(f"trained_dvn: init must be 'prior' or 'constant', got {config.init!r}")
    if config.task_alignment not in ("target", "none"):
        raise ValueError(f"trained_dvn: task_alignment must be 'target' or 'none', got {config.task_alignment!r}")
    dev = device.resolve()
    tasks, digest = read_task_set(paths)
    sig = selection.load_signals(paths.parquet_dir("quality_scores") / "quality_scores.parquet", lance.connect(),
                                 paths.parquet_dir("cluster_diversity") / DIVERSITY_FILE)
    if sig.task_names != [t.name for t in tasks]:
        raise ValueError(f"relevance_vectors were computed for tasks {sig.task_names}, the task set has "
                         f"{[t.name for t in tasks]}: rematerialize relevance_vectors")
    builtin = read_encoder_info(paths.models_dir / "clip_encoder")["kind"] == "builtin"
    stats = dvn.log_d_stats(sig.d)
    inputs = dvn.standardise_inputs(sig.q, sig.h_r, sig.d, stats)
    if config.fdo_cluster_space == "inputs":
        coarse = fdo.input_space_groups(inputs, config.fdo_clusters, seed=config.seed)
    elif config.fdo_cluster_space == "embeddings":
        coarse = kmeans_clusters(_joint_vectors(lance, sig.uids), config.fdo_clusters, seed=config.seed)
    else:
        raise ValueError(f"trained_dvn: fdo_cluster_space must be 'inputs' or 'embeddings', got {config.fdo_cluster_space!r}")
    reward = _reward_fn(context, config, paths, lance, encoder, dev, tasks, sig.uids, builtin)
    torch.manual_seed(config.seed)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=len(tasks), embed_dim=config.embed_dim,
                                             hidden_dim=config.hidden_dim, init_rate=config.init_rate))
    prior_loss = None
    if config.init == "prior":
        prior = selection.static_score(sig.q, sig.r, sig.d, selection.ABLATIONS["q_r_d"])
        prior_loss = dvn.fit_prior(net, inputs, prior, seed=config.seed)
    with torch.no_grad():
        v0 = net(*inputs).double().numpy()
    if prior_loss is not None:
        context.log.info(f"trained_dvn: θ₀ fitted to the static Q+R+D ranking (BCE {prior_loss:.4f}, Spearman "
                         f"{_spearman(v0, prior):.3f})")
    params = FdoParams(meta_iterations=config.meta_iterations, probe_clusters=config.probe_clusters,
                       sigma=config.sigma, antithetic=config.antithetic, lr=config.lr, beta=config.beta,
                       surrogate=config.surrogate, rate=config.rate, rate_penalty=config.rate_penalty,
                       seed=config.seed)
    alignment = []
    if config.task_alignment == "target" and config.proxy_mode == "head":
        alignment = _align_tasks(context, config, paths, dev, tasks, sig.uids, fdo.top_fraction(v0, config.rate), reward)
    context.log.info(f"trained_dvn: {len(sig.uids)} samples, {len(np.unique(coarse))} FDO clusters, "
                     f"{len(tasks)} tasks, proxy {config.proxy_mode} on {dev}")
    history = fdo.train_dvn(net, inputs, coarse, reward.reward, params, context.log.info)
    with torch.no_grad():
        v = net(*inputs).double().numpy()
    j_final, metrics_final = reward.reward(fdo.top_fraction(v, config.rate))
    seconds = time.perf_counter() - t0
    out = dvn_dir(paths)
    dvn.save_dvn(net, out, {"tasks": [t.name for t in tasks], "tasks_sha256": digest, "log_d_stats": list(stats),
                            "fdo": params.__dict__, "proxy_mode": config.proxy_mode, "init": config.init,
                            "task_alignment": alignment, "reward_top_final": j_final,
                            "metrics_top_final": metrics_final, "history": history})
    scores = pl.DataFrame({"uid": sig.uids, "v": v.astype(np.float32), "fdo_cluster": coarse.astype(np.int32)})
    write_parquet_atomic(scores, paths.parquet_dir("trained_dvn") / DVN_SCORES_FILE)
    rewards = [h["reward"] for h in history]
    # J of the deterministic top-rate selection before each update and after the last one
    top_curve = [h["reward_top"] for h in history if "reward_top" in h] + [j_final]
    mean_adv = {}
    for h in history:
        for c, g in h["advantages"].items():
            mean_adv.setdefault(c, []).append(g)
    adv_rows = sorted(({"cluster": c, "size": int((coarse == c).sum()), "probed": len(g), "mean g_C": float(np.mean(g)),
                        "mean v": float(v[coarse == c].mean())} for c, g in mean_adv.items()), key=lambda r: -r["mean g_C"])
    per_iteration = [{"iteration": h["iteration"], "J(S(θ))": h["reward"], "J(top)": h.get("reward_top", float("nan")),
                      "selection rate": h["selection_rate"], **{k: float(m) for k, m in h["metrics"].items()}}
                     for h in history]
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(out)), "samples": len(sig.uids), "n_in": len(sig.uids), "n_out": len(sig.uids), "proxy_mode": MetadataValue.text(config.proxy_mode),
        "meta_iterations": len(history), "proxy_adaptations": reward.n_adaptations,
        "reward_first": MetadataValue.float(rewards[0]), "reward_last": MetadataValue.float(rewards[-1]),
        "reward_gain_last3_vs_first3": MetadataValue.float(float(np.mean(rewards[-3:]) - np.mean(rewards[:3]))),
        "reward_curve": MetadataValue.md(line_plot_markdown(rewards, "reward J(S(θ)) of each iteration's draw",
                                                            "meta-iteration", "J (eq. 15)")),
        "reward_top_curve": MetadataValue.md(line_plot_markdown(top_curve, f"J of the top {config.rate:.0%} by v "
                                                                "(θ₀, then after each update)", "meta-iteration", "J (eq. 15)")),
        "reward_top_first": MetadataValue.float(top_curve[0]), "reward_top_final": MetadataValue.float(j_final),
        "task_alignment": MetadataValue.md(markdown_table(alignment) if alignment else
                                           f"off ({config.task_alignment}, proxy {config.proxy_mode}): φ_k as in the task file"),
        "selection_rate_curve": MetadataValue.md(line_plot_markdown([h["selection_rate"] for h in history],
                                                                    "mean v (selection rate)", "meta-iteration", "mean v")),
        "per_iteration": MetadataValue.md(markdown_table(per_iteration)),
        "cluster_advantages": MetadataValue.md(markdown_table(adv_rows)),
        "value_distribution": MetadataValue.md(histogram_markdown({"v(x)": v}, "data value v(x)", "v")),
        "final_selection_rate": MetadataValue.float(float(v.mean())),
        "init": MetadataValue.text(config.init if prior_loss is None else f"prior (BCE {prior_loss:.4f})"),
        "tasks_sha256": MetadataValue.text(digest), "seconds": MetadataValue.float(round(seconds, 1)),
    })


class FinalSubsetConfig(Config):
    """{x : v(x) > τ} under a data budget: τ < 0 picks the τ that keeps exactly `max_fraction` of the
    deduplicated pool; an explicit τ is raised if it would keep more. `export` writes WebDataset shards and
    an open_clip CSV of the subset under TADS_HOME/exports/tads."""

    tau: float = -1.0
    max_fraction: float = 0.4
    export: bool = True


@asset(
    group_name="select",
    deps=[trained_dvn],
    kinds={"parquet", "webdataset"},
    description="TADS's selection: {x : v(x) > τ} over the deduplicated pool, at most max_fraction of it; "
    "Parquet of uids and v, every sample left out in the ledger with its v, and an export to train on "
    "(WebDataset shards and an open_clip CSV).",
)
@one_writer
def final_subset(context: AssetExecutionContext, config: FinalSubsetConfig, paths: TadsPaths) -> MaterializeResult:
    t0 = time.perf_counter()
    scores = pl.read_parquet(paths.parquet_dir("trained_dvn") / DVN_SCORES_FILE)
    v = scores["v"].to_numpy().astype(np.float64)
    th = selection.threshold_selection(v, config.tau, config.max_fraction)
    keep = pl.Series(th.keep)
    kept = scores.select("uid", pl.col("v").alias("score")).filter(keep)
    drops = scores.filter(~keep).select(
        "uid", pl.lit("drop").alias("decision"), pl.lit("dvn_value_at_or_below_tau").alias("reason"),
        pl.col("v").cast(pl.Float64).alias("value"), pl.lit(f"tau={th.tau:.4f}").alias("detail"))
    result = write_stage_output(paths.parquet_dir("final_subset"), paths.ledger(), "final_subset", kept, drops,
                                "final_subset.parquet", extra={"max_fraction": config.max_fraction})
    context.log.info(f"final_subset: kept {kept.height} of {scores.height} (τ {th.tau:.4f})")
    meta = {"path": MetadataValue.path(str(paths.parquet_dir("final_subset"))), "n_in": scores.height,
            "n_out": kept.height, "n_kept": kept.height, "n_dropped": drops.height,
            "kept_fraction": MetadataValue.float(round(kept.height / max(scores.height, 1), 4)),
            "tau": MetadataValue.float(th.tau), "tau_requested": MetadataValue.float(th.requested_tau),
            "tau_raised_by_budget": th.budget_bound, "max_fraction": MetadataValue.float(config.max_fraction), "run_id": MetadataValue.text(result["run_id"]),
            "v_kept_vs_dropped": MetadataValue.md(histogram_markdown(
                {"kept": v[th.keep], "dropped": v[~th.keep]}, "v(x) of kept and dropped samples", "v")),
            "samples_by_value": MetadataValue.md(scored_samples_grid(
                paths, scores["uid"].to_list(), v, "v", "highest and lowest data value v(x) (cf. the paper's Fig. 6)"))}
    if config.export:
        pairs = subset_pairs(paths, kept["uid"].to_list())
        exported = clip_train.export_subset(pairs["uid"].to_list(), pairs["bytes"].to_list(), pairs["format"].to_list(),
                                            pairs["caption"].to_list(), paths.root / "exports" / "tads")
        meta["export_webdataset"] = MetadataValue.path(exported["webdataset"])
        meta["export_csv"] = MetadataValue.path(exported["csv"])
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return MaterializeResult(metadata=meta)
