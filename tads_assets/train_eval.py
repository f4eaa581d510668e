"""train_eval group: a CLIP trained from scratch per selection method under one budget of samples seen, and the
zero-shot benchmark table (paper Table 1). Assets load, call the library, write, report."""

import contextlib
import dataclasses
import json
import threading
import time

import polars as pl
from dagster import (AssetDep, AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, StaticPartitionMapping,
                     StaticPartitionsDefinition, asset)

from resources import TadsPaths, TorchDevice, one_writer, one_writer_per_partition
from tads_assets.config import config_from, params_of
from tads_assets.core.atomic import write_bytes_atomic, write_json_atomic
from tads_assets.core.harness import benchmark, clip_train
from tads_assets.core.harness.clip_train import TrainParams
from tads_assets.core.io.catalog import Catalog, TaskSetFile
from tads_assets.core.io.eval_sets import load_eval_sets
from tads_assets.core.report import bar_plot_png, line_plot_markdown, markdown_table, png_markdown
from tads_assets.meta import column_schema, describe, rounded, table
from tads_assets.select import baseline_partitions, baseline_subsets, export_pairs, final_subset

BENCHMARK_COLUMNS = {"method": "the selection (tads, a baseline, a static ablation) or chance",
                     "samples": "the subset's size", "samples_seen": "the training budget",
                     "TASK/top1, TASK/top5": "classification accuracy (percent; top5 only with more than 5 classes)",
                     "TASK/i2t_r1, TASK/t2i_r1": "retrieval recall@1 (percent), hits by caption identity", "average": "mean of the task columns",
                     "repeats": "CLIPs trained on the subset (training seeds); each column is their mean",
                     "average_sd": "standard deviation of the average over the training seeds (empty for one)",
                     "average_runs": "the average of each training seed's CLIP"}
# One CLIP per selection: TADS (final_subset) and every baseline_subsets partition.
training_partitions = StaticPartitionsDefinition(["tads", *baseline_partitions.get_partition_keys()])

TrainedClipConfig = config_from(
    "TrainedClipConfig", "CLIP training (`clip_train.TrainParams`). The same budget for every method is what makes "
    "Table 1 a comparison of data, not of compute. `export`: also write the subset as WebDataset shards + open_clip "
    "CSV under TADS_HOME/exports/. `parallel`: on CPU, how many of a run's partitions train at once, each on one "
    "torch thread (0: one per torch thread; 1: one after another on all of them). `repeats`: CLIPs trained per "
    "subset, seeds seed … seed+repeats−1; benchmark_scores reports their mean and spread (one CLIP trained from "
    "scratch is a noisy measurement of its subset: docs/results.md). A seed's checkpoint of the same subset and "
    "recipe is kept, not trained again.", TrainParams,
    extra={"export": (bool, False), "parallel": (int, 0), "repeats": (int, 1)})


@contextlib.contextmanager
def _cpu_trainings(arguments: dict, n: int):
    """@one_writer_per_partition's concurrency for trained_clip: on CPU, a round of n partitions trains `parallel`
    of them at once (0: one per torch thread), each in its own thread with torch's threads shared out among them
    (restored afterwards); a last round smaller than that (the ninth of 9 partitions, 2 at a time) trains on the
    threads the missing ones leave free. TADS-Tiny-RN's small operators keep two threads of one operator waiting
    on each other: on 2 cores two 1-thread trainings at once measured 1.37x two 2-thread trainings one after
    another (docs/operations.md). A partition's thread count follows from the run's partition count and the
    setting, so results are seeded and repeatable for both; a 1-thread and a 2-thread training of the same subset
    differ in float summation order. On a GPU, one at a time."""
    import torch

    config, context, threads = arguments["config"], arguments["context"], torch.get_num_threads()
    wanted = config.parallel or threads
    if arguments["device"].resolve() != "cpu" or wanted <= 1 or n <= 1:
        yield 1
        return
    workers = min(wanted, n)
    each = max(1, threads // workers)
    context.log.info(f"trained_clip: {n} partitions, {workers} at a time on {each} torch thread(s) each")
    torch.set_num_threads(each)
    try:
        yield workers
    finally:
        torch.set_num_threads(threads)


def _subset_pairs(cat: Catalog, method: str) -> pl.DataFrame:
    """uid, caption, bytes, format of the method's subset, in its order; an uid no longer in raw_pool fails."""
    pairs = cat.raw_pool.rows(cat.subsets.of(method).uids())
    if pairs["bytes"].null_count():
        raise ValueError(f"trained_clip[{method}]: {pairs['bytes'].null_count()} subset uids are not in raw_pool "
                         f"(e.g. {pairs.filter(pl.col('bytes').is_null())['uid'][0]}); rematerialize its subset "
                         "(baseline_subsets or final_subset)")
    return pairs


# images preprocessed by trained_clip in the current run, by uid (the methods' subsets overlap)
_IMAGE_CACHE: dict = {}
_IMAGE_CACHE_LOCK = threading.Lock()


@asset(
    group_name="train_eval", partitions_def=training_partitions, kinds={"pytorch", "safetensors"},
    deps=[AssetDep(baseline_subsets, partition_mapping=StaticPartitionMapping(
        {k: k for k in baseline_partitions.get_partition_keys()})), final_subset],
    backfill_policy=BackfillPolicy.single_run(),
    description="An open_clip CLIP trained from scratch on one method's subset for a fixed budget of samples "
    "seen (a smaller subset gets more epochs), seeded; cuda with bf16 autocast when the device has a GPU. A run "
    "over several partitions trains them in one step (one process start), on CPU several at once (`parallel`).",
)
@one_writer_per_partition(concurrency=_cpu_trainings)
def trained_clip(context: AssetExecutionContext, config: TrainedClipConfig, paths: TadsPaths,
                 device: TorchDevice, partition_key: str) -> dict:
    method, dev, cat = partition_key, device.resolve(), paths.catalog
    if config.repeats < 1:
        raise ValueError(f"trained_clip: repeats must be at least 1, got {config.repeats}")
    pairs = _subset_pairs(cat, method)
    params = params_of(config, TrainParams)
    context.log.info(f"trained_clip[{method}]: {params.model} on {pairs.height} pairs, {params.budget_samples_seen} "
                     f"samples seen, batch {params.batch_size}, device {dev}, {config.repeats} seed(s)")
    with _IMAGE_CACHE_LOCK:
        if _IMAGE_CACHE.get("key") != (context.run_id, params.model):  # one run's partitions share their images
            _IMAGE_CACHE.clear()
            _IMAGE_CACHE.update(key=(context.run_id, params.model), images={})
        images = _IMAGE_CACHE["images"]
    uids, captions, blobs = pairs["uid"].to_list(), pairs["caption"].to_list(), pairs["bytes"].to_list()
    digest = clip_train.pairs_digest(uids, captions, blobs)
    infos, trained = {}, 0
    # the further seeds first, the first seed's checkpoint (which names them) last: a run that stops half way
    # leaves the previous, consistent set for benchmark_scores
    for repeat in [*range(1, config.repeats), 0]:
        run = dataclasses.replace(params, seed=params.seed + repeat)
        out, key = cat.trained_clip.of(method, repeat), clip_train.training_key(digest, dev, **dataclasses.asdict(run))
        tag = f"trained_clip[{method}] seed {run.seed}"
        info = clip_train.kept_checkpoint(out, key)
        if info is not None:
            context.log.info(f"{tag}: the checkpoint of the same subset and recipe is kept ({out})")
        else:
            result = clip_train.train_clip(blobs, captions, run, dev, lambda m, t=tag: context.log.info(f"{t}: {m}"),
                                           uids=uids, image_cache=images)
            info = clip_train.save_trained(result, run, out, {"method": method, "subset_samples": pairs.height,
                                                              "key": key})
            trained += 1
        infos[repeat] = info
    keys = [infos[r]["key"] for r in range(config.repeats)]
    first = cat.trained_clip.of(method)
    if infos[0].get("repeat_keys") != keys:  # which checkpoints benchmark_scores averages
        infos[0] = {**infos[0], "repeat_keys": keys}
        write_json_atomic(infos[0], first / clip_train.INFO)
    info, losses = infos[0], [infos[r]["final_loss"] for r in range(config.repeats)]
    meta = {
        "method": MetadataValue.text(method), "model": MetadataValue.text(params.model),
        "path": MetadataValue.path(str(first)), "subset_samples": pairs.height, "n_in": pairs.height,
        "n_out": pairs.height, "samples_seen": info["samples_seen"], "steps": info["steps"],
        "epochs": rounded(info["epochs"], 2), "final_loss": rounded(info["final_loss"]),
        "seconds": rounded(info["seconds"], 1), "samples_per_s": rounded(info["samples_seen"] / info["seconds"], 1),
        "device": MetadataValue.text(dev), "repeats": config.repeats, "trained": trained,
        "kept": config.repeats - trained,
        "loss_curve": MetadataValue.md(line_plot_markdown(info["loss_curve"], "contrastive loss", "step",
                                                          "loss (moving average)")),
    }
    if config.repeats > 1:
        meta["final_loss_per_seed"] = MetadataValue.text(", ".join(
            f"seed {params.seed + r}: {loss:.4f}" for r, loss in enumerate(losses)))
    if config.export:
        meta.update(export_pairs(cat.raw_pool, uids, cat.export_dir(method)))
    return meta


def checkpoints(cat: Catalog, method: str) -> list:
    """The checkpoint folders of a method's trained_clip: the first seed's, then each further seed's its info names
    (`repeat_keys`); [] when the method has none. A further seed's folder trained for another subset or recipe
    (a run that stopped half way) fails, naming it."""
    first = cat.trained_clip.of(method)
    if not (first / clip_train.CHECKPOINT).exists():
        return []
    keys = json.loads((first / clip_train.INFO).read_text()).get("repeat_keys") or [None]
    folders = [first]
    for repeat, key in enumerate(keys[1:], start=1):
        out = cat.trained_clip.of(method, repeat)
        if clip_train.kept_checkpoint(out, key) is None:
            raise FileNotFoundError(f"trained_clip[{method}]: the checkpoint of its seed {repeat} ({out}) is missing "
                                    f"or was trained for another subset or recipe; materialize trained_clip[{method}] "
                                    "again")
        folders.append(out)
    return folders


def _benchmark_rows(cat: Catalog, tasks, dev: str, log) -> tuple[list[dict], list[str], dict | None, dict]:
    """One Table 1 row per method whose trained_clip checkpoint exists (with several training seeds, each column's
    mean over them, their count and the average's standard deviation); the methods without one; chance; how the
    metrics were defined (`benchmark.definitions`)."""
    eval_sets = load_eval_sets(tasks, "test")
    rows, missing, chance, defined, vocabularies = [], [], None, {}, {}
    captions = None
    for method in training_partitions.get_partition_keys():
        folders = checkpoints(cat, method)
        if not folders:
            missing.append(method)
            continue
        runs = []
        for folder in folders:
            encoder, info = clip_train.load_trained(folder, dev)
            model = info["params"]["model"]
            if model not in vocabularies:  # what a model trained on this pool can have words for (NAMING_RULE)
                captions = captions if captions is not None else cat.raw_pool.scan().select("caption").collect()["caption"]
                vocabularies[model] = benchmark.Vocabulary.of_captions(captions.to_list(), encoder.tokenizer)
            scores = benchmark.evaluate_model(tasks, eval_sets, encoder.encode_images, encoder.encode_texts,
                                              vocabularies[model], info["samples_seen"])
            chance = chance or benchmark.chance_row(scores)
            defined = defined or benchmark.definitions(scores)
            runs.append(benchmark.headline(scores))
        rows.append({"method": method, "samples": info["subset_samples"], "samples_seen": info["samples_seen"],
                     **benchmark.mean_over_runs(runs)})
        spread = f" +- {rows[-1]['average_sd']:.2f} over {len(runs)} seeds" if len(runs) > 1 else ""
        log(f"benchmark_scores: {method} average {rows[-1]['average']:.2f}{spread}")
    return rows, missing, chance, defined


@asset(
    group_name="train_eval", deps=[trained_clip], kinds={"pytorch"},
    description=describe(
        "Zero-shot benchmark of every trained_clip partition on the tasks' test sets, the paper's Table 1 layout "
        "(a row per method and a chance row), written to TADS_HOME/reports/benchmark.{md,json,png}.", BENCHMARK_COLUMNS),
)
@one_writer
def benchmark_scores(context: AssetExecutionContext, paths: TadsPaths, device: TorchDevice,
                     task_set: TaskSetFile) -> MaterializeResult:
    t0, cat = time.perf_counter(), paths.catalog
    tasks, tasks_sha256 = task_set.read()
    rows, missing, chance, defined = _benchmark_rows(cat, tasks, device.resolve(), context.log.info)
    if not rows:
        raise FileNotFoundError("benchmark_scores: no trained_clip partition has a checkpoint yet; materialize "
                                f"trained_clip for at least one of {', '.join(missing)}")
    rows_all = [*rows, {"method": "chance", "samples": None, "samples_seen": None, **chance, "repeats": None,
                        "average_sd": None, "average_runs": None}]
    report = {"tasks_sha256": tasks_sha256, "split": "test", "metrics_in": "percent", "rows": rows_all,
              "not_trained": missing, "metric_definitions": defined}
    runs_text = [{**r, "average_runs": ", ".join(f"{a:.2f}" for a in r["average_runs"] or [])} for r in rows_all]
    shown = [{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in r.items()} for r in runs_text]
    md = ("# Zero-shot benchmark (test sets, percent)\n\n" + markdown_table(shown) + "\n\n" +
          _definitions_markdown(defined))
    png = bar_plot_png([r["method"] for r in rows], [r["average"] for r in rows], "average zero-shot metric",
                       "percent", reference=chance["average"])
    reports = cat.benchmark_scores
    write_json_atomic(report, reports.file("json"))
    write_bytes_atomic((md + "\n").encode(), reports.file("md"))
    write_bytes_atomic(png, reports.file("png"))
    return MaterializeResult(metadata={
        "table": table(runs_text), "dagster/row_count": len(rows_all),
        "dagster/column_schema": column_schema(pl.DataFrame(rows_all, infer_schema_length=None).schema,
                                               {**BENCHMARK_COLUMNS, **{c: "percent" for c in rows[0] if "/" in c}}),
        "average_by_method": MetadataValue.md(png_markdown(png, "average zero-shot metric by method")),
        "methods": len(rows), "n_in": len(rows), "n_out": len(rows_all),
        "not_trained": MetadataValue.text(", ".join(missing) or "none"),
        "best_method": MetadataValue.text(max(rows, key=lambda r: r["average"])["method"]),
        "report": MetadataValue.path(str(reports.file("md"))), "tasks_sha256": MetadataValue.text(tasks_sha256),
        "metric_definitions": MetadataValue.md(_definitions_markdown(defined)),
        "seconds": rounded(time.perf_counter() - t0, 1),
    })


def _definitions_markdown(defined: dict) -> str:
    """The metric definitions under the table: the two rules and what each task's scores rest on."""
    lines = [f"- {defined['top5']}; the average and the chance row use the defined columns only",
             f"- {defined['naming']}", f"- {defined['retrieval']}"]
    for task, info in defined["tasks"].items():
        rest = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in info.items() if k not in ("kind", "definition"))
        lines.append(f"- {task} ({info['kind']}): {rest}")
    return "\n".join(lines)
