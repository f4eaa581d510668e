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
