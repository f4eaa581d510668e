"""The TADS code location: every asset, asset check and resource (DESIGN.md)."""

from dagster import AssetSelection, Definitions, define_asset_job, load_asset_checks_from_modules, load_assets_from_modules

from resources import ClipEncoder, LanceStore, LangId, Ocr, TadsPaths, TorchDevice
from tads_assets import characterize, checks, pool, select, train_eval

ASSET_MODULES = [pool, characterize, select, train_eval]

all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

# One job cannot mix partitions definitions: baseline_subsets (per baseline/ablation) and trained_clip (per
# selection, tads included) are materialized per partition (make demo, or the UI's partition picker).
PER_METHOD = AssetSelection.assets(select.baseline_subsets, train_eval.trained_clip)
tads_full_job = define_asset_job(
    "tads_full", selection=AssetSelection.all() - PER_METHOD,
    description="Every unpartitioned TADS asset, in order: the pool, characterisation, trained_dvn, final_subset and "
    "benchmark_scores (which scores whichever trained_clip partitions exist). baseline_subsets and trained_clip run "
    "per partition.")

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[tads_full_job],
    resources={
        "paths": TadsPaths.from_env(),
        "device": TorchDevice.from_env(),
        "lance": LanceStore.from_env(),
        "encoder": ClipEncoder.from_env(),
        "ocr": Ocr.from_env(),
        "langid": LangId.from_env(),
    },
)
