"""Asset checks on every stage: all pass on the shared demo graph, and each fails on an output broken the way it
guards against (NaN, out-of-range scores, a subset over its budget)."""

import json
import shutil

import numpy as np
import polars as pl
from dagster import AssetSelection
from tads_assets.local import materialize
from safetensors.numpy import load_file, save_file

from resources import TadsPaths, tads_resources
from tests.assets.conftest import resources_for


def _defs():
    import definitions

    return [*definitions.all_assets, *definitions.all_checks]


def _run_checks(home, paths, names: list[str] | None = None) -> dict[str, bool]:
    """Check-only run (no asset is materialized) against the outputs under `home`."""
    selection = AssetSelection.checks(*[c for c in _defs_checks() if names is None or c.name in names])
    result = materialize(_defs(), selection=selection, resources=resources_for(home, paths.pool, paths.tasks),
                         raise_on_error=False)
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _defs_checks():
    import definitions

    return [key for c in definitions.all_checks for key in c.check_keys]


def test_every_stage_has_a_check_and_all_pass_on_the_demo_graph(built):
    paths, _, _ = built
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    checked = {k.asset_key.to_user_string() for k in graph.asset_check_keys}
    assert checked == {k.to_user_string() for k in graph.get_all_asset_keys()}, checked
    outcome = _run_checks(paths.root, paths)
    # the per-part checks look at every cached part, here the ones the unpartitioned assets computed
    assert len(outcome) == len(_defs_checks()) and all(outcome.values()), outcome


def test_checks_fail_on_broken_outputs(built, tmp_path):
    paths, _, _ = built
    home = tmp_path / "home"
    shutil.copytree(paths.root, home)
    diversity = home / "parquet" / "cluster_diversity" / "cluster_diversity.parquet"
    frame = pl.read_parquet(diversity)
    frame.with_columns(diversity=pl.when(pl.int_range(pl.len()) == 0).then(float("nan"))
                       .otherwise(pl.col("diversity"))).write_parquet(diversity)
    ckpt = home / "models" / "trained_clip" / "tads" / "model.safetensors"
    tensors = load_file(str(ckpt))
    name = next(k for k, v in tensors.items() if v.dtype.kind == "f")
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.inf
    save_file(tensors, str(ckpt))
    report = json.loads((home / "reports" / "benchmark.json").read_text())
    report["rows"][0]["average"] = 130.0
    (home / "reports" / "benchmark.json").write_text(json.dumps(report))
    kept = home / "parquet" / "final_subset" / "final_subset.parquet"
    scores = pl.read_parquet(home / "parquet" / "trained_dvn" / "dvn_scores.parquet")
    pl.DataFrame({"uid": scores["uid"], "score": scores["v"]}).write_parquet(kept)  # everything kept: over budget

    outcome = _run_checks(home, paths, ["cluster_diversity_valid", "trained_clip_checkpoints_valid",
                                        "benchmark_scores_in_range", "final_subset_size_within_bounds",
                                        "relevance_vectors_valid"])
    assert outcome == {"cluster_diversity_valid": False, "trained_clip_checkpoints_valid": False,
                       "benchmark_scores_in_range": False, "final_subset_size_within_bounds": False,
                       "relevance_vectors_valid": True}, outcome


def test_the_dedup_guard_warns_on_a_degenerate_dedup_naming_the_dominant_reason(built, tmp_path):
    from dagster import AssetCheckSeverity

    paths, _, _ = built
    home = tmp_path / "home"
    shutil.copytree(paths.root, home)
    manifest_path = home / "parquet" / "deduped_pool" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["n_dropped"] / manifest["n_seen"] <= 0.4  # the demo graph passes

    def guard(environ):
        result = materialize(_defs(), selection=AssetSelection.checks(
            *[c for c in _defs_checks() if c.name == "deduped_pool_removal_within_guard"]),
            resources=tads_resources(TadsPaths(home=str(home), pool=paths.pool, tasks=paths.tasks), environ),
            raise_on_error=False)
        return result.get_asset_check_evaluations()[0]

    assert guard({}).passed
    strict = guard({"TADS_GUARD_DEDUP_MAX_SHARE": str(0.5 * manifest["n_dropped"] / manifest["n_seen"])})
    assert not strict.passed and strict.severity == AssetCheckSeverity.WARN
    meta = {k: getattr(v, "value", v) for k, v in strict.metadata.items()}
    assert meta["dominant_reason"] == max(manifest["reasons"], key=manifest["reasons"].get)
    assert meta["examples"].count("\n- ") >= 1 and "duplicate of" in meta["examples"]
    error = guard({"TADS_GUARD_DEDUP_MAX_SHARE": "0.001", "TADS_GUARD_SEVERITY": "error"})
    assert not error.passed and error.severity == AssetCheckSeverity.ERROR
