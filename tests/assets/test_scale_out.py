"""Scale-out: raw_pool registers one partition per part; a backfill of the per-part assets (frozen_features,
operator_features) fills the caches that clip_encoder and feature_table then read back instead of recomputing,
with the same feature table as a run without the backfill."""

from types import SimpleNamespace

import polars as pl
from dagster import DagsterInstance
from tads_assets.local import materialize
from polars.testing import assert_frame_equal

from tads_assets.characterize import feature_table, operator_features
from tads_assets.pool import (clip_encoder, deduped_pool, frozen_features, pool_embeddings, raw_pool, raw_pool_parts,
                              register_parts)
from tests.assets.conftest import metadata_values, resources_for

GRAPH = [raw_pool, frozen_features, clip_encoder, pool_embeddings, deduped_pool, operator_features, feature_table]




def test_register_parts_adds_new_and_removes_stale_partitions():
    instance = DagsterInstance.ephemeral()
    context = SimpleNamespace(instance=instance)
    assert register_parts(context, ["part-00000-000", "part-00001-000"]) == {"partitions_added": 2,
                                                                            "partitions_removed": 0}
    assert register_parts(context, ["part-00001-000", "part-00002-000"]) == {"partitions_added": 1,
                                                                            "partitions_removed": 1}
    assert sorted(instance.get_dynamic_partitions(raw_pool_parts.name)) == ["part-00001-000", "part-00002-000"]


def test_backfilled_parts_are_read_back_not_recomputed(tmp_path, demo_spec, demo_dir, built):
    reference_paths, _, _ = built  # the shared graph, built without any backfill
    resources = resources_for(tmp_path / "home", demo_spec, str(demo_dir / "tasks.yaml"))
    instance = DagsterInstance.ephemeral()
    assert materialize(GRAPH, selection=[raw_pool.key], resources=resources, instance=instance).success
    parts = sorted(instance.get_dynamic_partitions(raw_pool_parts.name))
    assert parts == [p.stem for p in sorted(resources["paths"].catalog.raw_pool.dir.glob("part-*.parquet"))]
    assert len(parts) == 4  # the small demo pool's four shards

    for part in parts:  # what a backfill does, one run per partition
        run = materialize(GRAPH, selection=[frozen_features.key], partition_key=part, resources=resources,
                          instance=instance)
        meta = metadata_values(run, "frozen_features")
        assert run.success and meta["computed"] is True and meta["n_in"] == meta["n_out"] > 0 and meta["seconds"] > 0
    run = materialize(GRAPH, selection=[clip_encoder.key, pool_embeddings.key, deduped_pool.key],
                      resources=resources, instance=instance)
    assert run.success
    assert (metadata_values(run, "clip_encoder")["frozen_parts_cached"], metadata_values(run, "clip_encoder")["frozen_parts_computed"]) == (4, 0)

    for part in parts:
        run = materialize(GRAPH, selection=[operator_features.key], partition_key=part, resources=resources,
                          instance=instance)
        assert run.success and metadata_values(run, "operator_features")["computed"] is True
    again = materialize(GRAPH, selection=[operator_features.key], partition_key=parts[0], resources=resources,
                        instance=instance)
    assert metadata_values(again, "operator_features")["computed"] is False  # nothing changed: read from the cache
    run = materialize(GRAPH, selection=[feature_table.key], resources=resources, instance=instance)
    assert run.success
    meta = metadata_values(run, "feature_table")
    assert (meta["parts_resumed"], meta["parts_computed"]) == (4, 0)

    table = pl.read_parquet(resources["paths"].catalog.feature_table.path)
    reference = pl.read_parquet(reference_paths.catalog.feature_table.path)
    assert_frame_equal(table, reference, check_exact=False, rel_tol=1e-4, abs_tol=1e-5)
