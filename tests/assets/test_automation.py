"""Automation: the task-file sensor requests exactly the task-dependent part of the graph, once per change; the run
it requests recomputes only that (counted); the weekly schedule refreshes the whole graph."""

import shutil
from datetime import datetime

import polars as pl
from dagster import (AssetKey, DefaultScheduleStatus, DefaultSensorStatus, SensorResult, build_schedule_context,
                     build_sensor_context, materialize)

from resources import TadsPaths
from tads_assets import automation
from tads_assets.automation import task_change_decision, task_file_sensor, weekly_full_refresh
from tests.assets.conftest import DVN, TRAIN, resources_for

TASK_DEPENDENT = {"task_set", "relevance_vectors", "trained_dvn", "final_subset", "trained_clip", "benchmark_scores"}
TASK_INDEPENDENT = ["raw_pool", "deduped_pool", "feature_table", "weak_labels", "quality_scores", "cluster_diversity"]


def _all_assets_and_checks():
    import definitions

    return [*definitions.all_assets, *definitions.all_checks]


def _evaluate(paths: TadsPaths, cursor: str | None) -> SensorResult:
    with build_sensor_context(cursor=cursor, resources={"paths": paths}) as context:
        return task_file_sensor(context)


def test_task_change_decision():
    assert task_change_decision("b", "a", "a") == (True, "task file changed: sha256 a -> b")
    assert task_change_decision("a", "a", "x")[0] is False  # the cursor wins over the materialized hash
    assert task_change_decision("b", None, "a")[0] is True  # first tick: compared with what task_set was built from
    assert task_change_decision("a", None, "a")[0] is False
    run, why = task_change_decision("a", None, None)
    assert not run and "never materialized" in why
    assert task_change_decision(None, "a", "a") == (False, "the task file cannot be read")


def test_sensor_and_schedule_are_on_by_default_and_target_the_right_assets():
    import definitions

    defs = definitions.defs
    assert defs.resolve_sensor_def("task_file_sensor").default_status == DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("weekly_full_refresh").default_status == DefaultScheduleStatus.RUNNING
    graph = defs.resolve_asset_graph()
    changed = {k.to_user_string() for k in automation.TASK_DEPENDENT.resolve(graph)}
    assert changed == TASK_DEPENDENT
    full = {k.to_user_string() for k in automation.WHOLE_GRAPH.resolve(graph)}
    assert full == {k.to_user_string() for k in graph.get_all_asset_keys()} - {"baseline_subsets", "frozen_features",
                                                                                "operator_features"}
    request = weekly_full_refresh(build_schedule_context(scheduled_execution_time=datetime(2026, 11, 29, 3)))
    assert request.partition_key == "tads" and request.run_key == "weekly-2026-11-29"


def test_unchanged_task_file_requests_nothing(built):
    paths, _, _ = built
    result = _evaluate(paths, cursor=None)
    assert not result.run_requests and "unchanged" in result.skip_reason.skip_message
    again = _evaluate(paths, cursor=result.cursor)
    assert not again.run_requests and again.cursor == result.cursor


def test_sensor_before_any_materialization_waits(tmp_path, demo_dir):
    result = _evaluate(TadsPaths(home=str(tmp_path / "empty"), tasks=str(demo_dir / "tasks.yaml")), cursor=None)
    assert not result.run_requests and "never materialized" in result.skip_reason.skip_message


def test_task_change_reruns_only_what_depends_on_the_tasks(built, demo_dir, tmp_path):
    """Drop the digit task: the sensor requests one run; executing it recomputes exactly task_set and its
    downstream (counted from the run's materializations; the pool stages' files are untouched), and the new
    selection holds fewer digit images."""
    paths, _, truth = built
    home = tmp_path / "home"
    shutil.copytree(paths.root, home)
    no_digits = demo_dir / "tasks_without_digits.yaml"  # beside tasks.yaml: its paths are relative to the folder
    text = (demo_dir / "tasks.yaml").read_text()
    start, end = text.index("- name: digits"), text.index("- name: captions")
    no_digits.write_text(text[:start] + text[end:])
    resources = resources_for(home, paths.pool, str(no_digits))

    result = _evaluate(resources["paths"], cursor=None)
    assert len(result.run_requests) == 1, result
    (request,) = result.run_requests
    assert request.partition_key == "tads" and request.tags["tads/tasks_sha256"] == result.cursor
    assert "changed" in request.tags["tads/trigger"]
    assert not _evaluate(resources["paths"], cursor=result.cursor).run_requests  # one run per change

    untouched = {f: f.stat().st_mtime_ns for name in TASK_INDEPENDENT
                 for f in (home / "parquet" / name).rglob("*") if f.is_file()}
    untouched |= {f: f.stat().st_mtime_ns for f in (home / "lance").rglob("*") if "embeddings" in str(f) and f.is_file()}
    run = materialize(_all_assets_and_checks(), selection=automation.TASK_DEPENDENT,
                      partition_key=request.partition_key, resources=resources,
                      run_config={"ops": {**DVN["ops"], **TRAIN["ops"]}}, tags=request.tags)
    assert run.success
    recomputed = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert recomputed == TASK_DEPENDENT, recomputed
    assert all(AssetKey(name) not in {e.asset_key for e in run.get_asset_materialization_events()}
               for name in TASK_INDEPENDENT)
    assert untouched and all(f.stat().st_mtime_ns == t for f, t in untouched.items())

    def digit_share(root, stage="final_subset"):
        kept = pl.read_parquet(root / "parquet" / stage / f"{stage}.parquet", columns=["uid"])
        return kept.join(truth, on="uid")["source"].eq("digits").mean()

    # Measured on this fixture: digits are 9.9 % of the deduplicated pool, 17.5 % of the subset selected for a task
    # set with a digit task and 11.2 % of the one selected without it (7.7 % before the DVN's alignment stream: a
    # well-aligned digit pair keeps some value whatever the tasks). The claim: the digit task pulls digits above
    # their share of the pool, and dropping it gives back most of that pull.
    in_pool = digit_share(home, "deduped_pool")
    with_digits, without = digit_share(paths.root), digit_share(home)
    assert in_pool < with_digits and without - in_pool < 0.5 * (with_digits - in_pool), (in_pool, with_digits, without)
