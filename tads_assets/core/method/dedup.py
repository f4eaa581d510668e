"""§3.1 Multi-layer deduplication: metadata (eq. 1), semantic (eq. 2), quality-guided (eq. 3-6).

Every function works on arrays aligned with one pool table (row i is sample i) and returns, per layer,
which rows it removes and which kept row each removed one duplicated, so every drop can be ledgered
with its reason. Candidate pairs of the quality-guided layer come from a k-nearest-neighbour search
(`neighbours`: exact below 50,000 rows, a LanceDB index above) and never from all pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tads_assets.core.settings import DROP
from tads_assets.core.vectors import kmeans_clusters, l2_normalize
from tads_assets.core.io.formats import TINY_BYTES, TINY_SIDE

log = logging.getLogger(__name__)

METADATA = "metadata_duplicate"
SEMANTIC = "semantic_density"
QUALITY = "quality_duplicate"
MAX_AUTO_CLUSTERS = 1_000
REDUNDANCY_MODES = ("text", "text_or_image", "text_and_image")
VISUAL_SPACES = ("image", "joint")



@dataclass
class DedupParams:
    """Defaults of the deduplication stage (the Dagster Config class takes its defaults from here)."""

    alpha_r: float = 1.0  # eq. 1 weight of image resolution (min-max normalised log pixels)
    alpha_l: float = 1.0  # eq. 1 weight of caption length (min-max normalised characters)
    n_clusters: int = 0  # eq. 2 M; 0 = round(sqrt(n)) capped at MAX_AUTO_CLUSTERS
    gamma: float = 1.0  # eq. 2 retention ratio per cluster; 1.0 keeps every cluster whole
    # Calibrated on the demo pool with benchmarks/dedup_calibration.py: near the elbow (most near duplicates
    # removed with < 1 % of clean unique samples lost, the paper's rule), taking the setting that keeps a
    # margin on clean loss (0.29 % there) over the one that squeezes out 3 more points of recall at 0.9 %.
    tau_edit: float = 0.15  # eq. 3 normalised edit distance below which captions are structurally redundant
    tau_sem: float = 0.95  # eq. 4 text-embedding cosine above which captions are semantically redundant
    # Extension of eq. 5 (not in the paper): tiny-image cosine (12 x 12 RGB, zero-mean) above which two
    # images are the same picture re-posted (rescaled, re-encoded, trimmed) whatever their captions say.
    # > 1 switches it off, which gives the paper's text-only rule.
    tau_vis: float = 0.93
    # The visual test's own candidates: each sample's nearest neighbours by image embedding over the whole layer,
    # in any cluster and at any joint cosine (a re-post under a rewritten caption often lands in another cluster
    # of the joint space, and beyond its k joint neighbours), with their own null pairs for τ_vis.
    # 0: the visual test sees the joint candidates only (before issue 20).
    visual_neighbours: int = 10
    # The visual test compares pictures crop-robustly (`Pictures.cos`): one side's frame trimmed by up to this share
    # of each side (in steps of TRIM_STEP), so a re-post trimmed by a few per cent still lines up. 0: the whole frames
    # only (before issue 20's fourteenth session). Larger crops in the user's pool: raise it (0.075 costs 1-4 points
    # of re-posts found at the same false-match rate on the zoo, and 3x the comparisons; docs/results.md).
    picture_max_trim: float = 0.05
    # Where the visual candidates are searched (VISUAL_SPACES): "image" (default: the best worst case over the
    # zoo's tuning pools), "joint" ([z_I; z_T], without the cluster and cosine filters). Not the tiny images
    # themselves: ranked and tested in one space, the null pairs beyond the candidates are far easier than the
    # candidates, and τ_vis came out 3-20x optimistic (docs/results.md).
    visual_space: str = "image"
    k_neighbours: int = 10  # candidate pairs per sample from the nearest-neighbour search
    min_joint_cos: float = 0.8  # candidates must also be this close in the joint space [z_I; z_T] (0: off)
    seed: int = 0
    # What eq. 5 calls "the same sample" (REDUNDANCY_MODES): "text" the paper's rule (I_struct ∨ I_sem), "text_or_image"
    # adds I_vis as a third alternative, "text_and_image" asks the caption tests to be backed by the picture
    # (I_vis ∨ ((I_struct ∨ I_sem) ∧ tiny cos > τ_img)): two distinct photos under one template title are not
    # duplicates. The default measured best across the zoo of pools (docs/results.md, benchmarks/zoo.py).
    redundancy: str = "text_and_image"
    tau_img: float = 0.8  # the picture test backing a caption match (text_and_image), when not calibrated
    # Calibrate τ_vis, τ_img (and τ_sem in the text modes) on the pool itself (`calibrate_thresholds`): the
    # smallest τ whose estimated false-removal rate over pairs that are not duplicates stays ≤ max_false_removal.
    calibrate: bool = True
    max_false_removal: float = 0.01
    null_rank_offset: int = 5  # visual null pairs (and joint ones with null_first_rank 0): ranks offset+k+1 .. offset+2k
    # The joint null pairs: each row's joint neighbours ranked null_first_rank .. null_first_rank+k-1, candidates
    # included. A re-post has one or a few copies, which rank first; from the third neighbour on nearly every pair is
    # two distinct samples *as close as the candidates are*, while the pairs beyond the candidates (0: ranks
    # null_rank_offset+k+1 .., the rule before issue 20's thirteenth session) are easier and passed the caption-and-
    # picture test ~10x less often than the distinct pairs among the candidates (docs/results.md). 5 rather than 3:
    # the same clean loss and slightly more re-posts found on the zoo's tuning pools, and groups of up to five
    # copies do not reach the null.
    null_first_rank: int = 5


@dataclass
class LayerResult:
    name: str
    removed: np.ndarray  # bool per row: removed by this layer
    duplicate_of: np.ndarray  # int per row: index of the kept row it duplicated, -1 if none
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ eq. 1


def s_init(width: np.ndarray, height: np.ndarray, caption_len: np.ndarray, alpha_r: float, alpha_l: float) -> np.ndarray:
    """Eq. 1 heuristic initial quality: S_init(x) = α_r·R(I) + α_l·Len(T), both terms min-max normalised
    over the pool (R on log pixel count) so the α weights are comparable."""

    def minmax(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        span = v.max() - v.min() if v.size else 0.0
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    pixels = np.log1p(np.asarray(width, np.float64) * np.asarray(height, np.float64))
    return alpha_r * minmax(pixels) + alpha_l * minmax(caption_len)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def _groups_by_keys(*keys: np.ndarray) -> np.ndarray:
    """Union-find over rows sharing any of the keys (None/empty keys never match). Returns a group id per row."""
    n = len(keys[0])
    parent = np.arange(n)
    for key in keys:
        first: dict = {}
        for i, k in enumerate(key):
            if k is None or k == "":
                continue
            j = first.setdefault(k, i)
            if j != i:
                a, b = _find(parent, i), _find(parent, j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.array([_find(parent, i) for i in range(n)])


def _keep_best(groups: np.ndarray, score: np.ndarray, eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """In each group keep the row with the highest score (ties: lowest row); the others duplicate it."""
    n = len(groups)
    order = np.lexsort((np.arange(n), -score, groups))  # by group, then score desc, then row
    removed = np.zeros(n, bool)
    dup_of = np.full(n, -1)
    g_sorted = groups[order]
    starts = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    best = order[starts]
    best_of_group = dict(zip(g_sorted[starts].tolist(), best.tolist()))
    for i in order[~starts]:
        removed[i] = True
        dup_of[i] = best_of_group[groups[i]]
    if eligible is not None:
        removed &= eligible
        dup_of[~removed] = -1
    return removed, dup_of


def metadata_dedup(sha256: np.ndarray, url: np.ndarray, score: np.ndarray) -> LayerResult:
    """Eq. 1: collision sets share a file hash or a source URL; keep argmax S_init of each set."""
    t0 = time.perf_counter()
    groups = _groups_by_keys(np.asarray(sha256, object), np.asarray(url, object))
    removed, dup_of = _keep_best(groups, np.asarray(score, np.float64))
    return LayerResult(METADATA, removed, dup_of, time.perf_counter() - t0,
                       {"collision_sets": int(len(np.unique(groups[removed]))) if removed.any() else 0})


# ------------------------------------------------------------------------------------------ eq. 2


def semantic_dedup(labels: np.ndarray, score: np.ndarray, gamma: float) -> LayerResult:
    """Eq. 2: in each cluster C_j keep the top K_j = ⌈γ·|C_j|⌉ samples by S_init."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    t0 = time.perf_counter()
    n = len(labels)
    order = np.lexsort((np.arange(n), -np.asarray(score, np.float64), labels))
    removed = np.zeros(n, bool)
    dup_of = np.full(n, -1)
    sorted_labels = labels[order]
    bounds = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        k = math.ceil(gamma * (b - a))
        members = order[a:b]
        removed[members[k:]] = True
        dup_of[members[k:]] = members[0]  # the cluster's best sample stands for it in the ledger
    return LayerResult(SEMANTIC, removed, dup_of, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- eq. 3-6


def normalised_edit_distance(a: list[str], b: list[str]) -> np.ndarray:
    """Levenshtein distance divided by the longer caption's length (0 = identical, 1 = nothing shared)."""
    from rapidfuzz.distance import Levenshtein

    return np.array([Levenshtein.normalized_distance(x, y) for x, y in zip(a, b)], dtype=np.float64)


EXACT_MAX_ROWS = 50_000  # `neighbours` searches exactly up to here, through a LanceDB index above


def neighbours_exact(vectors: np.ndarray, k: int, block_entries: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (cosine) of every row among all rows: blocks of rows against all rows as one
    matrix product each (at most `block_entries` similarities, 64 MiB, at a time), the top k of each row.
    Returns (indices, cosines), each (n, min(k, n - 1)), self excluded, nearest first."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(l2_normalize(vectors)))
    n = len(x)
    k = min(k, n - 1)
    idx, cos = np.zeros((n, max(k, 0)), np.int64), np.zeros((n, max(k, 0)), np.float32)
    if k <= 0:
        return idx, cos
    block = max(1, block_entries // n)
    with torch.inference_mode():
        for start in range(0, n, block):
            sims = x[start : start + block] @ x.T
            rows = torch.arange(len(sims))
            sims[rows, rows + start] = -float("inf")  # not its own neighbour
            c, i = sims.topk(k, dim=1)
            idx[start : start + len(sims)], cos[start : start + len(sims)] = i.numpy(), c.numpy()
    return idx, cos


def neighbours(vectors: np.ndarray, k: int, exact_max_rows: int = EXACT_MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours (cosine) of every row: `neighbours_exact` up to `exact_max_rows` rows, else
    `neighbours_lancedb` (an IVF index whose work per query stays constant). Exact search by blocked matrix products
    measured 1.0 s for the demo's 9,460 rows of 512 dimensions on 2 cores, against 13-15 s for LanceDB's exhaustive
    scan (one pass over the table per query), with the same neighbours (tests/core/test_dedup.py)."""
    if len(vectors) <= exact_max_rows:
        return neighbours_exact(vectors, k)
    return neighbours_lancedb(vectors, k)


def neighbours_lancedb(vectors: np.ndarray, k: int, db=None, table_name: str = "dedup_candidates",
                       index_min_rows: int = EXACT_MAX_ROWS, partition_rows: int = 1_000, nprobes: int = 8,
                       query_batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours (cosine) of every row among all rows, from a LanceDB table.

    Below `index_min_rows` rows LanceDB searches exhaustively (exact kNN). Above, an IVF-Flat index with
    about `partition_rows` vectors per partition is built and each query probes `nprobes` partitions, so
    the work per query stays constant and the whole search grows linearly with the pool (duplicates are
    each other's nearest vectors, so they share or neighbour a partition). Queries go in batches.
    Returns (indices, cosines), each (n, k), self excluded, -1 padded.
    """
    import tempfile

    import lancedb
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.full((n, 0), -1), np.zeros((n, 0), np.float32)
    if db is None:
        db = lancedb.connect(tempfile.mkdtemp(prefix="tads-knn-"))
    data = pa.table({"row": pa.array(np.arange(n), pa.int64()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), d)})
    table = db.create_table(table_name, data=data, mode="overwrite")
    indexed = n >= index_min_rows
    if indexed:
        from lancedb.index import IvfFlat

        table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=max(16, n // partition_rows),
                                                    max_iterations=20, sample_rate=64))
    idx = np.full((n, k), -1, np.int64)
    cos = np.zeros((n, k), np.float32)
    for start in range(0, n, query_batch):
        q = vectors[start : start + query_batch]
        search = table.search(q).distance_type("cosine").limit(k + 1).select(["row", "_distance"])
        if indexed:
            search = search.nprobes(nprobes)
        res = search.to_arrow()
        qi = res.column("query_index").to_numpy() + start if "query_index" in res.column_names else np.full(res.num_rows, start)
        rows = res.column("row").to_numpy()
        dist = res.column("_distance").to_numpy()
        keep = rows != qi  # drop self matches
        qi, rows, dist = qi[keep], rows[keep], dist[keep]
        order = np.lexsort((dist, qi))
        qi, rows, dist = qi[order], rows[order], dist[order]
        rank = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left")
        ok = rank < k
        idx[qi[ok], rank[ok]] = rows[ok]
        cos[qi[ok], rank[ok]] = 1.0 - dist[ok]
    db.drop_table(table_name)
    return idx, cos


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """One integer per unordered pair (i, j) of rows among n, for set tests between pair lists."""
    return np.minimum(i, j) * n + np.maximum(i, j)


def _degree(pairs: np.ndarray, n: int) -> np.ndarray:
    """Candidate pairs per row (d of `_false_removal`)."""
    return np.bincount(pairs.ravel(), minlength=n) if len(pairs) else np.zeros(n)


def candidate_pairs(labels: np.ndarray, nbr_idx: np.ndarray, nbr_cos: np.ndarray, min_joint_cos: float) -> np.ndarray:
    """Unique (i, j), i < j, pairs among neighbours that share a semantic cluster."""
    n, k = nbr_idx.shape
    i = np.repeat(np.arange(n), k)
    j = nbr_idx.ravel()
    c = nbr_cos.ravel()
    ok = (j >= 0) & (c >= min_joint_cos)
    i, j = i[ok], j[ok]
    ok = labels[i] == labels[j]
    pairs = np.stack([np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


PICTURE_GRID = 12  # the visual test compares PICTURE_GRID x PICTURE_GRID RGB box averages of the thumbnails
TRIM_STEP = 0.025  # spacing of the trims the crop-robust comparison tries (0.3 of a grid cell)


def _box_matrix(side: int, cells: int, lo: float, hi: float) -> np.ndarray:
    """(cells, side) weights that average `side` pixels over `cells` equal cells spanning [lo, hi) (pixel units,
    fractional edges weighted by their overlap): a box resize of the span, exact for any trim."""
    edges = lo + (hi - lo) * np.arange(cells + 1) / cells
    p = np.arange(side)
    overlap = np.clip(np.minimum(edges[1:, None], p[None] + 1) - np.maximum(edges[:-1, None], p[None]), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows made zero-mean and unit-length (brightness and contrast cancel); a flat row becomes zeros."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-6)


class Pictures:
    """The layer's thumbnails (formats.tiny_image, 16 x 16 RGB) and the visual test's similarity of two of them.

    `cos(a, b)` is crop-robust: the largest cosine between one picture's 12 x 12 descriptor of its whole frame and the
    other's descriptors of frames trimmed by 0, TRIM_STEP, ... up to `max_trim` of each side (every combination of
    the four sides), both ways round. A re-post trimmed by a few per cent shifts a 12 x 12 grid by a fraction of a
    cell, which costs a plain cosine more than two distinct pictures of one kind differ (docs/method.md, "Why the
    visual test"); one of the trimmed frames lines up with the re-post. Descriptors are zero-mean unit vectors, so
    brightness and contrast changes cancel. Results are memoised per pair."""

    def __init__(self, thumbs: np.ndarray, max_trim: float = 0.05):
        if thumbs.ndim != 4 or thumbs.shape[1] != thumbs.shape[2] or thumbs.shape[3] != 3:
            raise ValueError(f"thumbnails must be (n, side, side, 3), got {thumbs.shape}")
        if not 0 <= max_trim < 0.5:
            raise ValueError(f"picture_max_trim must lie in [0, 0.5), got {max_trim}")
        self.thumbs = thumbs.astype(np.float32, copy=False)
        self.max_trim = float(max_trim)
        side = thumbs.shape[1]
        trims = np.round(np.arange(0.0, max_trim + 1e-9, TRIM_STEP), 6) if max_trim > 0 else np.zeros(1)
        self._mats = np.stack([_box_matrix(side, PICTURE_GRID, lo * side, side - hi * side) for lo in trims for hi in trims])
        self.full = self._descriptors(self.thumbs, self._mats[:1])[:, 0]
        self.has_picture = np.abs(self.full).sum(axis=1) > 0  # a missing or flat thumbnail is all zeros
        self._keys = np.zeros(0, np.int64)
        self._vals = np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.thumbs)

    def __getitem__(self, rows) -> "Pictures":
        return Pictures(self.thumbs[rows], self.max_trim)

    def trimmed(self, max_trim: float) -> "Pictures":
        return self if max_trim == self.max_trim else Pictures(self.thumbs, max_trim)

    @property
    def n_variants(self) -> int:
        return len(self._mats) ** 2

    @property
    def compared(self) -> int:
        """How many distinct pairs have been compared (and memoised) so far."""
        return len(self._keys)

    @staticmethod
    def _descriptors(thumbs: np.ndarray, mats: np.ndarray) -> np.ndarray:
        """(n, len(mats)^2, 432): for every (row span, column span) pair of `mats`, the unit 12 x 12 RGB descriptor."""
        x = np.ascontiguousarray(thumbs.transpose(0, 3, 1, 2))[:, :, None]  # n, C, 1, S, S
        rows = mats[None, None] @ x  # n, C, m, 12, S: row spans
        out = rows[:, :, :, None] @ mats.transpose(0, 2, 1)[None, None, None]  # n, C, m, m, 12, 12: column spans
        n, m = len(thumbs), len(mats)
        out = out.transpose(0, 2, 3, 4, 5, 1).reshape(n * m * m, -1)
        return _unit_rows(out).reshape(n, m * m, -1)

    def _compute(self, a: np.ndarray, b: np.ndarray, rows_per_chunk: int = 256, pairs_per_batch: int = 512) -> np.ndarray:
        best = np.full(len(a), -1.0, np.float32)
        for src, dst in ((a, b), (b, a)):  # src's trimmed frames against dst's whole frame
            order = np.argsort(src, kind="stable")
            s_sorted = src[order]
            uniq = np.unique(s_sorted)
            for c in range(0, len(uniq), rows_per_chunk):
                rows = uniq[c:c + rows_per_chunk]
                lo, hi = np.searchsorted(s_sorted, rows[0]), np.searchsorted(s_sorted, rows[-1], side="right")
                v = self._descriptors(self.thumbs[rows], self._mats)  # rows_per_chunk x 81 x 432 floats: ~36 MB
                sel = order[lo:hi]
                local = np.searchsorted(rows, src[sel])
                for k in range(0, len(sel), pairs_per_batch):
                    p, loc = sel[k:k + pairs_per_batch], local[k:k + pairs_per_batch]
                    best[p] = np.maximum(best[p], np.einsum("pvd,pd->pv", v[loc], self.full[dst[p]]).max(axis=1))
        flat = ~(self.has_picture[a] & self.has_picture[b])
        best[flat] = 0.0  # a missing or flat picture matches nothing
        return best

    def cos(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if len(a) == 0:
            return np.zeros(0, np.float32)
        keys = _pair_keys(np.minimum(a, b), np.maximum(a, b), len(self))
        pos = np.clip(np.searchsorted(self._keys, keys), 0, max(len(self._keys) - 1, 0))
        known = (self._keys[pos] == keys) if len(self._keys) else np.zeros(len(keys), bool)
        out = np.zeros(len(keys), np.float32)
        out[known] = self._vals[pos[known]]
        if (~known).any():
            new_keys, first = np.unique(keys[~known], return_index=True)
            idx = np.flatnonzero(~known)[first]
            vals = self._compute(a[idx], b[idx])
            out[~known] = vals[np.searchsorted(new_keys, keys[~known])]
            merged = np.concatenate([self._keys, new_keys])
            order = np.argsort(merged, kind="stable")
            self._keys, self._vals = merged[order], np.concatenate([self._vals, vals])[order]
        return out


def tiny_image_vectors(tiny: list[bytes | None], max_trim: float = 0.05) -> Pictures:
    """raw_pool's `tiny` column (formats.tiny_image, 16 x 16 RGB bytes) as `Pictures`. A missing or flat thumbnail
    matches nothing; one of another length (a raw_pool ingested before the thumbnail changed) is an error."""
    out = np.zeros((len(tiny), TINY_SIDE, TINY_SIDE, 3), np.float32)
    for i, b in enumerate(tiny):
        if b is None or len(b) == 0:
            continue
        if len(b) != TINY_BYTES:
            raise ValueError(f"row {i}: a tiny-image thumbnail of {len(b)} bytes, expected {TINY_BYTES} "
                             f"({TINY_SIDE} x {TINY_SIDE} RGB): raw_pool was ingested by an older TADS; materialize "
                             "raw_pool again")
        out[i] = np.frombuffer(b, np.uint8).reshape(TINY_SIDE, TINY_SIDE, 3)
    return Pictures(out, max_trim)


def _caption_tests(a: np.ndarray, b: np.ndarray, captions: list[str], text_vec: np.ndarray,
                   tau_edit: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (a, b): eq. 3's I_struct (normalised edit distance < τ_edit) and the text-embedding cosine of eq. 4."""
    struct = normalised_edit_distance([captions[x] for x in a], [captions[y] for y in b]) < tau_edit
    return struct, np.sum(text_vec[a] * text_vec[b], axis=1)


def _tiny_cos(a: np.ndarray, b: np.ndarray, tiny_vec: Pictures | np.ndarray | None) -> np.ndarray:
    """The visual test's similarity of pairs (a, b): `Pictures.cos` (crop-robust), or the dot product of given unit
    descriptors (an array, one row per sample)."""
    if tiny_vec is None:
        return np.zeros(len(a))
    if isinstance(tiny_vec, Pictures):
        return tiny_vec.cos(a, b)
    return np.sum(tiny_vec[a] * tiny_vec[b], axis=1)


def _has_picture(tiny_vec: Pictures | np.ndarray) -> np.ndarray:
    return tiny_vec.has_picture if isinstance(tiny_vec, Pictures) else np.abs(tiny_vec).sum(axis=1) > 0


def redundant(mode: str, struct: np.ndarray, text_cos: np.ndarray, tiny_cos: np.ndarray, tau_sem: float,
              tau_vis: float, tau_img: float) -> dict[str, np.ndarray]:
    """Eq. 5 per pair under `mode` (REDUNDANCY_MODES): the flags of each test and `red`, their combination."""
    if mode not in REDUNDANCY_MODES:
        raise ValueError(f"redundancy must be one of {', '.join(REDUNDANCY_MODES)}, got {mode!r}")
    caption = struct | (text_cos > tau_sem)
    vis = tiny_cos > tau_vis if (mode != "text" and tau_vis <= 1.0) else np.zeros(len(struct), bool)
    if mode == "text":
        red = caption
    elif mode == "text_or_image":
        red = caption | vis
    else:
        red = vis | (caption & (tiny_cos > tau_img))
    return {"structural": struct, "semantic": text_cos > tau_sem, "visual": vis, "caption": caption, "red": red}


def quality_dedup(pairs: np.ndarray, captions: list[str], text_vec: np.ndarray, alignment: np.ndarray,
                  tau_edit: float, tau_sem: float, tiny_vec: Pictures | np.ndarray | None = None,
                  tau_vis: float = 2.0, mode: str = "text_or_image", tau_img: float = 2.0,
                  visual_pairs: np.ndarray | None = None) -> LayerResult:
    """Eq. 3-6: a candidate pair is redundant if its captions are within edit distance τ_edit (eq. 3) or
    their text embeddings' cosine exceeds τ_sem (eq. 4), eq. 5 I_red = I_struct ∨ I_sem; each connected
    group of redundant pairs keeps the sample with the highest CLIP alignment cos(z_I, z_T) (eq. 6).

    `mode` (REDUNDANCY_MODES) says what "the same sample" takes: "text" is the paper's eq. 5 as written;
    "text_or_image" adds I_vis (tiny-image cosine of `tiny_vec` > τ_vis: the same picture re-posted with a new
    caption); "text_and_image" (I_vis ∨ (I_struct ∨ I_sem) ∧ tiny cosine > τ_img) also asks a caption match to
    be backed by the picture, so distinct photos under one template title are not duplicates.

    `pairs` (joint-space neighbours within a cluster) face the whole rule; `visual_pairs` (`visual_candidates`:
    image-embedding neighbours anywhere in the layer) face I_vis alone, which needs no caption evidence."""
    t0 = time.perf_counter()
    n = len(captions)
    use_vis = visual_pairs is not None and len(visual_pairs) and mode != "text" and tiny_vec is not None and tau_vis <= 1.0
    if use_vis and len(pairs):
        fresh = ~np.isin(_pair_keys(visual_pairs[:, 0], visual_pairs[:, 1], n), _pair_keys(pairs[:, 0], pairs[:, 1], n))
        visual_pairs = visual_pairs[fresh]
    vis_only = visual_pairs[_tiny_cos(visual_pairs[:, 0], visual_pairs[:, 1], tiny_vec) > tau_vis] if use_vis else pairs[:0]
    stats = {"pairs": int(len(pairs)), "visual_candidate_pairs": int(len(visual_pairs)) if use_vis else 0,
             "visual_search_pairs": int(len(vis_only)), "mode": mode}
    if len(pairs) == 0 and len(vis_only) == 0:
        return LayerResult(QUALITY, np.zeros(n, bool), np.full(n, -1), time.perf_counter() - t0,
                           {**stats, "redundant_pairs": 0, "structural_pairs": 0, "semantic_pairs": 0,
                            "visual_pairs": 0, "caption_only_pairs": 0})
    a, b = pairs[:, 0], pairs[:, 1]
    struct, text_cos = _caption_tests(a, b, captions, text_vec, tau_edit)
    tiny_cos = _tiny_cos(a, b, tiny_vec)
    flags = redundant(mode, struct, text_cos, tiny_cos, tau_sem, tau_vis, tau_img)
    red = flags["red"]
    parent = np.arange(n)
    for x, y in np.concatenate([pairs[red], vis_only]):
        ra, rb = _find(parent, int(x)), _find(parent, int(y))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups = np.array([_find(parent, i) for i in range(n)])
    removed, dup_of = _keep_best(groups, np.asarray(alignment, np.float64))
    return LayerResult(QUALITY, removed, dup_of, time.perf_counter() - t0,
                       {**stats, "redundant_pairs": int(red.sum() + len(vis_only)),
                        "structural_pairs": int(flags["structural"].sum()), "semantic_pairs": int(flags["semantic"].sum()),
                        "visual_pairs": int(flags["visual"].sum() + len(vis_only)),
                        "caption_only_pairs": int((flags["caption"] & ~red).sum())})


def visual_candidates(space: np.ndarray, has_picture: np.ndarray, k: int, null_offset: int = 0,
                      search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The visual test's candidates: each row's k nearest rows in `space` (the image embeddings by default), in any
    cluster and at any joint cosine, and (with `null_offset` > 0) the visual null pairs, its neighbours ranked
    null_offset+1 .. null_offset+k that are not candidates (`null_pairs`). Rows without a tiny-image descriptor
    (`has_picture` False) pair with nothing. `search` is the neighbour search (default `neighbours`).
    Returns (candidate pairs i < j, null pairs)."""
    n = len(space)
    empty = np.zeros((0, 2), np.int64)
    if n < 2 or k < 1:
        return empty, empty
    nbr_idx, nbr_cos = (search or neighbours)(space, null_offset + k if null_offset else k)
    labels = np.where(has_picture, 0, -1 - np.arange(n))  # a row without a descriptor is its own cluster of one
    pairs = candidate_pairs(labels, nbr_idx[:, :k], nbr_cos[:, :k], -1.0)
    nulls = null_pairs(labels, nbr_idx, nbr_cos, k, null_offset, -1.0, pairs) if null_offset else empty
    return pairs, nulls


def null_pairs(labels: np.ndarray, nbr_idx: np.ndarray, nbr_cos: np.ndarray, k: int, offset: int,
               min_joint_cos: float, candidates: np.ndarray) -> np.ndarray:
    """Pairs (i, j) that stand in for "not duplicates" in `calibrate_thresholds`: each row's neighbours ranked
    offset+1 .. offset+k, under the candidates' own filters (same semantic cluster, joint cosine ≥ min_joint_cos)
    and not one of `candidates` (pass none to keep them). A re-post has one or a few copies, which rank first; what
    ranks beyond the first `offset` is, in all but the densest duplicate groups, another sample that merely resembles
    it — in a catalogue, another product under the same title. Where a picture has more copies than `offset`, some
    null pairs are duplicates: the thresholds then come out stricter, never looser. One row per (query row,
    neighbour), query first."""
    n = len(nbr_idx)
    cols = slice(offset, offset + k)
    i = np.repeat(np.arange(n), nbr_idx[:, cols].shape[1])
    j, c = nbr_idx[:, cols].ravel(), nbr_cos[:, cols].ravel()
    ok = (j >= 0) & (c >= min_joint_cos)
    i, j = i[ok], j[ok]
    ok = labels[i] == labels[j]
    i, j = i[ok], j[ok]
    if len(candidates) and len(i):
        ok = ~np.isin(_pair_keys(i, j, n), _pair_keys(candidates[:, 0], candidates[:, 1], n))
        i, j = i[ok], j[ok]
    return np.stack([i, j], axis=1) if len(i) else np.zeros((0, 2), np.int64)


VIS_GRID = np.round(np.arange(0.80, 1.0001, 0.005), 3)  # τ_vis candidates
IMG_GRID = np.round(np.arange(0.30, 1.0001, 0.01), 2)  # τ_img candidates
SEM_GRID = np.round(np.arange(0.85, 1.0001, 0.005), 3)  # τ_sem candidates (text modes)


NULL_BOUND_Z = 1.0  # p is taken at the Wilson upper bound with this z (one-sided ~84 %): few null pairs, more caution


def _upper_rate(hits: int, n: int, z: float = NULL_BOUND_Z) -> float:
    """Wilson score upper bound of a rate from `hits` of `n`: rare events in the tail of a few thousand null pairs
    are too noisy to take at face value (0 of 2,000 does not mean 0)."""
    if n == 0:
        return 0.0
    p, z2 = hits / n, z * z
    return float((p + z2 / (2 * n) + z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n))


def _false_removal(flagged: np.ndarray, degree: np.ndarray) -> float:
    """Estimated false-removal rate of a test that flags null pairs `flagged`: with p the upper bound of its rate
    (`_upper_rate`), each of the layer's Σd/2 candidate pairs (d: a sample's candidate pairs) that is not a
    duplicate is flagged with probability p and then removes one of its two samples, so the expected share of
    samples removed by mistake is p · mean(d) / 2."""
    p = _upper_rate(int(np.sum(flagged)), len(flagged))
    return float(min(1.0, p * np.mean(degree) / 2.0)) if len(degree) else 0.0


def calibrate_thresholds(nulls: np.ndarray, captions: list[str], text_vec: np.ndarray, tiny_vec: Pictures | np.ndarray | None,
                         params: DedupParams, degree: np.ndarray | None = None,
                         visual_nulls: np.ndarray | None = None, visual_degree: np.ndarray | None = None) -> dict:
    """τ_vis, τ_img (text_and_image) or τ_sem (text modes) set on the pool's own null pairs (`null_pairs`).

    For a threshold, p is the share of null pairs its test flags (at its upper bound, `_upper_rate`), and the estimated
    false-removal rate is p · mean(d) / 2 (`_false_removal`; d a sample's number of candidate pairs, `degree`, default
    one each): the expected share of samples that flagged pairs of distinct samples remove. τ_vis is the smallest
    grid value whose visual test alone stays at ≤ α/2 (α = max_false_removal) — on `visual_nulls` (the visual search's
    neighbours beyond its candidates, `visual_candidates`) with `visual_degree` when given, else on the joint
    nulls; then τ_img (text_and_image) or τ_sem (text, text_or_image) the smallest whose whole rule stays ≤ α (with
    visual nulls: the visual estimate plus that of the caption branch where the visual test is silent, on the
    joint nulls). When even the strictest caption threshold estimates more than α (the structural test alone: a pool
    of templated titles under the text-only rule), the result says `attainable: False` and the caller warns.
    Returns the thresholds, the curves (threshold, estimated false-removal rate) and what the estimate rests on."""
    mode, alpha = params.redundancy, params.max_false_removal
    if not 0 < alpha < 1:
        raise ValueError(f"max_false_removal must lie in (0, 1), got {alpha}")
    n_rows = len(np.unique(nulls[:, 0]))
    degree = np.ones(n_rows) if degree is None else np.asarray(degree)
    visual = mode != "text" and tiny_vec is not None
    separate = visual and visual_nulls is not None
    out = {"mode": mode, "max_false_removal": alpha, "null_pairs": int(len(nulls)), "null_rows": n_rows,
           "mean_candidates_per_sample": round(float(degree.mean()), 2) if len(degree) else 0.0,
           "tau_vis": params.tau_vis, "tau_img": params.tau_img, "tau_sem": params.tau_sem, "curves": {},
           "attainable": True}
    e_vis = 0.0
    if separate:
        vdeg = np.ones(len(np.unique(visual_nulls[:, 0]))) if visual_degree is None else np.asarray(visual_degree)
        out.update({"visual_null_pairs": int(len(visual_nulls)),
                    "mean_visual_candidates_per_sample": round(float(vdeg.mean()), 2) if len(vdeg) else 0.0})
        if len(visual_nulls):
            vtiny = _tiny_cos(visual_nulls[:, 0], visual_nulls[:, 1], tiny_vec)
            curve = [(float(t), _false_removal(vtiny > t, vdeg)) for t in VIS_GRID]
            out["curves"]["tau_vis"] = curve
            out["tau_vis"], e_vis = next(((t, e) for t, e in curve if e <= alpha / 2), curve[-1])
    if n_rows == 0:
        out["note"] = "no null pairs (no neighbours at the null ranks pass the filters): thresholds as configured"
        return out
    a, b = nulls[:, 0], nulls[:, 1]
    struct, text_cos = _caption_tests(a, b, captions, text_vec, params.tau_edit)
    tiny = _tiny_cos(a, b, tiny_vec)
    if visual and not separate:
        curve = [(float(t), _false_removal(tiny > t, degree)) for t in VIS_GRID]
        out["curves"]["tau_vis"] = curve
        out["tau_vis"] = next((t for t, e in curve if e <= alpha / 2), float(VIS_GRID[-1]))
    vis = tiny > out["tau_vis"] if visual else np.zeros(len(a), bool)
    silent = ~vis if separate else np.ones(len(a), bool)  # with visual nulls, I_vis is counted there already
    name = "tau_img" if mode == "text_and_image" else "tau_sem"
    if mode == "text_and_image":
        caption = struct | (text_cos > params.tau_sem)
        curve = [(float(t), e_vis + _false_removal(silent & (vis | (caption & (tiny > t))), degree)) for t in IMG_GRID]
    else:
        curve = [(float(t), e_vis + _false_removal(silent & (vis | struct | (text_cos > t)), degree)) for t in SEM_GRID]
    out["curves"][name] = curve
    fits = [(t, e) for t, e in curve if e <= alpha]
    out["attainable"] = bool(fits)
    out[name], out["estimated_false_removal"] = fits[0] if fits else curve[-1]
    if not fits:
        out["note"] = (f"no {'τ_img' if name == 'tau_img' else 'τ_sem'} keeps the estimated false-removal rate ≤ "
                       f"{alpha:.1%} (at the strictest, {curve[-1][1]:.1%}): the caption tests alone flag that many "
                       "pairs of distinct samples — templated captions; the text_and_image rule asks the picture to agree")
    return out


# ------------------------------------------------------------------------------------------- all


@dataclass
class DedupOutcome:
    kept: np.ndarray  # bool per row
    layer: np.ndarray  # object per row: the layer that removed it, None if kept
    duplicate_of: np.ndarray  # int per row: kept row it duplicated, -1
    labels: np.ndarray  # semantic cluster per row (-1 for rows removed before clustering)
    layers: list[LayerResult]


def deduplicate(sha256: np.ndarray, url: np.ndarray, captions: list[str], width: np.ndarray, height: np.ndarray,
                image_vec: np.ndarray, text_vec: np.ndarray, params: DedupParams,
                neighbours: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] = neighbours,
                progress: Callable[[str], None] = log.info, tiny_vec: Pictures | np.ndarray | None = None) -> DedupOutcome:
    """Run the three layers in order; each sees only the rows the previous layers kept. `tiny_vec`
    (`tiny_image_vectors` of raw_pool's `tiny` column, compared crop-robustly up to params.picture_max_trim; or
    unit descriptors, one row per sample, compared by their dot product) enables the visual test of the quality
    layer."""
    n = len(captions)
    cap_len = np.array([len(c) for c in captions], np.float64)
    score = s_init(width, height, cap_len, params.alpha_r, params.alpha_l)
    kept = np.ones(n, bool)
    layer = np.full(n, None, object)
    dup_of = np.full(n, -1)

    def apply(res: LayerResult, rows: np.ndarray) -> None:
        removed_rows = rows[res.removed]
        kept[removed_rows] = False
        layer[removed_rows] = res.name
        dup_of[removed_rows] = rows[res.duplicate_of[res.removed]]
        progress(f"dedup {res.name}: {len(rows)} in, {res.removed.sum()} removed ({res.seconds:.1f}s)")

    rows = np.arange(n)
    meta = metadata_dedup(np.asarray(sha256, object), np.asarray(url, object), score)
    apply(meta, rows)

    rows = np.flatnonzero(kept)
    joint = np.concatenate([image_vec[rows], text_vec[rows]], axis=1) / np.sqrt(2.0)
    t0 = time.perf_counter()
    m = params.n_clusters or min(MAX_AUTO_CLUSTERS, max(1, round(math.sqrt(len(rows)))))
    sub_labels = kmeans_clusters(joint, m, params.seed)
    progress(f"dedup: {m} clusters over {len(rows)} samples ({time.perf_counter() - t0:.1f}s)")
    labels = np.full(n, -1)
    labels[rows] = sub_labels
    sem = semantic_dedup(sub_labels, score[rows], params.gamma)
    sem.extra["clusters"] = m
    apply(sem, rows)

    keep_after_sem = ~sem.removed
    rows2 = rows[keep_after_sem]
    if params.redundancy not in REDUNDANCY_MODES:
        raise ValueError(f"redundancy must be one of {', '.join(REDUNDANCY_MODES)}, got {params.redundancy!r}")
    if tiny_vec is None and params.redundancy != "text":
        progress(f"dedup: no tiny-image descriptors, so the {params.redundancy} rule falls back to the paper's "
                 "text-only rule")
        params = dataclasses.replace(params, redundancy="text")
    t0 = time.perf_counter()
    k, offset = params.k_neighbours, params.null_rank_offset
    if params.null_first_rank < 0:
        raise ValueError(f"null_first_rank must be 0 (beyond the candidates) or a rank >= 1, got {params.null_first_rank}")
    depth = ((params.null_first_rank - 1 + k if params.null_first_rank else k + offset + k) if params.calibrate else k)
    depth = max(depth, k)
    nbr_idx, nbr_cos = neighbours(joint[keep_after_sem], depth)
    labels2 = sub_labels[keep_after_sem]
    pairs = candidate_pairs(labels2, nbr_idx[:, :k], nbr_cos[:, :k], params.min_joint_cos)
    progress(f"dedup: {len(pairs)} candidate pairs from {k}-NN search ({time.perf_counter() - t0:.1f}s)")
    alignment = np.sum(image_vec[rows2] * text_vec[rows2], axis=1)
    if isinstance(tiny_vec, Pictures):
        tiny_vec = tiny_vec.trimmed(params.picture_max_trim)
    caps2, tiny2 = [captions[i] for i in rows2], tiny_vec[rows2] if tiny_vec is not None else None
    vis_pairs = vis_nulls = None
    if params.redundancy != "text" and params.visual_neighbours > 0:
        if params.visual_space not in VISUAL_SPACES:
            raise ValueError(f"visual_space must be one of {', '.join(VISUAL_SPACES)}, got {params.visual_space!r}")
        t1, kv = time.perf_counter(), params.visual_neighbours
        space = image_vec[rows2] if params.visual_space == "image" else joint[keep_after_sem]
        vis_pairs, vis_nulls = visual_candidates(space, _has_picture(tiny2), kv,
                                                 offset + kv if params.calibrate else 0, neighbours)
        progress(f"dedup: {len(vis_pairs)} visual candidate pairs from {kv}-NN search by {params.visual_space} "
                 f"embedding, any cluster ({time.perf_counter() - t1:.1f}s)")
    taus = {"tau_vis": params.tau_vis, "tau_img": params.tau_img, "tau_sem": params.tau_sem}
    calibration = None
    nulls = None
    if params.calibrate:
        nulls = (null_pairs(labels2, nbr_idx, nbr_cos, k, params.null_first_rank - 1, params.min_joint_cos,
                            np.zeros((0, 2), np.int64)) if params.null_first_rank else
                 null_pairs(labels2, nbr_idx, nbr_cos, k, offset + k, params.min_joint_cos, pairs))
    pictures = {}
    if isinstance(tiny2, Pictures) and params.redundancy != "text":
        t1 = time.perf_counter()
        every = np.concatenate([x for x in (pairs, vis_pairs, vis_nulls, nulls) if x is not None and len(x)]
                               or [np.zeros((0, 2), np.int64)])
        tiny2.cos(every[:, 0], every[:, 1])  # memoised: the calibration and the layer below look them up
        pictures = {"picture_max_trim": tiny2.max_trim, "picture_frames": tiny2.n_variants,
                    "picture_pairs": tiny2.compared,
                    "picture_seconds": round(time.perf_counter() - t1, 2)}
        progress(f"dedup: {pictures['picture_pairs']} picture pairs compared, {tiny2.n_variants} trimmed frames each "
                 f"way ({pictures['picture_seconds']:.1f}s)")
    if params.calibrate:
        calibration = calibrate_thresholds(nulls, caps2, text_vec[rows2], tiny2, params, _degree(pairs, len(rows2)),
                                           vis_nulls, None if vis_pairs is None else _degree(vis_pairs, len(rows2)))
        taus = {t: calibration[t] for t in taus}
        progress(f"dedup: calibrated on {calibration['null_pairs']} null pairs of {calibration['null_rows']} samples: "
                 + ", ".join(f"{t} {v:.3f}" for t, v in taus.items())
                 + (f" (estimated false removal {calibration['estimated_false_removal']:.2%})"
                    if "estimated_false_removal" in calibration else ""))
        if not calibration["attainable"]:
            progress(f"dedup WARNING: {calibration['note']}")
    qual = quality_dedup(pairs, caps2, text_vec[rows2], alignment, params.tau_edit, taus["tau_sem"], tiny2,
                         taus["tau_vis"], params.redundancy, taus["tau_img"], vis_pairs)
    qual.extra.update({**taus, **pictures, "calibration": calibration})
    qual.extra["neighbour_seconds"] = round(time.perf_counter() - t0 - qual.seconds, 2)
    apply(qual, rows2)
    return DedupOutcome(kept, layer, dup_of, labels, [meta, sem, qual])


def outcome_tables(uids: np.ndarray, captions: list[str], outcome: DedupOutcome, alignment: np.ndarray):
    """The kept table (uid, cluster, alignment) and the ledger rows of every removed sample."""
    import polars as pl

    kept = pl.DataFrame({"uid": uids[outcome.kept], "cluster": outcome.labels[outcome.kept],
                         "alignment": alignment[outcome.kept].astype(np.float32)})
    removed = np.flatnonzero(~outcome.kept)
    of = outcome.duplicate_of[removed]
    drops = pl.DataFrame({
        "uid": uids[removed],
        "decision": [DROP] * len(removed),
        "reason": outcome.layer[removed].astype(str),
        "value": alignment[removed].astype(np.float64),
        "detail": [f"duplicate of {uids[j]}: {captions[i][:80]!r} ~ {captions[j][:80]!r}" for i, j in zip(removed, of)],
        "duplicate_of": uids[of],
    })
    return kept, drops
