"""`tads run` (`local.run_jobs`): the jobs in order in one process, each partitioned job as one run over every
partition, recorded in a persistent instance; the executor of UI-launched runs (TADS_EXECUTOR)."""

import pytest
from dagster import (AssetExecutionContext, AssetKey, BackfillPolicy, DagsterInstance, Definitions, MaterializeResult,
                     StaticPartitionsDefinition, asset, define_asset_job, in_process_executor, multiprocess_executor)

from resources import executor_from_env
from tads_assets.local import run_jobs

parts = StaticPartitionsDefinition(["x", "y", "z"])
calls = []


@asset
def first() -> MaterializeResult:
    calls.append("first")
    return MaterializeResult(metadata={"n": 1})


@asset(deps=[first], partitions_def=parts, backfill_policy=BackfillPolicy.single_run())
def per_method(context: AssetExecutionContext) -> MaterializeResult:
    calls.append(tuple(context.partition_keys))
    for key in context.partition_keys:
        context.add_asset_metadata({"method": key}, partition_key=key)
    return MaterializeResult()


@asset(deps=[first])
def broken() -> MaterializeResult:
    raise RuntimeError("broken on purpose")


DEFS = Definitions(assets=[first, per_method, broken],
                   jobs=[define_asset_job("one", [first]), define_asset_job("many", [per_method]),
                         define_asset_job("fails", [broken])])


def test_jobs_run_in_order_each_partitioned_job_in_one_run_over_every_partition(tmp_path):
    calls.clear()
    with DagsterInstance.from_ref(DagsterInstance.local_temp(str(tmp_path)).get_ref()) as instance:
        rows = run_jobs(DEFS, ["one", "many"], instance, progress=lambda m: None)
        assert [r["job"] for r in rows] == ["one", "many"] and all(r["ok"] for r in rows)
        assert calls == ["first", ("x", "y", "z")]  # one step for the three partitions
        assert instance.get_materialized_partitions(AssetKey("per_method")) == {"x", "y", "z"}
        assert len(instance.get_runs()) == 2
    # a later process sees the same history (the UI, `tads status`)
    with DagsterInstance.from_ref(DagsterInstance.local_temp(str(tmp_path)).get_ref()) as again:
        assert len(again.get_runs()) == 2


def test_run_jobs_stops_at_the_first_failed_run(tmp_path):
    calls.clear()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        rows = run_jobs(DEFS, ["fails", "one"], instance, progress=lambda m: None)
    assert [(r["job"], r["ok"], r["failed_steps"]) for r in rows] == [("fails", False, ["broken"])]
    assert calls == []


def test_the_executor_follows_tads_executor_and_the_core_count():
    assert executor_from_env({}, cpu_count=2) is in_process_executor
    assert executor_from_env({}, cpu_count=16) is multiprocess_executor
    assert executor_from_env({"TADS_EXECUTOR": "multiprocess"}, cpu_count=2) is multiprocess_executor
    assert executor_from_env({"TADS_EXECUTOR": "in_process"}, cpu_count=64) is in_process_executor
    with pytest.raises(ValueError, match="TADS_EXECUTOR='threads'"):
        executor_from_env({"TADS_EXECUTOR": "threads"})
