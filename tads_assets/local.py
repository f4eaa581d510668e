"""In-process materialization of part of the graph, for tests, benchmarks and notebooks, and `run_jobs`: TADS's
jobs run one after another in this process against a persistent instance (`tads run`, `make demo`).

`dagster.materialize([deduped_pool], ...)` refuses an asset whose inputs are not in the list. TADS's assets read
their upstream outputs as catalogue handles (the `io_manager` resource), which exist on disk whether or not the
upstream asset is part of this run, so `materialize` here hands every missing upstream over as an external
asset (an `AssetSpec`): the run reads what TADS_HOME holds, as `dagster asset materialize --select` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import dagster
from dagster import AssetChecksDefinition, AssetSpec, AssetsDefinition, DagsterInstance, Definitions

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def materialize(assets, **kwargs) -> dagster.ExecuteInProcessResult:
    """`dagster.materialize(assets, **kwargs)` with the upstream assets the given ones read (and the assets the
    given checks target) added as external."""
    provided = {key for a in assets if isinstance(a, AssetsDefinition) for key in a.keys}
    needed = {dep for a in assets if isinstance(a, AssetsDefinition) for key in a.keys for dep in a.asset_deps.get(key, ())}
    needed |= {check.asset_key for a in assets if isinstance(a, AssetChecksDefinition) for check in a.check_keys}
    missing = sorted(needed - provided, key=lambda k: k.to_user_string())
    return dagster.materialize([*assets, *(AssetSpec(k) for k in missing)], **kwargs)


def every_partition_tags(job) -> dict[str, str]:
    """Run tags covering every partition of a partitioned job (its assets have `BackfillPolicy.single_run()`, so
    one run, one step per asset, materializes them all); none for an unpartitioned job."""
    partitions = job.partitions_def
    if partitions is None:
        return {}
    keys = partitions.get_partition_keys()
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


def run_jobs(defs: Definitions, names: Sequence[str], instance: DagsterInstance,
             progress: Callable[[str], None] = print) -> list[dict]:
    """Execute the named jobs of `defs` in order, in this process (Dagster's in-process executor: no process start
    and no code-location load per step or run), each over every partition, recorded in `instance` as any run is
    (the UI shows their runs and every partition's materialization). Stops at the first failed run."""
    out = []
    for name in names:
        job = defs.resolve_job_def(name)
        tags = every_partition_tags(job)
        span = f" over partitions {tags[RANGE_START]}..{tags[RANGE_END]}" if tags else ""
        progress(f"tads run: {name}{span}")
        t0 = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags={**tags, "tads/launched_by": "tads run"},
                                        raise_on_error=False)
        steps = [e for e in result.all_events if e.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")]
        row = {"job": name, "run_id": result.run_id, "ok": result.success, "steps": len(steps),
               "failed_steps": [e.step_key for e in steps if e.event_type_value == "STEP_FAILURE"],
               "seconds": round(time.perf_counter() - t0, 1)}
        out.append(row)
        progress(f"tads run: {name} {'succeeded' if row['ok'] else 'FAILED'} in {row['seconds']} s "
                 f"({row['steps']} steps, run {result.run_id})")
        if not result.success:
            break
    return out
