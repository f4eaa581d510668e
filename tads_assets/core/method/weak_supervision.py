"""§3.2.1 probabilistic quality inference, first half: labelling functions over feature thresholds and a
Snorkel LabelModel that turns their votes into weak labels ŷ_weak.

Every threshold is read off the pool's own feature distribution (robust median/MAD outliers, Otsu's split
of a bimodal feature), never a fixed number, so the same functions work on any pool. An LF votes GOOD (1),
BAD (0) or abstains (-1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

ABSTAIN, BAD, GOOD = -1, 0, 1
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass
class WeakParams:
    """Defaults of the weak-label stage (the Dagster Config class takes its defaults from here)."""

    outlier_sigmas: float = 3.0  # robust z beyond which a feature value is an outlier (median ± k·1.4826·MAD)
    # lf_vague_caption's robust z (concreteness below median - k·1.4826·MAD). Vague captions are not rare outliers of
    # concreteness but a shifted group (catalogue: clean p10 / median 2.49 / 2.78, vague median 2.37), so the 3σ tail
    # caught 1-67 % of them across the zoo (catalogue 4-22 %, noise majority 1-3 %); at 2σ 13-86 % (catalogue 40-46 %)
    # for 0-4 % of the clean captions, and q_φ's vague ROC-AUC on the catalogue 0.767 / 0.842 / 0.776 -> 0.875 /
    # 0.903 / 0.853 (three seeds; the other pools within q_φ's spread, heldout 0.909 / 0.919 / 0.902 -> 0.921 / 0.923
    # / 0.903 overall; docs/results.md).
    vague_sigmas: float = 2.0
    # LabelModel training. The LFs rarely overlap (each flags its own defect), which leaves their accuracies
    # weakly identified: trained long, the fit drifts to solutions that invert an LF (learned accuracy
    # < 0.5, so its BAD vote raises P(good)). `fit_label_model` therefore halves the epochs until every
    # learned accuracy is at least 0.5, as each LF is built to be better than chance.
    n_epochs: int = 1000
    min_epochs: int = 50
    lr: float = 0.001
    l2: float = 0.0
    prec_init: float = 0.9  # prior precision of every LF
    # The permutation tests' cut (operators.match_p_values). 0 (default): set on the pool, per side, by
    # `null_share_cut`: the lowest cut at which, by Storey's estimate of how many pairs are unrelated, at least
    # `match_null_share` of the pairs it flags are unrelated (where clean pairs win their permutation test
    # clearly, the cut drops and catches more; where they do not — coarse concepts, templated titles — it stays
    # near the null's median). A value in (0, 1) is taken as the cut (0.5: the null's median).
    match_p_cut: float = 0.0
    match_null_share: float = 0.8
    # LFs left out of the LabelModel, comma-separated (their features still reach q_φ). By default:
    # - lf_ungrounded: "no phrase beats 90 % of reference images" flags clean pairs whose phrases are coarse or
    #   visual-less ("women's", "cotton": 15 % of catalogue pairs, precision 0.56), and the LabelModel, seeing it agree
    #   with the permutation tests, trusted it most (learned accuracy 0.85); left out, q_φ ROC-AUC over the four
    #   tuning pools of the zoo 0.919 → 0.927 (catalog 0.861 → 0.885; demo 0.967 → 0.966), heldout 0.860 → 0.893.
    # - lf_misaligned: the low mode of the CLIP similarity assumes misaligned pairs are a small separate tail; beside
    #   the permutation tests (which assume nothing of the mix) it was the least precise alignment LF on every pool
    #   where it fired (catalogue: 10 % of the clean pairs flagged, precision 0.75; demo 5 %, 0.85) and flagged nothing
    #   on a noise majority; left out, q_φ catalog 0.888 → 0.895, demo 0.972 → 0.978, noise_majority unchanged.
    # "" uses all.
    disabled_lfs: str = "lf_ungrounded,lf_misaligned"
    seed: int = 0


def robust_bounds(x: np.ndarray, sigmas: float) -> tuple[float, float]:
    """(low, high) = median ∓ sigmas·1.4826·MAD of the finite values."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return -np.inf, np.inf
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * MAD_TO_SIGMA
    return med - sigmas * mad, med + sigmas * mad


def otsu_threshold(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a (bimodal) 1-d sample."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2 or x.min() == x.max():
        return float(x.max()) if len(x) else 0.0
    hist, edges = np.histogram(x, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = (w0 * w1 * (m0 - m1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a gap between modes is a plateau:
    return float(edges[1:][best].mean())  # cut in its middle


def lower_mode_split(x: np.ndarray, min_bic_gain: float = 10.0, seed: int = 0) -> float | None:
    """Where a minority low mode ends: if a two-component Gaussian mixture explains the finite values
    better than one (BIC lower by at least `min_bic_gain`) and its low component is the minority, the
    value at which a sample becomes more likely to belong to the high component; otherwise None (the
    sample is unimodal, and a tail test is the right tool)."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)].reshape(-1, 1)
    if len(x) < 20 or x.min() == x.max():
        return None
    one = GaussianMixture(1, random_state=seed).fit(x)
    two = GaussianMixture(2, random_state=seed, n_init=3).fit(x)
    low = int(np.argmin(two.means_.ravel()))
    if one.bic(x) - two.bic(x) < min_bic_gain or two.weights_[low] >= 0.5:
        return None
    grid = np.linspace(float(two.means_.min()), float(two.means_.max()), 2000).reshape(-1, 1)
    above = np.flatnonzero(two.predict_proba(grid)[:, low] < 0.5)
    return float(grid[above[0], 0]) if len(above) else None


P_CUT_GRID = np.round(np.arange(0.05, 0.5001, 0.05), 2)  # cuts `null_share_cut` considers, lowest first
STOREY_LAMBDA = 0.5  # p-values above this are taken to come from unrelated pairs (Storey's λ)


def null_share_cut(p: np.ndarray, target: float, grid: np.ndarray = P_CUT_GRID, lam: float = STOREY_LAMBDA) -> float:
    """The lowest cut c in `grid` such that, among the pairs with p ≥ c, the estimated share of unrelated pairs is at
    least `target`; the grid's top (the null's median) when none is lower.

    Under "unrelated", a permutation p-value is uniform on {s, 2s, .., 1} (s = 1/(partners + 1), the smallest p seen),
    so P(p ≥ c) = 1 - c + s. Storey's estimate of the unrelated share, π0 = P̂(p ≥ λ) / (1 - λ + s), needs no clean
    majority — only that related pairs rarely reach p ≥ λ — and gives the unrelated pairs expected above c,
    π0·(1 - c + s), against the P̂(p ≥ c) observed."""
    if not 0 < target <= 1:
        raise ValueError(f"match_null_share must lie in (0, 1], got {target}")
    p = np.asarray(p, np.float64)
    p = p[np.isfinite(p)]
    top = float(grid[-1])
    if len(p) < 20:
        return top
    s = float(p.min())
    pi0 = min(1.0, float(np.mean(p >= lam)) / (1 - lam + s))
    for c in grid:
        flagged = float(np.mean(p >= c))
        if flagged > 0 and pi0 * (1 - c + s) / flagged >= target:
            return float(c)
    return top


@dataclass
class LabellingFunction:
    name: str
    description: str  # how the threshold was derived, shown in the UI
    vote: Callable[[pl.DataFrame], np.ndarray]  # the frame -> votes in {-1, 0, 1}
    threshold: float


def flag(bad: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """BAD where the test fails, ABSTAIN elsewhere (and where the operator had no reading)."""
    votes = np.where(bad, BAD, ABSTAIN).astype(np.int64)
    return votes if known is None else np.where(known, votes, ABSTAIN)


def labelling_functions(features: pl.DataFrame, params: WeakParams) -> list[LabellingFunction]:
    """The LFs with thresholds fitted on `features` (the pool's feature table).

    Each LF is a defect detector on one quality dimension: BAD in the defect region, abstain elsewhere.
    (LFs that also vote GOOD on "passes this one test" outvote real defects: a blurred image passes the
    alignment, language and grounding tests. Measured on the demo, see README.)"""
    k = params.outlier_sigmas

    def col(frame: pl.DataFrame, name: str) -> np.ndarray:
        return frame[name].cast(float).to_numpy()

    log_res = np.log(np.maximum(col(features, "resolution"), 1.0))
    t_res = robust_bounds(log_res, k)[0]
    t_aspect = robust_bounds(np.log(np.maximum(col(features, "aspect_ratio"), 1.0)), k)[1]
    t_blur = robust_bounds(np.log1p(col(features, "laplacian_var")), k)[0]
    ocr_ratio = col(features, "ocr_text_ratio")
    t_ocr = otsu_threshold(ocr_ratio[ocr_ratio > 0]) if (ocr_ratio > 0).sum() > 1 else 1.0
    foreign = col(features, "lang_is_dominant") == 0
    conf = col(features, "lang_confidence")
    t_lang = float(np.median(conf[foreign & (conf > 0)])) if (foreign & (conf > 0)).any() else 1.0
    t_vague = robust_bounds(col(features, "concreteness"), params.vague_sigmas)[0]
    clip = col(features, "clip_similarity")
    t_clip = lower_mode_split(clip, seed=params.seed)
    t_clip = robust_bounds(clip, k)[0] if t_clip is None else t_clip
    if not 0 <= params.match_p_cut < 1:
        raise ValueError(f"match_p_cut must lie in [0, 1) (0: set on the pool), got {params.match_p_cut}")
    cap_cut, img_cut = ((params.match_p_cut, params.match_p_cut) if params.match_p_cut > 0 else
                        (null_share_cut(col(features, c), params.match_null_share)
                         for c in ("caption_match_p", "image_match_p")))
    gain = col(features, "caption_info_gain")
    t_gain = otsu_threshold(gain) if (gain < 1.0).any() else 0.0

    def f(name, description, threshold, fn):
        return LabellingFunction(name, description, fn, float(threshold))

    lfs = [
        f("lf_tiny_image", "log pixel count below median - k·MAD", np.exp(t_res),
          lambda d: flag(np.log(np.maximum(col(d, "resolution"), 1.0)) < t_res)),
        f("lf_extreme_aspect", "log aspect ratio above median + k·MAD", np.exp(t_aspect),
          lambda d: flag(np.log(np.maximum(col(d, "aspect_ratio"), 1.0)) > t_aspect)),
        f("lf_blurred", "log Laplacian variance below median - k·MAD", np.expm1(t_blur),
          lambda d: flag(np.log1p(col(d, "laplacian_var")) < t_blur)),
        f("lf_text_dominated", "OCR text-region ratio above Otsu's split of the images where text was read",
          t_ocr, lambda d: flag(col(d, "ocr_text_ratio") > t_ocr)),
        f("lf_foreign_language", "fastText: not the pool's dominant language with confidence above the median "
          "of such captions (abstains below it and on captions without words)", t_lang,
          lambda d: flag((col(d, "lang_is_dominant") == 0) & (col(d, "lang_confidence") >= t_lang),
                         col(d, "lang_confidence") > 0)),
        f("lf_vague_caption", "concreteness below median - k·MAD", t_vague,
          lambda d: flag(col(d, "concreteness") < t_vague)),
        f("lf_misaligned", "CLIP similarity in the low mode of a two-Gaussian mixture (BIC-tested; a unimodal "
          "pool falls back to median - k·MAD)", t_clip,
          lambda d: flag(col(d, "clip_similarity") < t_clip)),
        f("lf_image_unmatched", "permutation test, image side: the image matches at least this share of random pool "
          "captions as well as its own (uniform when the caption is unrelated, however much of the pool is noise; "
          "the cut set on the pool so that most flagged pairs are unrelated, null_share_cut)",
          img_cut, lambda d: flag(col(d, "image_match_p") >= img_cut, np.isfinite(col(d, "image_match_p")))),
        f("lf_caption_unmatched", "permutation test, caption side: the caption matches at least this share of random "
          "pool images as well as its own (a misaligned or vague caption is no better than random; the cut set on "
          "the pool, null_share_cut)",
          cap_cut, lambda d: flag(col(d, "caption_match_p") >= cap_cut, np.isfinite(col(d, "caption_match_p")))),
        f("lf_caption_repeats_image_text", "caption information gain over the OCR text below Otsu's split "
          "(1 = nothing read in the image)", t_gain, lambda d: flag(col(d, "caption_info_gain") < t_gain)),
        f("lf_ungrounded", "none of the caption's phrases located in the image (abstains on captions without "
          "phrases)", 1.0, lambda d: flag(col(d, "grounding_count") < 1, col(d, "n_phrases") > 0)),
    ]
    disabled, names = {n.strip() for n in params.disabled_lfs.split(",") if n.strip()}, {lf.name for lf in lfs}
    if disabled - names:
        raise ValueError(f"disabled_lfs names {sorted(disabled - names)}, which are not labelling functions; they are "
                         f"{', '.join(lf.name for lf in lfs)}")
    if disabled >= names:
        raise ValueError("disabled_lfs leaves no labelling function for the LabelModel")
    return [lf for lf in lfs if lf.name not in disabled]


def apply_lfs(features: pl.DataFrame, lfs: list[LabellingFunction]) -> np.ndarray:
    """The label matrix L (n × m) with entries in {-1, 0, 1}."""
    return np.stack([lf.vote(features) for lf in lfs], axis=1) if lfs else np.zeros((features.height, 0), np.int64)


@dataclass
class WeakLabels:
    probs: np.ndarray  # ŷ_weak = P(good) per row
    lf_summary: pl.DataFrame  # Snorkel's LF analysis plus learned accuracies
    label_model: object
    epochs: int = 0  # LabelModel epochs kept (see WeakParams)
    inverted: list[str] = field(default_factory=list)  # LFs the LabelModel inverted, left out of the final fit


def _fit(defect: np.ndarray, flagged: float, params: WeakParams, names: list[str]):
    """The LabelModel on `defect`, halving the epochs while some LF's learned accuracy is below 0.5 (down to
    params.min_epochs); the model, its epochs, its learned accuracies and those of the first (longest) fit."""
    from snorkel.labeling.model import LabelModel

    epochs, first = params.n_epochs, None
    while True:
        model = LabelModel(cardinality=2, verbose=False)
        model.fit(L_train=defect, n_epochs=epochs, lr=params.lr, l2=params.l2, seed=params.seed,
                  prec_init=params.prec_init, class_balance=[1.0 - flagged, flagged], progress_bar=False)
        weights = np.asarray(model.get_weights(), float)
        first = weights if first is None else first
        if (weights >= 0.5).all() or epochs <= params.min_epochs:
            return model, epochs, weights, first
        log.info(f"LabelModel: {epochs} epochs invert {[n for n, w in zip(names, weights) if w < 0.5]} "
                 f"(learned accuracy < 0.5); refitting with {max(params.min_epochs, epochs // 2)}")
        epochs = max(params.min_epochs, epochs // 2)


def fit_label_model(L: np.ndarray, lfs: list[LabellingFunction], params: WeakParams) -> WeakLabels:
    """Snorkel LabelModel over the LF votes → ŷ_weak = P(good); the summary adds each LF's learned accuracy.

    The model is fitted on the defect task (class 1 = some defect), with the class balance read off the
    pool: the share of samples at least one (used) LF flags (at least 1 %, at most 99 %).

    An LF is built to be better than chance, so a learned accuracy below 0.5 means the fit turned it around: its
    BAD vote would raise P(good). Where halving the epochs does not cure that, the inverted LFs are reported
    (`WeakLabels.inverted`, a warning) and the model is refitted without their votes, until none is inverted: a
    defect detector that cannot be told from its opposite on this pool gets no say, rather than the wrong one."""
    from snorkel.labeling import LFAnalysis

    names = [lf.name for lf in lfs]
    defect = np.where(L == BAD, 1, np.where(L == GOOD, 0, ABSTAIN))
    used = np.ones(len(lfs), bool)
    accuracy = np.full(len(lfs), np.nan)
    longest = None
    inverted: list[str] = []
    while True:
        votes = np.where(used, defect, ABSTAIN)
        flagged = float(np.clip((votes == 1).any(axis=1).mean(), 0.01, 0.99)) if len(L) else 0.5
        model, epochs, weights, first = _fit(votes, flagged, params, names)
        longest = first if longest is None else longest
        accuracy[used] = weights[used]
        bad = used & (weights < 0.5)
        if not bad.any() or used.sum() - bad.sum() < 1:
            break
        inverted += [n for n, b in zip(names, bad) if b]
        log.warning(f"LabelModel inverts {[n for n, b in zip(names, bad) if b]} (learned accuracy "
                    f"{', '.join(f'{w:.3f}' for w in weights[bad])} < 0.5 at {epochs} epochs): they get no say in "
                    "ŷ_weak on this pool; refitting without them")
        used &= ~bad
    probs = model.predict_proba(votes)[:, 0].astype(np.float32)
    summary = LFAnalysis(defect).lf_summary()
    frame = pl.DataFrame({
        "lf": names,
        "votes_bad": (L == BAD).mean(axis=0).round(4),
        "votes_good": (L == GOOD).mean(axis=0).round(4),
        "threshold": [round(lf.threshold, 4) for lf in lfs],
        "coverage": summary["Coverage"].to_numpy().astype(float),
        "overlaps": summary["Overlaps"].to_numpy().astype(float),
        "conflicts": summary["Conflicts"].to_numpy().astype(float),
        "learned_accuracy": accuracy,
        f"accuracy_at_{params.n_epochs}_epochs": longest,
        "in_label_model": used,
        "rule": [lf.description for lf in lfs],
    })
    return WeakLabels(probs, frame, model, epochs, inverted)
