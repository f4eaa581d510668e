"""Automation (docs/operations.md): a sensor that re-runs the task-dependent part of the graph when the task
file changes, and a weekly schedule that refreshes the whole graph. Both are on by default.

The weekly refresh runs every unpartitioned asset (the per-part scale-out assets, frozen_features and
operator_features, are partitioned by raw_pool part and run as backfills; the unpartitioned stages compute any part
they find missing). What a task change recomputes is read off the asset graph, not listed by hand: `task_set` and everything downstream
of it, except `baseline_subsets` (its partitions are other selection methods, scored against TADS; one run cannot
mix its partitions with trained_clip's). trained_clip runs for the `tads` partition. The pool, embeddings,
deduplication, features, weak labels, quality scores and cluster diversity do not depend on the tasks and are not
recomputed.
"""

from __future__ import annotations

from dagster import (AssetSelection, DefaultScheduleStatus, DefaultSensorStatus, RunRequest, ScheduleEvaluationContext,
                     SensorEvaluationContext, SensorResult, SkipReason, define_asset_job, schedule, sensor)

from resources import TadsPaths
from tads_assets.characterize import operator_features, task_set
from tads_assets.core.io.tasks import task_set_hash
from tads_assets.pool import frozen_features
from tads_assets.select import baseline_subsets
from tads_assets.train_eval import benchmark_scores, trained_clip

TADS_PARTITION = "tads"
SENSOR_INTERVAL_S = 30
# Sunday 03:00 (the Dagster instance's time zone: UTC unless set)
WEEKLY_CRON = "0 3 * * 0"

# baseline_subsets is partitioned by other methods: it is refreshed by tads_baselines (tads run, make demo, a UI backfill)
TASK_DEPENDENT = AssetSelection.assets(task_set).downstream() - AssetSelection.assets(baseline_subsets)
# the per-part assets are partitioned by raw_pool part: a backfill runs them; the unpartitioned assets compute any
# part they left undone themselves
PER_PART = AssetSelection.assets(frozen_features, operator_features)
WHOLE_GRAPH = AssetSelection.all() - AssetSelection.assets(baseline_subsets) - PER_PART

# every unpartitioned asset up to TADS's subset: what `make demo` runs first, and a user's run on their own pool
SELECTION = WHOLE_GRAPH - AssetSelection.assets(trained_clip, benchmark_scores)

selection_job = define_asset_job(
    "tads_selection", selection=SELECTION,
    description="The pool, its characterisation, trained_dvn and final_subset (TADS's subset, exported): every "
    "unpartitioned asset up to the selection, with their checks. The baselines and the CLIPs trained per method "
    "follow in tads_baselines and tads_methods (tads run, make demo).")
baselines_job = define_asset_job(
    "tads_baselines", selection=AssetSelection.assets(baseline_subsets),
    description="Every baseline and static ablation's subset (baseline_subsets); a run over all its partitions is "
    "one step (single-run backfill policy). `tads run` launches it over every partition.")
methods_job = define_asset_job(
    "tads_methods", selection=AssetSelection.assets(trained_clip, benchmark_scores),
    description="A CLIP trained on each method's subset (trained_clip, one step for every partition of the run) and "
    "the benchmark table. `tads run` launches it over every partition.")
# what `tads run` (and make demo) executes, in order
DEMO_JOBS = ("tads_selection", "tads_baselines", "tads_methods")
task_change_job = define_asset_job(
    "tads_task_change", selection=TASK_DEPENDENT,
    description="task_set and everything downstream of it (relevance_vectors, trained_dvn, final_subset, "
    "trained_clip[tads], benchmark_scores); launched by the task-file sensor. Nothing upstream of the tasks.")
tads_full_job = define_asset_job(
    "tads_full", selection=WHOLE_GRAPH,
    description="The whole graph for TADS's own selection, in order: the pool, characterisation, trained_dvn, "
    "final_subset, trained_clip (run for the `tads` partition) and benchmark_scores. baseline_subsets and the "
    "baselines' trained_clip partitions run in tads_baselines and tads_methods (tads run, make demo, or a backfill).")


def _materialized_tasks_sha256(paths: TadsPaths) -> str | None:
    """The sha256 of the task file task_set last materialized, or None if it never was."""
    tasks = paths.catalog.task_set
    if not tasks.path.exists():
        return None
    return tasks.read()[1]


def task_change_decision(current: str | None, cursor: str | None, materialized: str | None) -> tuple[bool, str]:
    """Whether a task-file hash calls for a run, and why. `cursor` is the hash the sensor saw last; without one
    (first evaluation) the reference is the hash task_set was materialized from."""
    if current is None:
        return False, "the task file cannot be read"
    reference = cursor or materialized
    if reference is None:
        return False, "task_set was never materialized: run the whole graph first (make demo, the tads_full job)"
    if current == reference:
        return False, f"task file unchanged (sha256 {current[:12]})"
    return True, f"task file changed: sha256 {reference[:12]} -> {current[:12]}"


@sensor(job=task_change_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=DefaultSensorStatus.RUNNING,
        description="Watches TADS_TASKS (content sha256). When it changes, launches one run of task_set and "
        "everything downstream (tads_task_change); the pool and its characterisation are not recomputed.")
def task_file_sensor(context: SensorEvaluationContext, paths: TadsPaths) -> SensorResult | SkipReason:
    path = paths.tasks_path(generate=False)  # never generate the demo pool from a sensor tick
    try:
        current = task_set_hash(path)
    except OSError as err:
        context.log.warning(f"task_file_sensor: cannot read {path}: {err}")
        current = None
    run, why = task_change_decision(current, context.cursor, _materialized_tasks_sha256(paths))
    cursor = current or context.cursor
    if not run:
        return SensorResult(skip_reason=SkipReason(f"{path}: {why}"), cursor=cursor)
    context.log.info(f"task_file_sensor: {path}: {why}; requesting task_set and everything downstream")
    # no run_key: Dagster never repeats a run key, and a file edited back to earlier content must run again
    request = RunRequest(partition_key=TADS_PARTITION,
                         tags={"tads/trigger": "task_file_changed", "tads/tasks_sha256": current,
                               "tads/tasks_path": str(path)})
    return SensorResult(run_requests=[request], cursor=cursor)


@schedule(job=tads_full_job, cron_schedule=WEEKLY_CRON, default_status=DefaultScheduleStatus.RUNNING,
          description="Weekly refresh of the whole graph for TADS's selection (tads_full), Sunday 03:00.")
def weekly_full_refresh(context: ScheduleEvaluationContext) -> RunRequest:
    return RunRequest(run_key=f"weekly-{context.scheduled_execution_time:%Y-%m-%d}", partition_key=TADS_PARTITION,
                      tags={"tads/trigger": "weekly_schedule"})
