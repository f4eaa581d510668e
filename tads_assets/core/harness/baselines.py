"""Baseline selections that TADS is compared against (paper §4, Table 1), as pure functions.

Each returns a `Selection`: a boolean keep mask over the candidate rows, a per-row score (what the
method ranks by) and the reason to record in the ledger for every dropped row. Methods that prune to a
size (`random`, `clip_score`, `semdedup`, `dbp`) take the same `size`, so they are compared at equal
data size and equal training budget:

- `random_selection` — a uniform sample without replacement.
- `clip_score_selection` — the top rows by image-caption cosine (Hessel et al., 2021).
- `semdedup_selection` — SemDeDup (Abbas et al., 2023): k-means on the image embeddings; inside each
  cluster, items sorted by decreasing distance to the centroid; an item's redundancy is its highest
  cosine to an item earlier in that order; the `size` least redundant items are kept (the paper's
  threshold ε chosen so that the kept count is `size`).
- `dbp_selection` — Density-Based Pruning (Abbas et al., 2024, `seeds/dbp_abstract.txt`), with the defaults
  of its reference implementation (amro-kamal/effective_pruning): SemDeDup first (the paper prunes
  LAION-DeDup-280M, SemDeDup's 63.6 % of LAION-440M); k-means; per cluster a complexity
  C_j = d_intra · d_inter (mean cosine distance of members to their centroid; mean cosine distance of the
  centroid to its 20 nearest other centroids); per-cluster counts from the quadratic programme of
  `prune.py` — closest to softmax(C/0.5)·size with Σ = size, each between min(⌊0.5·size/k⌋, n_j − 1) and
  n_j; inside each cluster the members farthest from the centroid ("hard") are kept. `dbp_variant: tads_v1`
  is this project's earlier, labelled variant (5 neighbours, τ 0.1, no lower bound, no SemDeDup first).
- `quality_selection` — a threshold on q_φ (the Q row of Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tads_assets.core.vectors import kmeans_clusters
from tads_assets.core.vectors import l2_normalize as _unit
from tads_assets.core.io import embeddings
from tads_assets.core.io.ingest import scan_raw_pool

METHODS = ("no_filter", "random", "clip_score", "semdedup", "dbp", "quality_only")


# The project's DBP before it followed the reference defaults (labelled `dbp_variant: tads_v1`): d_inter over the 5
# nearest centroids, τ 0.1, quotas ∝ softmax capped by cluster size (`dbp_quotas`), no SemDeDup first.
TADS_V1_DBP = {"neighbours": 5, "temperature": 0.1}


@dataclass
class BaselineParams:
    """Defaults of the baseline selections (the Dagster Config class takes its defaults from here)."""

    n_clusters: int = 50  # k-means clusters of SemDeDup and DBP
    dbp_variant: str = "reference"  # "reference" (effective_pruning's defaults) or "tads_v1" (the earlier variant)
    dbp_neighbours: int = 20  # nearest other centroids in d_inter (compute_centroid_distances.py --num_NNs)
    dbp_temperature: float = 0.5  # τ of the softmax over cluster complexities (prune.py --temperature)
    dbp_balance: float = 0.5  # lower bound of a cluster's count: this share of size/k (prune.py --cls-bal-ratio)
    dbp_semdedup_keep: float = 0.636  # SemDeDup first, down to this share (LAION-440M → LAION-DeDup-280M)
    quality_threshold: float = 0.5  # quality_only keeps q_φ ≥ this
    seed: int = 0


@dataclass
class Selection:
    keep: np.ndarray  # bool per candidate row
    score: np.ndarray  # what the method ranks by (higher = kept first)
    reason: str  # ledger reason of every dropped row
    info: dict
    reasons: np.ndarray | None = None  # per row, when dropped rows have different reasons (else `reason`)


def _check_size(size: int, n: int) -> int:
    if not 0 < size <= n:
        raise ValueError(f"subset size must lie in 1..{n} (the candidate count), got {size}")
    return int(size)


def _top(score: np.ndarray, size: int) -> np.ndarray:
    """Keep mask of the `size` highest scores (ties broken by row order, so the result is deterministic)."""
    order = np.lexsort((np.arange(len(score)), -np.asarray(score, np.float64)))
    keep = np.zeros(len(score), bool)
    keep[order[:size]] = True
    return keep


def no_filter_selection(n: int) -> Selection:
    return Selection(np.ones(n, bool), np.ones(n, np.float32), "", {})


def random_selection(n: int, size: int, seed: int) -> Selection:
    """A uniform random subset of `size` rows."""
    size = _check_size(size, n)
    score = np.random.default_rng(seed).random(n)
    return Selection(_top(score, size), score.astype(np.float32), "random_not_drawn", {"seed": seed})


def clip_score_selection(alignment: np.ndarray, size: int) -> Selection:
    """CLIP-Score filtering: keep the `size` pairs with the highest image-caption cosine."""
    alignment = np.asarray(alignment, np.float32)
    size = _check_size(size, len(alignment))
    keep = _top(alignment, size)
    return Selection(keep, alignment, "clip_score_below_cutoff", {"cutoff": float(alignment[keep].min())})


def semdedup_redundancy(vectors: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per row, its highest cosine to an earlier row of its cluster, rows ordered by decreasing distance to
    the cluster centroid (SemDeDup keeps the least prototypical member of a duplicate group); 0 for the
    first row of each cluster. Memory is bounded by `chunk` rows × cluster size."""
    vectors = _unit(vectors)
    redundancy = np.zeros(len(vectors), np.float32)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        centroid = vectors[members].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        members = members[np.argsort(vectors[members] @ centroid, kind="stable")]  # farthest first
        v = vectors[members]
        for a in range(1, len(members), chunk):
            b = min(a + chunk, len(members))
            sims = v[a:b] @ v[:b].T
            sims[np.arange(b)[None, :] >= np.arange(a, b)[:, None]] = -np.inf  # only earlier rows count
            redundancy[members[a:b]] = np.maximum(sims.max(axis=1), 0.0)
    return redundancy


def semdedup_selection(vectors: np.ndarray, size: int, n_clusters: int, seed: int) -> Selection:
    """SemDeDup at a target size: keep the `size` rows with the lowest redundancy; the implied ε is
    1 − (highest kept redundancy)."""
    size = _check_size(size, len(vectors))
    labels = kmeans_clusters(_unit(vectors), n_clusters, seed=seed)
    redundancy = semdedup_redundancy(vectors, labels)
    keep = _top(-redundancy, size)
    return Selection(keep, -redundancy, "semdedup_redundant",
                     {"clusters": int(len(np.unique(labels))), "epsilon": float(1.0 - redundancy[keep].max())})


def _centroids(vectors: np.ndarray, labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    return _unit(np.stack([vectors[labels == c].mean(axis=0) for c in clusters]))


def dbp_complexity(vectors: np.ndarray, labels: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster ids, d_intra, d_inter): d_intra = mean cosine distance of a cluster's members to its centroid;
    d_inter = mean cosine distance of its centroid to the `neighbours` nearest other centroids."""
    vectors = _unit(vectors)
    clusters = np.unique(labels)
    cents = _centroids(vectors, labels, clusters)
    d_intra = np.array([float(np.mean(1.0 - vectors[labels == c] @ cents[i])) for i, c in enumerate(clusters)])
    if len(clusters) == 1:
        return clusters, d_intra, np.ones(1)
    dist = 1.0 - cents @ cents.T
    np.fill_diagonal(dist, np.inf)
    k = min(neighbours, len(clusters) - 1)
    d_inter = np.sort(dist, axis=1)[:, :k].mean(axis=1)
    return clusters, d_intra, d_inter


def dbp_quotas(complexity: np.ndarray, cluster_sizes: np.ndarray, size: int, temperature: float) -> np.ndarray:
    """Per-cluster keep counts ∝ softmax(complexity / τ), summing to `size`, none above its cluster's size:
    a cluster whose share exceeds its size keeps all, and the excess is shared among the others."""
    cluster_sizes = np.asarray(cluster_sizes, np.int64)
    if size > cluster_sizes.sum():
        raise ValueError(f"cannot keep {size} of {cluster_sizes.sum()} samples")
    z = np.asarray(complexity, np.float64) / temperature
    weight = np.exp(z - z.max())
    quota = np.zeros(len(weight), np.int64)
    open_ = np.ones(len(weight), bool)
    remaining = size
    while remaining > 0:
        share = weight * open_ / (weight * open_).sum() * remaining
        full = open_ & (quota + share >= cluster_sizes)
        if full.any():  # these clusters are kept whole; the rest shares what is left
            remaining -= int((cluster_sizes[full] - quota[full]).sum())
            quota[full] = cluster_sizes[full]
            open_ &= ~full
            continue
        base = np.floor(share).astype(np.int64)
        quota += base
        left = remaining - int(base.sum())
        frac_order = np.lexsort((np.arange(len(share)), -(share - base)))  # largest remainders first
        for i in frac_order[open_[frac_order]][:left]:
            quota[i] += 1
        remaining = 0
    return quota


def dbp_qp_quotas(complexity: np.ndarray, cluster_sizes: np.ndarray, size: int, temperature: float,
                  balance: float) -> np.ndarray:
    """Per-cluster keep counts of effective_pruning's `pruning_qp`: the x minimising ½‖x‖² − (p·size)ᵀx with
    Σx = size and min(⌊balance·size/k⌋, n_j − 1) ≤ x_j ≤ n_j, p = softmax(complexity/τ). That programme is the
    Euclidean projection of p·size onto the box ∩ {Σ = size}, x_j = clip(p_j·size + λ, lb_j, ub_j) for the λ
    that makes the sum `size`: found by bisection (no QP solver needed), then rounded to integers summing
    exactly to `size` (largest remainders first, within the bounds)."""
    ub = np.asarray(cluster_sizes, np.int64)
    k = len(ub)
    if size > ub.sum():
        raise ValueError(f"cannot keep {size} of {ub.sum()} samples")
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"dbp_balance must lie in [0, 1], got {balance}")
    min_samples = int(size / k * balance) if balance > 0 else 1
    lb = np.minimum(min_samples, np.maximum(ub - 1, 0)).astype(np.float64)
    z = np.asarray(complexity, np.float64) / temperature
    target = np.exp(z - z.max())
    target = target / target.sum() * size
    lo, hi = float((lb - target).min()) - 1.0, float((ub - target).max()) + 1.0
    for _ in range(200):  # Σ clip(target + λ) is monotone in λ
        lam = 0.5 * (lo + hi)
        lo, hi = (lam, hi) if np.clip(target + lam, lb, ub).sum() < size else (lo, lam)
    x = np.clip(target + 0.5 * (lo + hi), lb, ub)
    quota = np.floor(x + 1e-9).astype(np.int64)
    for i in np.lexsort((np.arange(k), -(x - quota))):  # hand out the rest by largest remainder
        if quota.sum() >= size:
            break
        if quota[i] < ub[i]:
            quota[i] += 1
    while quota.sum() < size:  # remainders exhausted (rounding at the bounds): fill any room left
        quota[np.flatnonzero(quota < ub)[0]] += 1
    return quota


def dbp_selection(vectors: np.ndarray, size: int, n_clusters: int, neighbours: int, temperature: float,
                  seed: int, balance: float = 0.5, semdedup_keep: float = 0.636, variant: str = "reference") -> Selection:
    """Density-Based Pruning at a target size (see the module docstring). `variant` "reference": SemDeDup first
    down to max(size, semdedup_keep·n), then DBP over what it kept with `dbp_qp_quotas`; "tads_v1": DBP over
    every row with `dbp_quotas` (the project's earlier variant, kept as a labelled option)."""
    if variant not in ("reference", "tads_v1"):
        raise ValueError(f"dbp_variant must be 'reference' or 'tads_v1', got {variant!r}")
    size = _check_size(size, len(vectors))
    vectors = _unit(vectors)
    n = len(vectors)
    rows, info = np.arange(n), {"variant": variant}
    score = np.full(n, -1.0, np.float32)  # rows SemDeDup removes rank below every row DBP saw
    reason = np.full(n, "dbp_prototypical", object)
    if variant == "reference" and semdedup_keep < 1.0:
        n_dedup = max(size, int(round(semdedup_keep * n)))
        dedup = semdedup_selection(vectors, n_dedup, n_clusters, seed)
        rows = np.flatnonzero(dedup.keep)
        reason[~dedup.keep] = "dbp_semdedup_redundant"
        info["semdedup"] = {"kept": int(len(rows)), "of": n, "epsilon": dedup.info["epsilon"]}
    v = vectors[rows]
    labels = kmeans_clusters(v, n_clusters, seed=seed)
    clusters, d_intra, d_inter = dbp_complexity(v, labels, neighbours)
    complexity = d_intra * d_inter
    sizes = np.array([(labels == c).sum() for c in clusters])
    quota = (dbp_qp_quotas(complexity, sizes, size, temperature, balance) if variant == "reference"
             else dbp_quotas(complexity, sizes, size, temperature))
    cents = _centroids(v, labels, clusters)
    keep = np.zeros(n, bool)
    for i, c in enumerate(clusters):
        members = np.flatnonzero(labels == c)
        distance = 1.0 - v[members] @ cents[i]  # to own centroid: small = prototypical = pruned first
        score[rows[members]] = distance
        keep[rows[members[_top(distance, int(quota[i]))]]] = True
    info.update({"clusters": int(len(clusters)),
                 "per_cluster": [{"cluster": int(c), "size": int(s), "d_intra": round(float(a), 4),
                                  "d_inter": round(float(b), 4), "quota": int(q)}
                                 for c, s, a, b, q in zip(clusters, sizes, d_intra, d_inter, quota)]})
    return Selection(keep, score, "dbp_prototypical", info, reasons=reason)


def quality_selection(q: np.ndarray, threshold: float) -> Selection:
    """Keep pairs whose q_φ reaches the threshold."""
    q = np.asarray(q, np.float32)
    return Selection(q >= threshold, q, "quality_below_threshold", {"threshold": threshold})


@dataclass
class Candidates:
    """What the baselines select from: every raw_pool sample with its image features and held-out
    image-caption cosine, and the deduplicated pool's q_φ (quality_only selects from those)."""

    uids: np.ndarray
    image_vec: np.ndarray
    alignment: np.ndarray
    quality_uids: np.ndarray
    quality: np.ndarray


def load_candidates(raw_pool_dir, db, quality_path, frozen_cache_dir=None) -> Candidates:
    """The pool as the baselines see it. SemDeDup and DBP cluster *pretrained* image embeddings, which have not
    seen the pool's captions: with the builtin encoder these are the frozen image tower's features
    (`frozen_cache_dir`), because its projection heads are trained on this very pool and pull a misaligned
    image towards its wrong caption (SemDeDup then keeps such images as "unique"); with an open_clip encoder,
    `image_vec` itself."""
    import polars as pl

    uids = scan_raw_pool(raw_pool_dir).select("uid").collect()
    vecs = uids.join(embeddings.read_embeddings(db, ("uid", "image_vec", "heldout_pair_cos")), on="uid", how="left",
                     maintain_order="left")
    missing = vecs.filter(pl.col("heldout_pair_cos").is_null())
    if missing.height:
        raise ValueError(f"{missing.height} raw_pool samples have no embedding (e.g. uid {missing['uid'][0]}): "
                         "rematerialize pool_embeddings")
    image = embeddings.arrays(vecs, "image_vec")[0]
    _, bad = embeddings.non_finite_rows(vecs["uid"].to_list(), image_vec=image,
                                             heldout_pair_cos=vecs["heldout_pair_cos"].to_numpy()[:, None])
    if bad.height:
        raise ValueError(f"{bad.height} raw_pool samples have NaN/inf embeddings (e.g. uid {bad['uid'][0]}): the "
                         "baselines would rank them arbitrarily; materialize pool_embeddings with config recompute: true")
    if frozen_cache_dir is not None:
        frozen = uids.join(embeddings.load_current_frozen_features(raw_pool_dir, frozen_cache_dir)
                           .select("uid", "image_feat"), on="uid", how="left", maintain_order="left")
        if frozen["image_feat"].null_count():
            raise ValueError(f"{frozen['image_feat'].null_count()} raw_pool samples have no frozen image features in "
                             f"{frozen_cache_dir}: rematerialize clip_encoder")
        image = embeddings.arrays(frozen, "image_feat")[0]
    quality = pl.read_parquet(quality_path, columns=["uid", "quality"])
    return Candidates(uids["uid"].to_numpy(), image, vecs["heldout_pair_cos"].to_numpy(), quality["uid"].to_numpy(),
                      quality["quality"].to_numpy())


def matched_size(final_subset_path, n_budget: int, rule: str) -> tuple[int, str]:
    """(size, where it came from) of the size-matched methods: TADS's final_subset size once it exists, so
    baselines are compared with TADS at equal size (the budget, or fewer when TADS fell short of it), else the
    budget itself (`n_budget` samples, set by `rule`: `resources.Budget`)."""
    import polars as pl

    if Path(final_subset_path).exists():
        return pl.scan_parquet(final_subset_path).select(pl.len()).collect().item(), "TADS final_subset size"
    return max(1, int(n_budget)), f"budget: {rule}"


def select(method: str, cand: Candidates, params: BaselineParams, size: int) -> tuple[np.ndarray, Selection]:
    """(candidate uids, the method's selection over them); `size` is used by the size-matched methods."""
    if method == "quality_only":
        return cand.quality_uids, quality_selection(cand.quality, params.quality_threshold)
    n = len(cand.uids)
    if method == "no_filter":
        return cand.uids, no_filter_selection(n)
    if method == "random":
        return cand.uids, random_selection(n, size, params.seed)
    if method == "clip_score":
        return cand.uids, clip_score_selection(cand.alignment, size)
    if method == "semdedup":
        return cand.uids, semdedup_selection(cand.image_vec, size, params.n_clusters, params.seed)
    if method == "dbp":
        v1 = params.dbp_variant == "tads_v1"  # the earlier variant, with the settings it ran with
        return cand.uids, dbp_selection(cand.image_vec, size, params.n_clusters,
                                        TADS_V1_DBP["neighbours"] if v1 else params.dbp_neighbours,
                                        TADS_V1_DBP["temperature"] if v1 else params.dbp_temperature, params.seed,
                                        params.dbp_balance, params.dbp_semdedup_keep, params.dbp_variant)
    raise ValueError(f"unknown baseline method {method!r} (one of {', '.join(METHODS)})")
