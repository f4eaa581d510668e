"""Each baseline selection on tiny inputs whose right answer is known."""

import numpy as np
import pytest

from tads_assets.core.harness import baselines


def _blobs(centres: np.ndarray, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = np.concatenate([c + spread * rng.standard_normal((per, len(c))) for c in centres])
    return vecs.astype(np.float32), np.repeat(np.arange(len(centres)), per)


def test_random_selection_has_the_size_and_depends_on_the_seed():
    a = baselines.random_selection(100, 30, seed=1)
    b = baselines.random_selection(100, 30, seed=1)
    c = baselines.random_selection(100, 30, seed=2)
    assert a.keep.sum() == 30 and (a.keep == b.keep).all() and not (a.keep == c.keep).all()
    with pytest.raises(ValueError, match="subset size"):
        baselines.random_selection(10, 11, seed=0)


def test_clip_score_keeps_the_best_aligned_pairs():
    alignment = np.array([0.1, 0.9, 0.5, 0.7, 0.2])
    sel = baselines.clip_score_selection(alignment, 2)
    assert sel.keep.tolist() == [False, True, False, True, False]
    assert sel.info["cutoff"] == pytest.approx(0.7)


def test_semdedup_drops_planted_duplicates_first():
    rng = np.random.default_rng(0)
    unique = rng.standard_normal((40, 16)).astype(np.float32)
    copies = unique[:10] + 0.01 * rng.standard_normal((10, 16)).astype(np.float32)  # near-identical twins
    vectors = np.concatenate([unique, copies])
    sel = baselines.semdedup_selection(vectors, size=40, n_clusters=3, seed=0)
    assert sel.keep.sum() == 40
    # from each twin pair exactly one survives, and every unique vector without a twin survives
    twins = sel.keep[:10].astype(int) + sel.keep[40:].astype(int)
    assert (twins == 1).all() and sel.keep[10:40].all()
    assert sel.info["epsilon"] > 0.01


def test_semdedup_keeps_the_member_farthest_from_the_centroid():
    # one cluster: a far point and its near-copy; the near-copy sits closer to the centroid, so it goes
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [0.7, 0.7]], np.float32)
    labels = np.zeros(4, np.int64)
    red = baselines.semdedup_redundancy(vectors, labels)
    assert red.argmax() == 2  # row 2 (closer to the centroid) is the one marked redundant
    assert red[2] > 0.99 and red[1] < red[2]


def test_dbp_quotas_sum_to_size_and_respect_cluster_sizes():
    quota = baselines.dbp_quotas(np.array([5.0, 1.0, 1.0]), np.array([3, 50, 50]), size=40, temperature=1.0)
    assert quota.sum() == 40 and quota[0] == 3  # the complex small cluster is kept whole
    assert abs(int(quota[1]) - int(quota[2])) <= 1  # the excess is shared evenly
    with pytest.raises(ValueError):
        baselines.dbp_quotas(np.ones(2), np.array([1, 1]), size=3, temperature=1.0)


def test_dbp_keeps_more_of_the_spread_out_cluster_and_prunes_prototypes():
    centres = np.eye(4, dtype=np.float32)[:2] * 3
    tight, _ = _blobs(centres[:1], 100, 0.05, seed=1)
    loose, _ = _blobs(centres[1:], 100, 0.6, seed=2)
    vectors = np.concatenate([tight, loose])
    sel = baselines.dbp_selection(vectors, size=80, n_clusters=2, neighbours=1, temperature=0.05, seed=0)
    assert sel.keep.sum() == 80
    assert sel.keep[100:].sum() > sel.keep[:100].sum()  # the complex (spread) concept keeps more
    # inside the tight cluster the kept members are the least prototypical (farthest from its centroid)
    kept_d, dropped_d = sel.score[:100][sel.keep[:100]], sel.score[:100][~sel.keep[:100]]
    if len(kept_d) and len(dropped_d):
        assert kept_d.min() >= dropped_d.max()


def test_dbp_defaults_are_the_reference_implementations():
    p = baselines.BaselineParams()  # amro-kamal/effective_pruning: --num_NNs 20, --temperature 0.5, --cls-bal-ratio 0.5
    assert (p.dbp_variant, p.dbp_neighbours, p.dbp_temperature, p.dbp_balance) == ("reference", 20, 0.5, 0.5)
    assert p.dbp_semdedup_keep == pytest.approx(280 / 440, abs=0.001)  # LAION-440M -> LAION-DeDup-280M


def test_dbp_qp_quotas_solve_the_reference_quadratic_programme():
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    complexity, sizes, size = rng.uniform(0.1, 1.0, 8), rng.integers(5, 60, 8), 120
    quota = baselines.dbp_qp_quotas(complexity, sizes, size, temperature=0.5, balance=0.5)
    lb = np.minimum(int(size / 8 * 0.5), sizes - 1)
    assert quota.sum() == size and (quota >= lb).all() and (quota <= sizes).all()
    # the continuous optimum of prune.py's programme, by a generic solver, agrees to rounding
    p = np.exp(complexity / 0.5) / np.exp(complexity / 0.5).sum()
    res = minimize(lambda x: 0.5 * x @ x - (p * size) @ x, np.full(8, size / 8), jac=lambda x: x - p * size,
                   bounds=list(zip(lb, sizes)), constraints=[{"type": "eq", "fun": lambda x: x.sum() - size}],
                   method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    assert np.abs(quota - res.x).max() <= 1.0 + 1e-6
    # the lower bound holds even for a cluster the softmax gives almost nothing
    tiny = baselines.dbp_qp_quotas(np.array([10.0, 0.0, 0.0]), np.array([100, 100, 100]), 60, 0.5, 0.5)
    assert tiny.tolist() == [40, 10, 10]  # ⌊0.5 · 60 / 3⌋ = 10 each; the rest to the complex cluster
    with pytest.raises(ValueError, match="cannot keep"):
        baselines.dbp_qp_quotas(np.ones(2), np.array([1, 1]), 3, 0.5, 0.5)


def test_dbp_runs_semdedup_first_and_the_earlier_variant_stays_available():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(150, 16)).astype(np.float32)
    copies = base[:50] + 1e-4 * rng.normal(size=(50, 16)).astype(np.float32)  # 50 near copies of rows 0..49
    vectors = np.concatenate([base, copies])
    sel = baselines.dbp_selection(vectors, size=90, n_clusters=5, neighbours=20, temperature=0.5, seed=0)
    assert sel.keep.sum() == 90 and sel.info["semdedup"]["kept"] == round(0.636 * 200)
    # each planted pair loses one member to SemDeDup before DBP sees the pool
    pair_kept = sel.keep[:50] & sel.keep[150:]
    assert not pair_kept.any()
    assert (sel.reasons[~sel.keep] == "dbp_semdedup_redundant").sum() == 200 - round(0.636 * 200)
    v1 = baselines.dbp_selection(vectors, size=90, n_clusters=5, neighbours=5, temperature=0.1, seed=0,
                                 variant="tads_v1")
    assert v1.keep.sum() == 90 and "semdedup" not in v1.info and set(v1.reasons[~v1.keep]) == {"dbp_prototypical"}
    with pytest.raises(ValueError, match="dbp_variant"):
        baselines.dbp_selection(vectors, 90, 5, 20, 0.5, 0, variant="v2")


def test_quality_selection_is_a_threshold():
    sel = baselines.quality_selection(np.array([0.2, 0.5, 0.8]), 0.5)
    assert sel.keep.tolist() == [False, True, True]
    assert baselines.no_filter_selection(3).keep.all()


def test_candidates_refuse_frozen_features_of_another_pool_version(tmp_path):
    import lancedb
    import polars as pl

    from tads_assets.core.io import embeddings

    raw = tmp_path / "raw_pool"
    raw.mkdir()
    pl.DataFrame({"uid": ["a", "b"], "sha256": ["0" * 64, "1" * 64], "caption": ["x", "y"]}).write_parquet(
        raw / "part-00000-000.parquet")
    db = lancedb.connect(str(tmp_path / "lance"))
    vec = np.eye(2, dtype=np.float32)
    embeddings.write_part(db, None, "part-00000-000.parquet", "enc", ["a", "b"], vec, vec, vec, "fp", np.ones(2))
    pl.DataFrame({"uid": ["a", "b"], "quality": [0.1, 0.9]}).write_parquet(tmp_path / "q.parquet")
    cache = tmp_path / "frozen"
    cache.mkdir()
    pl.DataFrame({"uid": ["a", "b"], "image_feat": [[1.0, 0.0], [0.0, 1.0]], "part_fingerprint": ["old", "old"]}
                 ).write_parquet(cache / "part-00000-000.parquet")
    with pytest.raises(ValueError, match="another version of the pool: rematerialize clip_encoder"):
        baselines.load_candidates(raw, db, tmp_path / "q.parquet", cache)
    assert baselines.load_candidates(raw, db, tmp_path / "q.parquet").image_vec.shape == (2, 2)
