"""train_eval group (DESIGN.md): a CLIP trained from scratch per selection method under one budget of
samples seen, and the zero-shot benchmark table (paper Table 1). Assets load, call core, write, report."""

import time

import polars as pl
from dagster import (AssetDep, AssetExecutionContext, Config, MaterializeResult, MetadataValue, StaticPartitionMapping,
                     StaticPartitionsDefinition, asset)

from resources import TadsPaths, TorchDevice, one_writer
from tads_assets.core.harness import benchmark, clip_train
from tads_assets.core.harness.clip_train import TrainParams
from tads_assets.core.report import bar_plot_png, line_plot_markdown, markdown_table, png_markdown
from tads_assets.core.atomic import write_bytes_atomic, write_json_atomic
from tads_assets.characterize import read_task_set, task_set
from tads_assets.select import baseline_partitions, baseline_subsets, final_subset, read_subset_uids, subset_pairs

# One CLIP per selection: TADS (final_subset) and every baseline_subsets partition.
training_partitions = StaticPartitionsDefinition(["tads", *baseline_partitions.get_partition_keys()])


class TrainedClipConfig(Config):
    """CLIP training; defaults from `tads_assets.core.harness.clip_train.TrainParams`. The same budget for every
    method is what makes Table 1 a comparison of data, not of compute."""

    model: str = TrainParams.model
    budget_samples_seen: int = TrainParams.budget_samples_seen
    batch_size: int = TrainParams.batch_size
    lr: float = TrainParams.lr
    weight_decay: float = TrainParams.weight_decay
    warmup_steps: int = TrainParams.warmup_steps
    seed: int = TrainParams.seed
    export: bool = False  # also write the subset as WebDataset shards + open_clip CSV under TADS_HOME/exports/


def model_dir(paths: TadsPaths, method: str):
    return paths.models_dir / "trained_clip" / method


@asset(
    group_name="train_eval",
    deps=[AssetDep(baseline_subsets, partition_mapping=StaticPartitionMapping(
        {k: k for k in baseline_partitions.get_partition_keys()})), final_subset],
    partitions_def=training_partitions,
    kinds={"pytorch", "safetensors"},
    description="An open_clip CLIP trained from scratch on one method's subset for a fixed budget of samples "
    "seen (a smaller subset gets more epochs), seeded; cuda with bf16 autocast when the device has a GPU.",
)
@one_writer
def trained_clip(context: AssetExecutionContext, config: TrainedClipConfig, paths: TadsPaths,
                 device: TorchDevice) -> MaterializeResult:
    method = context.partition_key
    dev = device.resolve()
    pairs = subset_pairs(paths, read_subset_uids(paths, method))
    if pairs["bytes"].null_count():
        raise ValueError(f"trained_clip[{method}]: {pairs['bytes'].null_count()} subset uids are not in raw_pool "
                         f"(e.g. {pairs.filter(pl.col('bytes').is_null())['uid'][0]}); rematerialize its subset (baseline_subsets or final_subset)")
    params = TrainParams(**config.model_dump(exclude={"export"}))
    context.log.info(f"trained_clip[{method}]: {params.model} on {pairs.height} pairs, {params.budget_samples_seen} "
                     f"samples seen, batch {params.batch_size}, device {dev}")
    result = clip_train.train_clip(pairs["bytes"].to_list(), pairs["caption"].to_list(), params, dev, context.log.info)
    out = model_dir(paths, method)
    summary = clip_train.save_trained(result, params, out, {"method": method, "subset_samples": pairs.height})
    meta = {
        "method": MetadataValue.text(method), "model": MetadataValue.text(params.model),
        "path": MetadataValue.path(str(out)), "subset_samples": pairs.height,
        "n_in": pairs.height, "n_out": pairs.height,
        "samples_seen": summary["samples_seen"], "steps": result.steps,
        "epochs": MetadataValue.float(round(result.epochs, 2)),
        "final_loss": MetadataValue.float(round(result.loss_per_step[-1], 4)),
        "seconds": MetadataValue.float(round(result.seconds, 1)),
        "samples_per_s": MetadataValue.float(round(result.samples_per_s, 1)), "device": MetadataValue.text(dev),
        "loss_curve": MetadataValue.md(line_plot_markdown(clip_train.smooth(result.loss_per_step), "contrastive loss",
                                                          "step", "loss (moving average)")),
    }
    if config.export:
        exported = clip_train.export_subset(pairs["uid"].to_list(), pairs["bytes"].to_list(), pairs["format"].to_list(),
                                            pairs["caption"].to_list(), paths.root / "exports" / method)
        meta["export_webdataset"] = MetadataValue.path(exported["webdataset"])
        meta["export_csv"] = MetadataValue.path(exported["csv"])
    return MaterializeResult(metadata=meta)


@asset(
    group_name="train_eval",
    deps=[trained_clip, task_set],
    kinds={"pytorch"},
    description="Zero-shot benchmark of every trained_clip partition on the tasks' test sets: top-1/top-5 per "
    "classification task, image→text and text→image R@1 per retrieval task, their average, chance beside "
    "them; the paper's Table 1 layout. Also written to TADS_HOME/reports/benchmark.{md,json,png}.",
)
@one_writer
def benchmark_scores(context: AssetExecutionContext, paths: TadsPaths, device: TorchDevice) -> MaterializeResult:
    dev = device.resolve()
    tasks, tasks_sha256 = read_task_set(paths)
    eval_sets = benchmark.load_eval_sets(tasks, "test")
    rows, missing, chance = [], [], None
    t0 = time.perf_counter()
    for method in training_partitions.get_partition_keys():
        ckpt = model_dir(paths, method)
        if not (ckpt / clip_train.CHECKPOINT).exists():
            missing.append(method)
            continue
        encoder, info = clip_train.load_trained(ckpt, dev)
        scores = benchmark.evaluate_model(tasks, eval_sets, encoder.encode_images, encoder.encode_texts)
        chance = chance or benchmark.chance_row(scores)
        rows.append({"method": method, "samples": info["subset_samples"], "samples_seen": info["samples_seen"],
                     **benchmark.headline(scores)})
        context.log.info(f"benchmark_scores: {method} average {rows[-1]['average']:.2f}")
    if not rows:
        raise FileNotFoundError("benchmark_scores: no trained_clip partition has a checkpoint yet; materialize "
                                f"trained_clip for at least one of {', '.join(missing)}")
    table = [*rows, {"method": "chance", "samples": None, "samples_seen": None, **chance}]
    report = {"tasks_sha256": tasks_sha256, "split": "test",
              "metrics_in": "percent", "rows": table, "not_trained": missing}
    shown = [{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in r.items()} for r in table]
    md = "# Zero-shot benchmark (test sets, percent)\n\n" + markdown_table(shown)
    png = bar_plot_png([r["method"] for r in rows], [r["average"] for r in rows], "average zero-shot metric",
                       "percent", reference=chance["average"])
    paths.reports_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, paths.reports_dir / "benchmark.json")
    write_bytes_atomic((md + "\n").encode(), paths.reports_dir / "benchmark.md")
    write_bytes_atomic(png, paths.reports_dir / "benchmark.png")
    return MaterializeResult(metadata={
        "table": MetadataValue.md(markdown_table(shown)),
        "average_by_method": MetadataValue.md(png_markdown(png, "average zero-shot metric by method")),
        "methods": len(rows), "n_in": len(rows), "n_out": len(table), "not_trained": MetadataValue.text(", ".join(missing) or "none"),
        "best_method": MetadataValue.text(max(rows, key=lambda r: r["average"])["method"]),
        "report": MetadataValue.path(str(paths.reports_dir / "benchmark.md")),
        "tasks_sha256": MetadataValue.text(report["tasks_sha256"]),
        "seconds": MetadataValue.float(round(time.perf_counter() - t0, 1)),
    })

