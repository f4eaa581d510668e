"""The TADS code location: every asset, asset check and resource (DESIGN.md)."""

from dagster import AssetSelection, Definitions, define_asset_job, load_asset_checks_from_modules, load_assets_from_modules

from resources import ClipEncoder, LanceStore, LangId, Ocr, TadsPaths, TorchDevice
from tads_assets import characterize, checks, pool, select, train_eval

ASSET_MODULES = [pool, characterize, select, train_eval]

all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

tads_full_job = define_asset_job("tads_full", selection=AssetSelection.all(), description="Every TADS asset, in order.")

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
