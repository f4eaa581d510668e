"""The feature table of §3.2.1: every operator of `operators.py` over the deduplicated pool, one raw_pool
part at a time. Finished parts are cached under a key of everything they depend on (the part's content,
which of its samples survived dedup, the encoder, the operator settings), so an interrupted run resumes
and a re-run with nothing changed recomputes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tads_assets.core.method import operators as op
from tads_assets.core.io.embeddings import raw_pool_parts
from tads_assets.core.io.ingest import part_fingerprint
from tads_assets.core.atomic import write_parquet_atomic
from tads_assets.core.io.embeddings import arrays

log = logging.getLogger(__name__)


@dataclass
class FeatureRun:
    table: pl.DataFrame
    rater: op.ConcretenessRater
    parts_computed: int
    parts_cached: int
    seconds: dict  # operator group -> seconds spent (computed parts only), plus the total
    ocr_run: int

    @property
    def ocr_skipped(self) -> int:
        return self.table.height - self.ocr_run


# Bumped whenever an operator's output changes for the same input, so cached parts are recomputed
# (2: fastText confidences clipped to [0, 1]).
OPERATORS_VERSION = 2


def _part_key(part: Path, uids: list[str], encoder_id: str, params: op.OperatorParams) -> str:
    h = hashlib.sha256()
    h.update(f"operators v{OPERATORS_VERSION}".encode())
    h.update(part_fingerprint(part).encode())
    h.update("\x1f".join(uids).encode())
    h.update(encoder_id.encode())
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k != "ocr_workers"}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _cached(path: Path, key: str) -> pl.DataFrame | None:
    if not path.exists():
        return None
    try:
        frame = pl.read_parquet(path)
    except Exception:  # damaged or half-written by an older version: recompute
        return None
    if frame.height and frame["part_key"][0] == key:
        return frame.drop("part_key")
    return None


@dataclass
class FeatureInputs:
    """What every part's operators read besides the part itself: the kept samples' vectors (rows in `row_of`
    order), the reference images, and the models and settings. Built once per run by `feature_inputs`."""

    kept: set[str]
    row_of: dict[str, int]
    img: np.ndarray
    txt: np.ndarray
    flip: np.ndarray
    heldout: np.ndarray
    ref: np.ndarray
    cache_dir: Path
    encoder_id: str
    lang_id: op.LanguageId
    encode_texts: Callable[[list[str]], np.ndarray]
    params: op.OperatorParams
    ocr: Callable | None = None


def feature_inputs(kept_uids: list[str], vectors: pl.DataFrame, cache_dir: Path, encoder_id: str,
                   lang_id: op.LanguageId, encode_texts: Callable[[list[str]], np.ndarray], params: op.OperatorParams,
                   ocr: Callable | None = None, reference: np.ndarray | None = None) -> FeatureInputs:
    """`vectors` holds uid, image_vec, text_vec, flipped_image_vec and heldout_pair_cos (the CLIP-similarity
    operator's value) of the pool; every kept sample must have a row. `reference`: the reference images when
    `vectors` is not the whole kept pool (one part's run), else drawn from `vectors`."""
    kept = set(kept_uids)
    vectors = vectors.filter(pl.col("uid").is_in(kept_uids))
    if vectors.height != len(kept):
        missing = kept - set(vectors["uid"].to_list())
        raise ValueError(f"{len(missing)} kept samples have no embedding (e.g. {sorted(missing)[0]}): "
                         "materialize pool_embeddings again")
    img, txt, flip = arrays(vectors, "image_vec", "text_vec", "flipped_image_vec")
    return FeatureInputs(kept, {u: i for i, u in enumerate(vectors["uid"].to_list())}, img, txt, flip,
                         vectors["heldout_pair_cos"].to_numpy().astype(np.float32),
                         op.reference_images(img, params.reference_images, params.seed) if reference is None else reference,
                         Path(cache_dir), encoder_id,
                         lang_id, encode_texts, params, ocr)


@dataclass
class PartFeatures:
    frame: pl.DataFrame
    computed: bool
    ocr_run: int
    seconds: dict  # operator group -> seconds (0 for a cached part)


def part_features(part: Path, inputs: FeatureInputs, progress: Callable[[str], None] = log.info) -> PartFeatures:
    """The operators over one raw_pool part's kept samples, from the cache when its key matches, else computed
    and cached (what a `operator_features` partition and each step of `build_feature_table` do)."""
    uids = [u for u in pl.read_parquet(part, columns=["uid"])["uid"].to_list() if u in inputs.kept]
    key = _part_key(part, uids, inputs.encoder_id, inputs.params)
    target = inputs.cache_dir / part.name
    cached = _cached(target, key)
    if cached is not None:
        return PartFeatures(cached, False, int(cached["ocr_run"].sum()), {})
    frame = pl.read_parquet(part, columns=["uid", "caption", "bytes"]).filter(pl.col("uid").is_in(uids))
    rows = np.array([inputs.row_of[u] for u in frame["uid"].to_list()], np.int64)
    out, stats = op.part_features(frame["uid"].to_list(), frame["caption"].to_list(), frame["bytes"].to_list(),
                                  inputs.img[rows], inputs.flip[rows], inputs.txt[rows], inputs.ref, inputs.lang_id,
                                  inputs.encode_texts, inputs.params, inputs.ocr, progress, inputs.heldout[rows])
    write_parquet_atomic(out.with_columns(pl.lit(key).alias("part_key")), target)
    seconds = {k: stats[f"{k}_seconds"] for k in ("cheap", "ocr", "text", "cross_modal")}
    return PartFeatures(out, True, stats["ocr_run"], seconds)


def build_feature_table(raw_pool_dir: Path, inputs: FeatureInputs,
                        progress: Callable[[str], None] = log.info) -> FeatureRun:
    """Features of every kept sample, part by part (cached parts are read back)."""
    computed = cached_parts = ocr_run = 0
    secs = {"cheap_image": 0.0, "ocr": 0.0, "text": 0.0, "cross_modal": 0.0}
    frames = []
    parts = raw_pool_parts(raw_pool_dir)
    t0 = time.perf_counter()
    for i, part in enumerate(parts):
        result = part_features(part, inputs, progress)
        frames.append(result.frame)
        ocr_run += result.ocr_run
        if not result.computed:
            cached_parts += 1
            continue
        computed += 1
        for k, s in (("cheap_image", "cheap"), ("ocr", "ocr"), ("text", "text"), ("cross_modal", "cross_modal")):
            secs[k] += result.seconds[s]
        progress(f"feature_table: part {i + 1}/{len(parts)} ({part.stem}): {result.frame.height} samples, OCR on "
                 f"{result.ocr_run} ({result.seconds['ocr']:.1f}s), {time.perf_counter() - t0:.0f}s so far")
    table = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
    order = np.array([inputs.row_of[u] for u in table["uid"].to_list()], np.int64)
    table, rater = op.finish_features(table, inputs.txt[order])
    seconds = {**{k: round(v, 2) for k, v in secs.items()}, "total": round(time.perf_counter() - t0, 2)}
    return FeatureRun(table, rater, computed, cached_parts, seconds, ocr_run)
