"""The TADS code location: every asset, asset check, job, schedule, sensor and resource (docs/architecture.md)."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from resources import executor_from_env, resources_from_env
from tads_assets import automation, characterize, checks, pool, select, train_eval

ASSET_MODULES = [pool, characterize, select, train_eval]

all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[automation.selection_job, automation.baselines_job, automation.methods_job, automation.tads_full_job,
          automation.task_change_job],
    executor=executor_from_env(),
    schedules=[automation.weekly_full_refresh],
    sensors=[automation.task_file_sensor],
    resources=resources_from_env(),
)
