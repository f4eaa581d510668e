import numpy as np
import polars as pl
import pytest

from tads_assets.core.method import weak_supervision as ws
from tads_assets.core.method.weak_supervision import ABSTAIN, BAD, GOOD


def test_robust_bounds_ignore_outliers():
    x = np.r_[np.random.default_rng(0).normal(10, 1, 1000), [1e6, -1e6]]
    lo, hi = ws.robust_bounds(x, 3.0)
    assert 6.5 < lo < 7.5 and 12.5 < hi < 13.5


def test_otsu_splits_a_bimodal_sample_between_its_modes():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0.2, 0.03, 500), rng.normal(0.7, 0.03, 200)]
    assert 0.3 < ws.otsu_threshold(x) < 0.6


def test_lower_mode_split_finds_a_minority_mode_and_refuses_a_unimodal_sample():
    rng = np.random.default_rng(0)
    mixed = np.r_[rng.normal(0.55, 0.06, 900), rng.normal(0.25, 0.06, 100)]
    t = ws.lower_mode_split(mixed)
    assert t is not None and 0.33 < t < 0.47
    assert ws.lower_mode_split(rng.normal(0.5, 0.05, 1000)) is None


def pool_features(n=300, seed=0):
    """A pool of ordinary samples; rows 0-5 are each bad in one known way."""
    rng = np.random.default_rng(seed)
    f = {
        "resolution": rng.uniform(90, 200, n) ** 2,
        "aspect_ratio": rng.uniform(1.0, 1.4, n),
        "laplacian_var": rng.uniform(50, 300, n),
        "ocr_text_ratio": np.where(rng.random(n) < 0.1, rng.uniform(0.0, 0.02, n), 0.0),
        "lang_is_dominant": np.ones(n),
        "lang_confidence": rng.uniform(0.6, 0.99, n),
        "concreteness": rng.normal(3.0, 0.3, n),
        "clip_similarity": rng.normal(0.5, 0.05, n),
        "grounding_count": rng.integers(1, 3, n).astype(float),
        "n_phrases": np.full(n, 3.0),
        "flip_consistency": rng.normal(0.9, 0.02, n),
        "caption_info_gain": np.ones(n),
        "caption_match_p": rng.uniform(0.0, 0.2, n),
        "image_match_p": rng.uniform(0.0, 0.2, n),
    }
    f["resolution"][0] = 12 * 12  # tiny
    f["aspect_ratio"][1] = 9.0  # extreme aspect
    f["laplacian_var"][2] = 0.5  # blurred
    f["ocr_text_ratio"][3], f["caption_info_gain"][3] = 0.45, 0.2  # text banner
    f["lang_is_dominant"][4], f["lang_confidence"][4] = 0.0, 0.99  # foreign language
    f["lang_is_dominant"][7], f["lang_confidence"][7] = 0.0, 0.7
    f["concreteness"][5] = 0.5  # vague caption
    f["clip_similarity"][6], f["grounding_count"][6] = 0.05, 0.0  # misaligned
    f["caption_match_p"][6], f["image_match_p"][6] = 0.7, 0.8
    f["image_match_p"][9] = np.nan  # no random pairing to test against: the permutation LF abstains
    f["n_phrases"][8] = 0.0  # a caption without phrases: the grounding LF abstains
    return pl.DataFrame(f)


def test_each_labelling_function_flags_its_known_bad_row_and_abstains_on_ordinary_ones():
    feats = pool_features()
    lfs = ws.labelling_functions(feats, ws.WeakParams(disabled_lfs=""))
    assert len(lfs) >= 8
    L = ws.apply_lfs(feats, lfs)
    col = {lf.name: j for j, lf in enumerate(lfs)}
    expected_bad = {"lf_tiny_image": 0, "lf_extreme_aspect": 1, "lf_blurred": 2, "lf_text_dominated": 3,
                    "lf_caption_repeats_image_text": 3, "lf_foreign_language": 4, "lf_vague_caption": 5,
                    "lf_misaligned": 6, "lf_ungrounded": 6, "lf_image_unmatched": 6, "lf_caption_unmatched": 6}
    for name, row in expected_bad.items():
        assert L[row, col[name]] == BAD, name
        ordinary = L[10:, col[name]]
        assert (ordinary == ABSTAIN).mean() > 0.95, name  # thresholds come from the pool, not magic numbers
    assert L[7, col["lf_foreign_language"]] == ABSTAIN  # foreign but unsure: no vote
    assert L[8, col["lf_ungrounded"]] == ABSTAIN  # no phrase to ground: no vote
    assert L[9, col["lf_image_unmatched"]] == ABSTAIN


def test_the_vague_caption_cut_is_its_own_robust_z_below_the_pools_median():
    feats = pool_features()
    c = feats["concreteness"].to_numpy()
    sigma = 1.4826 * np.median(np.abs(c - np.median(c)))
    shifted = feats.with_columns(pl.Series("concreteness", np.where(np.arange(len(c)) == 5, np.median(c) - 2.5 * sigma, c)))

    def vague(params):
        (lf,) = [lf for lf in ws.labelling_functions(shifted, params) if lf.name == "lf_vague_caption"]
        return lf

    default = vague(ws.WeakParams())
    assert default.threshold == pytest.approx(np.median(shifted["concreteness"].to_numpy()) - 2.0 * sigma, rel=0.02)
    assert default.vote(shifted)[5] == BAD  # 2.5 robust sigmas below: a vague caption at the default (2)
    assert vague(ws.WeakParams(vague_sigmas=3.0)).vote(shifted)[5] == ABSTAIN  # not an outlier at 3
    assert vague(ws.WeakParams(outlier_sigmas=1.0)).threshold == pytest.approx(default.threshold)  # its own setting


def test_disabled_lfs_leave_the_label_model_and_are_validated():
    feats = pool_features()
    every = [lf.name for lf in ws.labelling_functions(feats, ws.WeakParams(disabled_lfs=""))]
    default = [lf.name for lf in ws.labelling_functions(feats, ws.WeakParams())]
    off = ("lf_ungrounded", "lf_misaligned")  # the measured default
    assert set(off) <= set(every) and not set(off) & set(default)
    assert default == [n for n in every if n not in off]
    some = ws.labelling_functions(feats, ws.WeakParams(disabled_lfs=" lf_blurred, lf_vague_caption"))
    assert [lf.name for lf in some] == [n for n in every if n not in ("lf_blurred", "lf_vague_caption")]
    with pytest.raises(ValueError, match="lf_blured.*not labelling functions.*lf_blurred"):
        ws.labelling_functions(feats, ws.WeakParams(disabled_lfs="lf_blured"))
    with pytest.raises(ValueError, match="no labelling function"):
        ws.labelling_functions(feats, ws.WeakParams(disabled_lfs=",".join(every)))


def test_label_model_scores_flagged_samples_below_unflagged_ones():
    feats = pool_features()
    lfs = ws.labelling_functions(feats, ws.WeakParams())
    L = ws.apply_lfs(feats, lfs)
    fit = ws.fit_label_model(L, lfs, ws.WeakParams())
    flagged = (L == BAD).any(axis=1)
    assert flagged[:7].all()
    assert fit.probs[flagged].max() < fit.probs[~flagged].min()
    assert fit.lf_summary.height == len(lfs) and fit.lf_summary["learned_accuracy"].is_finite().all()


def test_thresholds_follow_the_pool_distribution():
    a = ws.labelling_functions(pool_features(), ws.WeakParams())
    shifted = pool_features().with_columns(pl.col("laplacian_var") * 100)
    b = ws.labelling_functions(shifted, ws.WeakParams())
    ta = {lf.name: lf.threshold for lf in a}["lf_blurred"]
    tb = {lf.name: lf.threshold for lf in b}["lf_blurred"]
    assert tb > 50 * ta


def test_label_model_recovers_a_latent_label_from_noisy_votes():
    """Five LFs, each right 85 % of the time where it votes and abstaining half the time."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n, m = 2000, 5
    truth = (rng.random(n) < 0.7).astype(int)
    correct = rng.random((n, m)) < 0.85
    votes = np.where(correct, truth[:, None], 1 - truth[:, None])
    L = np.where(rng.random((n, m)) < 0.5, votes, ABSTAIN)
    lfs = [ws.LabellingFunction(f"lf{j}", "", lambda d: None, 0.0) for j in range(m)]
    fit = ws.fit_label_model(L, lfs, ws.WeakParams())
    assert roc_auc_score(truth, fit.probs) > 0.9
    majority = np.where(L == GOOD, 1, np.where(L == BAD, -1, 0)).sum(1)
    assert fit.probs[majority >= 2].mean() > 0.8 > 0.2 > fit.probs[majority <= -2].mean()
    summary = fit.lf_summary
    assert summary.height == m and np.allclose(summary["coverage"].to_numpy(), 0.5, atol=0.05)
    assert (summary["learned_accuracy"].to_numpy() > 0.55).all()  # shrunk towards the prior by l2


def test_an_lf_the_label_model_inverts_is_reported_and_left_out():
    """Four LFs right 85 % of the time and one that votes the opposite of the truth. Fitted to convergence (no
    early stop: min_epochs = n_epochs), its learned accuracy is below 0.5; it is named in `inverted`, marked out of
    the model, and ŷ_weak is what the others say."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    n, m = 3000, 5
    truth = (rng.random(n) < 0.6).astype(int)
    correct = rng.random((n, m)) < 0.85
    correct[:, 4] = ~correct[:, 4]  # lf4 is right 15 % of the time
    votes = np.where(correct, truth[:, None], 1 - truth[:, None])
    L = np.where(rng.random((n, m)) < 0.5, votes, ABSTAIN)
    lfs = [ws.LabellingFunction(f"lf{j}", "", lambda d: None, 0.0) for j in range(m)]
    fit = ws.fit_label_model(L, lfs, ws.WeakParams(min_epochs=1000))
    assert fit.inverted == ["lf4"]
    summary = fit.lf_summary
    assert summary["in_label_model"].to_list() == [True, True, True, True, False]
    assert summary["learned_accuracy"][4] < 0.5 < summary["learned_accuracy"][:4].min()
    assert roc_auc_score(truth, fit.probs) > 0.9
    silent = L.copy()
    silent[:, 4] = ABSTAIN  # ŷ_weak is what the four honest LFs say: lf4's votes change nothing
    assert np.allclose(fit.probs, ws.fit_label_model(silent, lfs, ws.WeakParams(min_epochs=1000)).probs, atol=1e-5)


def test_no_inversion_on_honest_lfs():
    feats = pool_features()
    lfs = ws.labelling_functions(feats, ws.WeakParams())
    fit = ws.fit_label_model(ws.apply_lfs(feats, lfs), lfs, ws.WeakParams())
    assert fit.inverted == [] and fit.lf_summary["in_label_model"].all()


def _p_values(rng, n_related: int, n_unrelated: int, related_high: float, partners: int = 64):
    """Permutation p-values as operators.match_p_values gives them: unrelated pairs uniform on {1/65, .., 1}, related
    ones uniform below `related_high`."""
    k = partners + 1
    unrelated = rng.integers(1, k + 1, n_unrelated) / k
    related = np.maximum(1, np.ceil(rng.uniform(0, related_high, n_related) * k)) / k
    return np.r_[related, unrelated], np.r_[np.zeros(n_related, bool), np.ones(n_unrelated, bool)]


def test_null_share_cut_drops_where_clean_pairs_win_clearly_and_stays_high_where_they_do_not():
    rng = np.random.default_rng(0)
    sharp, bad = _p_values(rng, 8_000, 2_000, related_high=0.1)  # clean pairs beat ~all random pairings
    blunt, bad2 = _p_values(rng, 8_000, 2_000, related_high=0.45)  # coarse concepts: many random pairings tie
    c_sharp, c_blunt = ws.null_share_cut(sharp, 0.8), ws.null_share_cut(blunt, 0.8)
    assert c_sharp <= 0.15 < 0.45 <= c_blunt
    for p, truth, c in ((sharp, bad, c_sharp), (blunt, bad2, c_blunt)):
        flagged = p >= c
        assert truth[flagged].mean() >= 0.75  # most of what it flags is unrelated, as targeted
    assert (sharp[bad] >= c_sharp).mean() > 0.8  # and the sharp pool's cut catches most unrelated pairs
    # a noise majority: the estimate needs no clean majority
    noisy, bad3 = _p_values(rng, 3_000, 7_000, related_high=0.1)
    c = ws.null_share_cut(noisy, 0.8)
    assert bad3[noisy >= c].mean() >= 0.75 and (noisy[bad3] >= c).mean() > 0.8
    assert ws.null_share_cut(np.full(5, 0.9), 0.8) == ws.P_CUT_GRID[-1]  # too few pairs: the null's median
    with pytest.raises(ValueError, match="match_null_share"):
        ws.null_share_cut(sharp, 0.0)


def test_a_fixed_match_p_cut_is_taken_as_given_and_a_bad_one_refused():
    feats = pool_features()
    fixed = {lf.name: lf.threshold for lf in ws.labelling_functions(feats, ws.WeakParams(match_p_cut=0.5))}
    assert fixed["lf_caption_unmatched"] == fixed["lf_image_unmatched"] == 0.5
    with pytest.raises(ValueError, match="match_p_cut"):
        ws.labelling_functions(feats, ws.WeakParams(match_p_cut=1.5))
