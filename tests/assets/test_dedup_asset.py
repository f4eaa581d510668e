import polars as pl
from tads_assets.local import materialize

from resources import TadsPaths, tads_resources
from tads_assets.checks import deduped_pool_ledger_complete
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool


def test_deduped_pool_removes_every_exact_duplicate_and_ledgers_each_drop(tmp_path, demo_spec, demo_dir):
    resources = tads_resources(TadsPaths(home=str(tmp_path), pool=demo_spec))
    result = materialize([raw_pool, clip_encoder, pool_embeddings, deduped_pool, deduped_pool_ledger_complete],
                         resources=resources)
    assert result.success
    assert [ev.passed for ev in result.get_asset_check_evaluations()] == [True]
    kept = set(pl.read_parquet(tmp_path / "parquet" / "deduped_pool" / "deduped_pool.parquet")["uid"])
    truth = pl.read_parquet(demo_dir / "truth.parquet")
    exact = truth.filter(pl.col("kind") == "exact_duplicate")
    drops = resources["paths"].ledger().read("deduped_pool")
    # of an original and its exact copies the metadata layer (eq. 1) leaves exactly one; that one may still
    # go later, as a duplicate of yet another sample (e.g. a re-post of the same picture)
    by_meta = set(drops.filter(pl.col("reason") == "metadata_duplicate")["uid"])
    groups: dict[str, set[str]] = {}
    for u, o in zip(exact["uid"], exact["duplicate_of"]):
        groups.setdefault(o, {o}).add(u)
    assert groups and all(len(g - by_meta) == 1 for g in groups.values())
    assert all(len(g & kept) <= 1 for g in groups.values())
    assert set(drops["reason"]) <= {"metadata_duplicate", "semantic_density", "quality_duplicate"}
    assert drops.filter(pl.col("reason") == "metadata_duplicate").height >= exact.height
    assert drops["detail"].str.starts_with("duplicate of ").all()
    meta = result.asset_materializations_for_node("deduped_pool")[0].metadata
    assert meta["n_in"].value == meta["n_kept"].value + meta["n_dropped"].value
