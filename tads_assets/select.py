"""select group (DESIGN.md): the baseline selections TADS is compared against, one partition per method.
Assets load, call core, write, report."""

import time

import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from resources import LanceStore, TadsPaths
from tads_assets.characterize import quality_scores
from tads_assets.core import baselines
from tads_assets.core.baselines import BaselineParams
from tads_assets.core.encoder import read_encoder_info
from tads_assets.core.report import histogram_markdown, markdown_table
from tads_assets.core.storage import write_stage_output
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool

baseline_partitions = StaticPartitionsDefinition(list(baselines.METHODS))
SUBSET_FILE = "subset.parquet"


class BaselineSubsetsConfig(Config):
    """Baseline settings; defaults from `tads_assets.core.baselines.BaselineParams`. `size` 0 means: the size
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


def read_subset_uids(paths: TadsPaths, method: str) -> list[str]:
    path = subset_dir(paths, method) / SUBSET_FILE
    if not path.exists():
        raise FileNotFoundError(f"no baseline subset {method!r} at {path}: materialize baseline_subsets[{method}] first")
    return pl.read_parquet(path, columns=["uid"])["uid"].to_list()


def target_size(paths: TadsPaths, config: BaselineSubsetsConfig, n_pool: int) -> tuple[int, str]:
    """(size, where it came from) for the size-matched methods."""
    if config.size:
        return config.size, "config size"
    return baselines.matched_size(paths.parquet_dir("final_subset") / "final_subset.parquet", config.keep_fraction,
                                  n_pool)


@asset(
    group_name="select",
    deps=[raw_pool, clip_encoder, pool_embeddings, deduped_pool, quality_scores],
    partitions_def=baseline_partitions,
    kinds={"parquet"},
    description="The pool selected by the baselines of Table 1, one partition each: no_filter (every readable "
    "sample), random, clip_score (top by held-out image-caption cosine), semdedup (SemDeDup), dbp "
    "(density-based pruning), quality_only (q_φ threshold). random/clip_score/semdedup/dbp share one size "
    "(TADS's subset size when it exists). Every candidate a method drops gets a ledger row.",
)
def baseline_subsets(context: AssetExecutionContext, config: BaselineSubsetsConfig, paths: TadsPaths,
                     lance: LanceStore) -> MaterializeResult:
    method = context.partition_key
    t0 = time.perf_counter()
    builtin = read_encoder_info(paths.models_dir / "clip_encoder")["kind"] == "builtin"
    pool = baselines.load_candidates(paths.parquet_dir("raw_pool"), lance.connect(),
                                     paths.parquet_dir("quality_scores") / "quality_scores.parquet",
                                     paths.frozen_cache_dir if builtin else None)
    size, size_source = target_size(paths, config, len(pool.uids))
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
        "n_in": cand.height, "n_kept": kept.height, "n_dropped": drops.height,
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
