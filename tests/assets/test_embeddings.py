import numpy as np
import polars as pl
import pytest
from dagster import AssetSelection
from tads_assets.local import materialize

from resources import TadsPaths, tads_resources
from tads_assets.checks import pool_embeddings_normalised, raw_pool_ledger_complete, raw_pool_rows_valid
from tads_assets.core.io import embeddings
from tads_assets.core.method.encoder import BuiltinEncoder, HeadsConfig, train_projection_heads
from tads_assets.pool import clip_encoder, pool_embeddings, raw_pool

ASSETS = [raw_pool, clip_encoder, pool_embeddings, raw_pool_ledger_complete, raw_pool_rows_valid,
          pool_embeddings_normalised]


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_spec):
    home = tmp_path_factory.mktemp("emb")
    resources = tads_resources(TadsPaths(home=str(home), pool=demo_spec))
    result = materialize(ASSETS, resources=resources)
    return resources, result


def test_encoder_and_embeddings_materialize_with_passing_checks(built):
    resources, result = built
    assert result.success
    assert all(ev.passed for ev in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("clip_encoder")[0].metadata
    # held-out pairs retrieve their own caption far above chance even on a 400-sample pool
    assert meta["val_i2t_recall_at_1"].value > 5 * meta["val_chance_recall_at_1"].value
    emb = result.asset_materializations_for_node("pool_embeddings")[0].metadata
    n_kept = result.asset_materializations_for_node("raw_pool")[0].metadata["n_kept"].value
    assert emb["rows"].value == n_kept and emb["parts_computed"].value == 4


def test_flipped_images_stay_close(built):
    resources, _ = built
    frame = embeddings.read_embeddings(resources["paths"].catalog.pool_embeddings.connect())
    img, flip = embeddings.arrays(frame, "image_vec", "flipped_image_vec")
    assert np.median(np.sum(img * flip, 1)) > 0.5  # a flipped garment still looks like itself


def test_heads_score_unseen_clean_pairs_above_unseen_misaligned_ones(built, demo_dir):
    """Alignment must generalise: heads trained on one half of the pool rank the other half's pairs."""
    resources, _ = built
    frozen = embeddings.load_frozen_features(resources["paths"].catalog.frozen_cache_dir)
    kinds = pl.read_parquet(demo_dir / "truth.parquet").select("uid", "kind")
    frozen = frozen.join(kinds, on="uid")
    train, held = frozen[::2], frozen[1::2]
    heads, _ = train_projection_heads(*embeddings.arrays(train, "image_feat", "text_feat"), HeadsConfig(seed=1))
    enc = BuiltinEncoder(heads)
    img, txt = embeddings.arrays(held, "image_feat", "text_feat")
    cos = np.sum(enc.embed_image_features(img) * enc.embed_text_features(txt), 1)
    kind = held["kind"].to_numpy()
    clean, misaligned = np.median(cos[kind == "clean"]), np.median(cos[kind == "misaligned"])
    assert clean > misaligned + 0.1, (clean, misaligned)


def test_rerun_resumes_finished_parts_and_recomputes_a_lost_one(built):
    resources, _ = built
    db = resources["paths"].catalog.pool_embeddings.connect()
    table = embeddings.open_embeddings(db)
    before = table.count_rows()
    table.delete("part = 'part-00001-000'")  # as if the run died before writing this part
    result = materialize([pool_embeddings, clip_encoder, raw_pool], resources=resources,
                         selection=AssetSelection.assets(pool_embeddings))
    meta = result.asset_materializations_for_node("pool_embeddings")[0].metadata
    assert meta["parts_computed"].value == 1 and meta["parts_resumed"].value == 3
    assert embeddings.open_embeddings(db).count_rows() == before


def test_a_part_rewritten_with_the_same_name_and_size_is_recomputed_not_served_from_cache(built):
    """A re-ingested pool can reuse a part's file name and row count with other samples in it."""
    resources, _ = built
    paths = resources["paths"]
    part = sorted(paths.catalog.raw_pool.dir.glob("part-*.parquet"))[2]
    frame = pl.read_parquet(part)
    uid = frame["uid"][0]
    new_caption = "a bright yellow umbrella on a sandy beach"
    frame = frame.with_columns(caption=pl.when(pl.col("uid") == uid).then(pl.lit(new_caption)).otherwise(pl.col("caption")))
    frame.write_parquet(part)
    # pool_embeddings alone refuses the stale cache with the fix in the message
    stale = materialize([pool_embeddings, clip_encoder, raw_pool], resources=resources,
                        selection=AssetSelection.assets(pool_embeddings), raise_on_error=False)
    assert not stale.success
    result = materialize([pool_embeddings, clip_encoder, raw_pool], resources=resources,
                         selection=AssetSelection.assets(clip_encoder, pool_embeddings))
    meta = result.asset_materializations_for_node("clip_encoder")[0].metadata
    assert meta["frozen_parts_computed"].value == 1 and meta["frozen_parts_cached"].value == 3
    cached = embeddings.load_frozen_features(paths.catalog.frozen_cache_dir).filter(pl.col("uid") == uid)
    expected = resources["encoder"].towers("cpu").text_features([new_caption])
    assert np.allclose(embeddings.arrays(cached, "text_feat")[0], expected, atol=1e-5)
