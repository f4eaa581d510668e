"""In-process materialization of part of the graph, for tests, benchmarks and notebooks.

`dagster.materialize([deduped_pool], ...)` refuses an asset whose inputs are not in the list. TADS's assets read
their upstream outputs as catalogue handles (the `io_manager` resource), which exist on disk whether or not the
upstream asset is part of this run, so `materialize` here hands every missing upstream over as an external
asset (an `AssetSpec`): the run reads what TADS_HOME holds, as `dagster asset materialize --select` does.
"""

from __future__ import annotations

import dagster
from dagster import AssetChecksDefinition, AssetSpec, AssetsDefinition


def materialize(assets, **kwargs) -> dagster.ExecuteInProcessResult:
    """`dagster.materialize(assets, **kwargs)` with the upstream assets the given ones read (and the assets the
    given checks target) added as external."""
    provided = {key for a in assets if isinstance(a, AssetsDefinition) for key in a.keys}
    needed = {dep for a in assets if isinstance(a, AssetsDefinition) for key in a.keys for dep in a.asset_deps.get(key, ())}
    needed |= {check.asset_key for a in assets if isinstance(a, AssetChecksDefinition) for check in a.check_keys}
    missing = sorted(needed - provided, key=lambda k: k.to_user_string())
    return dagster.materialize([*assets, *(AssetSpec(k) for k in missing)], **kwargs)
