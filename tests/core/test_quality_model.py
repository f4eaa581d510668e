import numpy as np
import pytest

from tads_assets.core.method import quality_model as qm


def test_true_set_pairs_each_positive_with_a_negative_from_another_cluster():
    weak = np.linspace(0, 1, 100)
    captions = [f"a red dress number {i}, size M" if i % 2 else f"blue sneaker model {i}" for i in range(100)]
    clusters = np.arange(100) % 2
    params = qm.QualityParams(true_positives=20, positive_quantile=0.5, shuffle_share=0.5)
    ts = qm.build_true_set(weak, captions, clusters, params)
    pos, neg = ts.labels == 1, ts.labels == 0
    assert pos.sum() == neg.sum() == 20
    assert (weak[ts.rows[pos]] >= np.quantile(weak, 0.5)).all()  # positives: high ŷ_weak only
    assert all(c is None for c, p in zip(ts.captions, pos) if p)
    assert set(np.array(ts.how)[neg]) == {"shuffled", "mismatch_injected"}
    for row, cap, how in zip(ts.rows[neg], np.array(ts.captions, object)[neg], np.array(ts.how)[neg]):
        assert cap != captions[row]
        if how == "shuffled":  # another cluster's caption whole
            assert captions.index(cap) % 2 != row % 2
        else:  # the own caption with its main phrase swapped for another cluster's
            assert cap.split(",")[-1] == captions[row].split(",")[-1] or "," not in captions[row]


def test_positives_stay_in_the_top_tier_when_most_of_the_pool_is_flagged():
    """A noise majority: 70 % of the samples carry some LF flag (lower ŷ_weak tiers), 30 % none (the top tier).
    The 60 % quantile lies inside the flagged tiers; positives must still come from the unflagged samples."""
    rng = np.random.default_rng(0)
    weak = np.concatenate([np.full(300, 0.30), rng.choice([0.05, 0.10, 0.20], 700)])
    rows = qm.positive_candidates(weak, 0.6, 200)
    assert set(rows) == set(range(300))
    ts = qm.build_true_set(weak, [f"caption {i}" for i in range(1000)], np.arange(1000) % 5,
                           qm.QualityParams(true_positives=200))
    assert (weak[ts.rows[ts.labels == 1]] == 0.30).all()
    # a top tier smaller than the positives wanted: the quantile and the wanted count decide, ties included
    weak[:300] = np.where(np.arange(300) < 50, 0.30, 0.20)
    assert set(np.flatnonzero(weak >= 0.20)) == set(qm.positive_candidates(weak, 0.6, 200))
    # most of the pool in the top tier: the quantile is the tighter bound, as before
    assert len(qm.positive_candidates(np.r_[np.zeros(30), np.ones(70)], 0.6, 10)) == 70
    # no ties (a continuous ŷ_weak): the `wanted` highest
    assert set(qm.positive_candidates(np.linspace(0, 1, 100), 0.6, 10)) == set(range(90, 100))


def test_hybrid_objective_learns_from_true_labels_and_weak_labels():
    """Feature 0 decides quality; weak labels see it through noise, D_true sees it exactly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    truth = (x[:, 0] > 0).astype(np.float32)
    weak = np.clip(truth * 0.7 + 0.15 + rng.normal(0, 0.2, 3000), 0, 1).astype(np.float32)
    x_true = rng.normal(size=(300, 4)).astype(np.float32)
    y_true = (x_true[:, 0] > 0).astype(np.float32)
    fit = qm.train_quality_model(x, weak, x_true, y_true, qm.QualityParams(epochs=15), progress=lambda m: None)
    q = qm.predict_quality(fit.model, x)
    assert ((q > 0.5) == truth.astype(bool)).mean() > 0.95
    assert fit.loss_per_epoch[-1] < fit.loss_per_epoch[0]
    assert ((q >= 0) & (q <= 1)).all()


def test_checkpoint_round_trips_through_safetensors(tmp_path):
    model = qm.QualityMLP(5, 8)
    qm.save_quality_model(model, tmp_path / "q.safetensors", ("a", "b", "c", "d", "e"))
    again, cols = qm.load_quality_model(tmp_path / "q.safetensors")
    x = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    assert cols == ["a", "b", "c", "d", "e"]
    assert np.allclose(qm.predict_quality(model.eval(), x), qm.predict_quality(again, x))


def test_a_pickle_checkpoint_is_refused(tmp_path):
    import torch

    path = tmp_path / "q.safetensors"
    torch.save({"mean": torch.zeros(5)}, path)  # a pickle, whatever its name says
    with pytest.raises(Exception):
        qm.load_quality_model(path)


def _feature_frame(n: int, seed: int):
    """A feature table whose clip_similarity decides quality (and ŷ_weak sees it through noise)."""
    import polars as pl

    from tads_assets.core.method.operators import FEATURE_COLUMNS

    rng = np.random.default_rng(seed)
    frame = pl.DataFrame({c: rng.normal(size=n) for c in FEATURE_COLUMNS})
    good = frame["clip_similarity"].to_numpy() > 0
    weak = np.clip(0.15 + 0.7 * good + rng.normal(0, 0.25, n), 0, 1)
    return frame.with_columns(y_weak=pl.Series(weak.astype(np.float32))), good


def test_the_ensemble_is_the_mean_of_members_each_fit_on_its_own_draw_of_d_true(tmp_path):
    import polars as pl

    features, good = _feature_frame(2000, 0)
    captions = [f"caption {i}" for i in range(2000)]
    drawn = []

    def negative_features(rows, caps):  # a negative's features: its row's, with the alignment feature broken
        drawn.append(np.asarray(rows).copy())
        return features[rows.tolist()].with_columns(clip_similarity=pl.lit(-2.0))

    params = qm.QualityParams(members=3, true_positives=100, epochs=5, seed=7)
    fit = qm.train_quality_ensemble(features, captions, np.arange(2000) % 10, params, negative_features,
                                    progress=lambda m: None)
    assert len(fit.fits) == len(fit.d_trues) == len(fit.model.members) == 3
    positives = [set(d_rows.tolist()) for d_rows in drawn]  # each negative sits on a positive's image
    assert positives[0] != positives[1] and positives[1] != positives[2]  # seeds 7, 8, 9: three draws
    x = fit.d_trues[0].x_pool
    members = fit.member_scores(x)
    assert not np.allclose(members[0], members[1])
    assert np.allclose(qm.predict_quality(fit.model, x), members.mean(0), atol=1e-6)
    assert ((qm.predict_quality(fit.model, x) > 0.5) == good).mean() > 0.9
    # the checkpoint keeps every member; a single fit's checkpoint still loads as one model
    qm.save_quality_model(fit.model, tmp_path / "q.safetensors", ("c",) * x.shape[1])
    again, _ = qm.load_quality_model(tmp_path / "q.safetensors")
    assert isinstance(again, qm.QualityEnsemble) and len(again.members) == 3
    assert np.allclose(qm.predict_quality(again, x), members.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="members must be at least 1"):
        qm.train_quality_ensemble(features, captions, np.zeros(2000), qm.QualityParams(members=0), negative_features)
