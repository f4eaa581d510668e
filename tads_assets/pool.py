"""pool group: the raw pool, read from the configured source into Parquet."""


import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from resources import TadsPaths
from tads_assets.core import formats, ingest
from tads_assets.core.report import histogram_markdown, markdown_table


class RawPoolConfig(Config):
    """Ingestion limits. Samples beyond them are ledgered, not raised."""

    max_image_pixels: int = 50_000_000
    max_caption_chars: int = 4_000
    rows_per_file: int = 5_000


@asset(
    group_name="pool",
    kinds={"parquet", "polars"},
    description="The raw pool (TADS_POOL) as Parquet: uid, url, caption, image_ref, width, height, sha256, bytes. "
    "Unreadable images, bad captions, duplicate keys and broken shards go to the decisions ledger.",
)
def raw_pool(context: AssetExecutionContext, config: RawPoolConfig, paths: TadsPaths) -> MaterializeResult:
    if paths.pool == "demo":
        context.log.info(f"raw_pool: demo pool of {paths.demo_samples} samples under {paths.demo_dir} "
                         "(generated on first use, about 20 s for 10,000)")
    spec = paths.pool_spec()
    shards = formats.list_shards(spec)
    context.log.info(f"raw_pool: reading {len(shards)} shard(s) of {spec}")
    limits = formats.IngestLimits(config.max_image_pixels, config.max_caption_chars)
    result = ingest.ingest_pool(shards, paths.parquet_dir("raw_pool"), paths.ledger(), source=str(spec),
                                limits=limits, rows_per_file=config.rows_per_file, progress=context.log.info)
    sizes = ingest.scan_raw_pool(result.out_dir).select("width", "height", "format", pl.col("bytes").bin.size().alias("n_bytes")).collect()
    return MaterializeResult(
        metadata={
            "source": MetadataValue.text(str(spec)),
            "path": MetadataValue.path(str(result.out_dir)),
            "run_id": MetadataValue.text(result.run_id),
            "n_in": MetadataValue.int(result.n_seen),
            "n_kept": MetadataValue.int(result.n_kept),
            "n_dropped": MetadataValue.int(result.n_dropped),
            "dropped_by_reason": MetadataValue.md(markdown_table(
                [{"reason": r, "samples": n} for r, n in result.reasons.items()])),
            "dropped_examples": MetadataValue.md(markdown_table(result.examples, ["uid", "reason", "detail"])),
            "per_shard": MetadataValue.md(markdown_table(
                [{"shard": s.shard, "seen": s.n_seen, "kept": s.n_kept, "dropped": sum(s.reasons.values())}
                 for s in result.shards])),
            "image_formats": MetadataValue.md(markdown_table(
                sizes.group_by("format").len("samples").sort("samples", descending=True).to_dicts())),
            "image_sizes": MetadataValue.md(histogram_markdown(
                {"width": sizes["width"].to_numpy(), "height": sizes["height"].to_numpy()},
                "image width and height", "pixels")),
            "median_image_kib": MetadataValue.float(float(sizes["n_bytes"].median() or 0) / 1024),
            "seconds": MetadataValue.float(round(result.seconds, 2)),
            "samples_per_s": MetadataValue.float(round(result.samples_per_s, 1)),
        }
    )
