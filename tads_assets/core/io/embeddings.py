"""Pool embeddings: frozen-feature cache for the builtin encoder and the LanceDB `embeddings` table.

Both are written per raw_pool part (one part per source shard chunk), so an interrupted run resumes
without recomputing finished parts: a part is done when its row count in the cache / table equals its
row count in raw_pool for the current encoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from PIL import Image

from tads_assets.core.method.encoder import FrozenTowers, load_heads
from tads_assets.core.io.formats import decode_rgb
from tads_assets.core.io.ingest import part_fingerprint
from tads_assets.core.io.ledger import DROP
from tads_assets.core.atomic import write_parquet_atomic
from tads_assets.core.method.selection import Signals
from tads_assets.core.method.encoder import BuiltinEncoder, fold_of, heldout_pair_cosine
from tads_assets.core.io.ingest import scan_raw_pool

log = logging.getLogger(__name__)

EMBEDDINGS_TABLE = "embeddings"


def raw_pool_parts(raw_pool_dir: str | Path) -> list[Path]:
    parts = sorted(Path(raw_pool_dir).glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no raw_pool parts under {raw_pool_dir}: materialize raw_pool first")
    return parts


def decode_images(blobs: list[bytes]) -> list[Image.Image]:
    """Decode raw_pool image bytes to upright 8-bit RGB (raw_pool only holds images that decoded at ingestion)."""
    return [decode_rgb(b) for b in blobs]


def _vectors(frame: pl.DataFrame, column: str) -> np.ndarray:
    """A fixed-size vector column as one (rows, dim) float32 array, without a detour through Python lists."""
    return np.array(frame[column].to_numpy(), dtype=np.float32)  # a writable copy (polars hands out read-only views)


def cache_frozen_features(raw_pool_dir: str | Path, cache_dir: str | Path, towers: FrozenTowers, batch_size: int = 64,
                          progress: Callable[[str], None] = log.info) -> dict:
    """Frozen image (plus flipped) and text features of every raw_pool row, cached per part (parts already cached,
    e.g. by a `frozen_features` backfill, are not recomputed)."""
    parts = raw_pool_parts(raw_pool_dir)
    stats = {"parts": len(parts), "parts_computed": 0, "parts_cached": 0, "rows": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    for i, part in enumerate(parts):
        rows, computed = frozen_features_for_part(part, cache_dir, towers, batch_size, progress,
                                                  label=f"part {i + 1}/{len(parts)}")
        stats["rows"] += rows
        stats["parts_computed" if computed else "parts_cached"] += 1
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return stats


def frozen_features_for_part(part: Path, cache_dir: str | Path, towers: FrozenTowers, batch_size: int = 64,
                             progress: Callable[[str], None] = log.info, label: str = "") -> tuple[int, bool]:
    """One raw_pool part's frozen features into the cache, unless a current, finite copy is there: (rows, computed).
    A cached part holding NaN or inf (damaged after it was written) is recomputed."""
    target = Path(cache_dir) / part.name
    fingerprint = f"{part_fingerprint(part)}{TOWERS_SEP}{towers.fingerprint}"  # the part's content and the towers'
    if target.exists() and cached_fingerprint(target) == fingerprint:
        cached = pl.read_parquet(target, columns=list(FROZEN_COLUMNS))
        if all(np.isfinite(a).all() for a in arrays(cached, *FROZEN_COLUMNS)):
            return cached.height, False
        progress(f"frozen features: cached {part.name} holds NaN or inf; recomputing it")
    frame = pl.read_parquet(part, columns=["uid", "caption", "bytes"])
    img, flip = [], []
    t0 = last = time.perf_counter()
    for j in range(0, frame.height, batch_size):
        image, flipped = towers.image_and_flip_features(decode_images(frame["bytes"][j : j + batch_size].to_list()))
        img.append(image)
        flip.append(flipped)
        if time.perf_counter() - last > 5:
            last = time.perf_counter()
            progress(f"frozen features: {label or part.stem}, row {j + len(image)}/{frame.height} "
                     f"({time.perf_counter() - t0:.0f}s)")
    txt = towers.text_features(frame["caption"].to_list())
    out = pl.DataFrame({
        "uid": frame["uid"],
        "image_feat": np.concatenate(img),
        "flip_feat": np.concatenate(flip),
        "text_feat": txt,
        "part_fingerprint": [fingerprint] * frame.height,
    })
    write_parquet_atomic(out, target)
    return frame.height, True


FROZEN_COLUMNS = ("image_feat", "flip_feat", "text_feat")
TOWERS_SEP = "|"  # a cached part's fingerprint: PART_CONTENT|TOWERS (FrozenTowers.fingerprint)


def cached_fingerprint(path: Path) -> str | None:
    try:
        frame = pl.read_parquet(path, columns=["part_fingerprint"], n_rows=1)
    except Exception:  # an old cache without the column, or a damaged file: recompute
        return None
    return frame["part_fingerprint"][0] if frame.height else None


def frozen_part_is_current(cache_dir: str | Path, part: Path) -> bool:
    """Whether the cached frozen features of a raw_pool part belong to the part's current content."""
    cached = Path(cache_dir) / part.name
    return cached.exists() and (cached_fingerprint(cached) or "").split(TOWERS_SEP)[0] == part_fingerprint(part)


def load_frozen_features(cache_dir: str | Path, part_names: list[str] | None = None) -> pl.DataFrame:
    files = [Path(cache_dir) / n for n in part_names] if part_names else sorted(Path(cache_dir).glob("part-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files])


def load_current_frozen_features(raw_pool_dir: str | Path, cache_dir: str | Path) -> pl.DataFrame:
    """The frozen features of every current raw_pool part; fails naming the parts whose cache is missing or
    belongs to another version of the pool."""
    parts = raw_pool_parts(raw_pool_dir)
    stale = [p.name for p in parts if not frozen_part_is_current(cache_dir, p)]
    if stale:
        raise ValueError(f"frozen features of raw_pool part(s) {', '.join(stale[:3])} are missing or belong to "
                         f"another version of the pool: rematerialize clip_encoder")
    return load_frozen_features(cache_dir, [p.name for p in parts])


def arrays(frame: pl.DataFrame, *columns: str) -> list[np.ndarray]:
    return [_vectors(frame, c) for c in columns]


# -------------------------------------------------------------------------------------- LanceDB table


def embeddings_schema(dim: int) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    return pa.schema([("uid", pa.string()), ("part", pa.string()), ("encoder_id", pa.string()),
                      ("part_fingerprint", pa.string()), ("heldout_pair_cos", pa.float32()), ("image_vec", vec), ("text_vec", vec), ("flipped_image_vec", vec)])


def part_is_done(table, part: str, encoder_id: str, n_rows: int, fingerprint: str) -> bool:
    """A part is done when this encoder wrote all its rows for this exact part content."""
    if table is None:
        return False
    return table.count_rows(f"part = '{part}' AND encoder_id = '{encoder_id}' "
                            f"AND part_fingerprint = '{fingerprint}'") == n_rows


def write_part(db, table, part: str, encoder_id: str, uids: list[str], image: np.ndarray, text: np.ndarray,
               flipped: np.ndarray, fingerprint: str = "", heldout: np.ndarray | None = None):
    """Replace one part's rows (idempotent: delete, then one atomic add). Returns the table."""
    dim = image.shape[1]
    data = pa.table({
        "uid": pa.array(uids, pa.string()),
        "part": pa.array([part] * len(uids), pa.string()),
        "encoder_id": pa.array([encoder_id] * len(uids), pa.string()),
        "part_fingerprint": pa.array([fingerprint] * len(uids), pa.string()),
        "heldout_pair_cos": pa.array(np.sum(image * text, axis=1) if heldout is None else heldout, pa.float32()),
        "image_vec": pa.FixedSizeListArray.from_arrays(pa.array(image.astype(np.float32).ravel()), dim),
        "text_vec": pa.FixedSizeListArray.from_arrays(pa.array(text.astype(np.float32).ravel()), dim),
        "flipped_image_vec": pa.FixedSizeListArray.from_arrays(pa.array(flipped.astype(np.float32).ravel()), dim),
    }, schema=embeddings_schema(dim))
    if table is None:
        return db.create_table(EMBEDDINGS_TABLE, data=data, mode="overwrite")
    if table.schema.field("image_vec").type.list_size != dim:
        raise ValueError(f"LanceDB table {EMBEDDINGS_TABLE} holds {table.schema.field('image_vec').type.list_size}-d "
                         f"vectors but the encoder makes {dim}-d ones; rebuild with mode=overwrite")
    table.delete(f"part = '{part}'")
    table.add(data)
    return table


def table_names(db) -> list[str]:
    """Names of a LanceDB database's tables (whichever shape this lancedb version's listing has)."""
    listing = db.list_tables()
    return list(getattr(listing, "tables", listing))


def open_embeddings(db):
    return db.open_table(EMBEDDINGS_TABLE) if EMBEDDINGS_TABLE in table_names(db) else None


def read_embeddings(db, columns: tuple[str, ...] = ("uid", "image_vec", "text_vec", "flipped_image_vec"),
                    part: str | None = None, uids: list[str] | None = None) -> pl.DataFrame:
    """The embeddings table's `columns` in table order: all rows, one raw_pool part's, or the given uids'
    (a filtered scan: a per-part run does not read the whole table)."""
    table = open_embeddings(db)
    if table is None:
        raise FileNotFoundError(f"LanceDB table {EMBEDDINGS_TABLE} does not exist: materialize pool_embeddings first")
    query = table.search().select(list(columns)).limit(None)
    conditions = []
    if part is not None:
        conditions.append(f"part = {sql_string(part)}")
    if uids is not None:
        if not uids:
            return pl.from_arrow(table.schema.empty_table().select(list(columns)))
        conditions.append(f"uid IN ({', '.join(sql_string(u) for u in uids)})")
    if conditions:
        query = query.where(" AND ".join(conditions))
    return pl.from_arrow(query.to_arrow())


def sql_string(value: str) -> str:
    """A SQL string literal for a LanceDB filter (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


# uids, image, text, flipped image vectors, and each pair's cosine from an encoder that never trained on it
PartVectors = tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def builtin_part_embedder(heads_path: str | Path, cache_dir: str | Path, device: str = "cpu",
                          heldout_heads: list[str | Path] = ()) -> Callable[[Path], PartVectors]:
    """Embed a raw_pool part from its cached frozen features with the trained heads (no towers needed);
    the held-out pair cosine comes from the cross-fitted heads (`encoder.fit_heldout_heads`)."""
    enc = BuiltinEncoder(load_heads(heads_path, device), towers=False)
    folds_heads = [load_heads(p, device) for p in heldout_heads]

    def embed(part: Path) -> PartVectors:
        cached = Path(cache_dir) / part.name
        if not frozen_part_is_current(cache_dir, part):
            raise RuntimeError(f"the frozen-feature cache of {part.name} does not match raw_pool's current content: "
                               "materialize clip_encoder again (it refreshes the cache and retrains the heads)")
        frame = pl.read_parquet(cached)
        img, flip, txt = arrays(frame, "image_feat", "flip_feat", "text_feat")
        image, text = enc.embed_image_features(img), enc.embed_text_features(txt)
        uids = frame["uid"].to_list()
        heldout = (heldout_pair_cosine(img, txt, fold_of(uids, len(folds_heads)), folds_heads) if folds_heads
                   else np.sum(image * text, axis=1))
        return uids, image, text, enc.embed_image_features(flip), heldout

    return embed


def model_part_embedder(encoder) -> Callable[[Path], PartVectors]:
    """Embed a raw_pool part by decoding its images and running a full encoder (e.g. open_clip)."""

    def embed(part: Path) -> PartVectors:
        frame = pl.read_parquet(part, columns=["uid", "caption", "bytes"])
        images = decode_images(frame["bytes"].to_list())
        image, text = encoder.encode_images(images), encoder.encode_texts(frame["caption"].to_list())
        # the user's model never trained on this pool: its own cosine is already held out
        return frame["uid"].to_list(), image, text, encoder.encode_images(images, flip=True), np.sum(image * text, 1)

    return embed


def embed_pool(raw_pool_dir: str | Path, db, encoder_id: str, embed_part: Callable[[Path], PartVectors],
               progress: Callable[[str], None] = log.info, recompute: bool = False) -> dict:
    """Write every raw_pool part's vectors to LanceDB, skipping parts already done for this encoder (all parts
    are rewritten when `recompute`)."""
    parts = raw_pool_parts(raw_pool_dir)
    table = open_embeddings(db)
    if table is not None and set(table.schema.names) != set(embeddings_schema(1).names):
        progress("pool_embeddings: table written by an older TADS version; rebuilding it")
        table = None  # write_part re-creates it
    if table is not None and table.count_rows(f"encoder_id != '{encoder_id}'"):
        progress("pool_embeddings: the encoder changed since the table was written; recomputing every part")
    t0 = time.perf_counter()
    done = computed = 0
    pair_cos, flip_cos = [], []
    dim = 0
    names = {p.stem for p in parts}
    for i, part in enumerate(parts):
        n = pl.scan_parquet(part).select(pl.len()).collect().item()
        fingerprint = part_fingerprint(part)
        if not recompute and part_is_done(table, part.stem, encoder_id, n, fingerprint):
            done += 1
            continue
        uids, image, text, flipped, heldout = embed_part(part)
        _, bad = non_finite_rows(uids, image_vec=image, text_vec=text, flipped_image_vec=flipped,
                                 heldout_pair_cos=heldout[:, None])
        if bad.height:
            raise ValueError(
                f"the encoder made NaN/inf vectors for {bad.height} sample(s) of raw_pool part {part.stem} (e.g. "
                f"{bad['uid'][0]}: {bad['detail'][0].split(' holds')[0]}); nothing of the part was written. With the "
                "builtin encoder, materialize clip_encoder (it recomputes damaged frozen-feature parts and retrains "
                "the heads), then pool_embeddings; with open_clip, check the weights (TADS_ENCODER)")
        table = write_part(db, table, part.stem, encoder_id, uids, image, text, flipped, fingerprint, heldout)
        dim = image.shape[1]
        pair_cos.append(np.sum(image * text, axis=1))
        flip_cos.append(np.sum(image * flipped, axis=1))
        computed += 1
        progress(f"pool_embeddings: part {i + 1}/{len(parts)} ({part.stem}, {n} rows) written "
                 f"({time.perf_counter() - t0:.1f}s)")
    # rows of parts that no longer exist in raw_pool (a re-ingested pool) must not linger
    stale_filter = "part NOT IN (" + ", ".join(f"'{p}'" for p in sorted(names)) + ")"
    n_stale = table.count_rows(stale_filter)
    if n_stale:
        table.delete(stale_filter)
    if done and not computed:
        dim = table.schema.field("image_vec").type.list_size
    if not pair_cos:  # everything resumed: summarise from the table itself
        frame = read_embeddings(db)
        img, txt, flip = arrays(frame, "image_vec", "text_vec", "flipped_image_vec")
        pair_cos, flip_cos = [np.sum(img * txt, axis=1)], [np.sum(img * flip, axis=1)]
    return {"rows": table.count_rows(), "dim": dim, "parts_computed": computed, "parts_skipped": done,
            "stale_rows_removed": n_stale, "seconds": round(time.perf_counter() - t0, 2),
            "pair_cosine": np.concatenate(pair_cos), "flip_cosine": np.concatenate(flip_cos)}


NON_FINITE_EMBEDDING = "non_finite_embedding"


def non_finite_rows(uids: list[str], **vectors: np.ndarray) -> tuple[np.ndarray, pl.DataFrame]:
    """Rows whose vectors hold NaN or inf (a damaged table, a broken encoder): a keep mask and one ledger row per
    bad sample naming the vector column(s) at fault."""
    bad = {name: ~np.isfinite(v).all(axis=1) for name, v in vectors.items()}
    keep = ~np.logical_or.reduce(list(bad.values()))
    rows = [{"uid": uids[i], "decision": DROP, "reason": NON_FINITE_EMBEDDING, "value": None,
             "detail": f"{' and '.join(n for n, b in bad.items() if b[i])} holds NaN or inf in LanceDB table "
                       f"{EMBEDDINGS_TABLE}; materialize pool_embeddings with config recompute: true to rewrite the table"}
            for i in np.flatnonzero(~keep)]
    return keep, pl.DataFrame(rows, schema={"uid": pl.Utf8, "decision": pl.Utf8, "reason": pl.Utf8,
                                            "value": pl.Float64, "detail": pl.Utf8})


def pool_with_vectors(raw_pool_dir: str | Path, db) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray]]:
    """raw_pool's metadata (no image bytes) joined with its image and text vectors, in one row order."""
    pool = scan_raw_pool(raw_pool_dir).select("uid", "url", "caption", "width", "height", "sha256", "tiny").collect()
    vecs = read_embeddings(db, ("uid", "image_vec", "text_vec"))
    joined = pool.join(vecs, on="uid", how="left", maintain_order="left")
    missing = joined.filter(pl.col("image_vec").is_null())
    if missing.height:
        raise ValueError(f"{missing.height} raw_pool samples have no embedding (e.g. {missing['uid'][0]}): "
                         "materialize pool_embeddings again")
    image, text = arrays(joined, "image_vec", "text_vec")
    return joined.drop("image_vec", "text_vec"), (image, text)


# ---------------------------------------------------------------- the relevance table and the joined signals

RELEVANCE_TABLE = "relevance_vectors"


def write_relevance_table(db, uids: Sequence[str], scores: np.ndarray, h_r: np.ndarray, task_names: Sequence[str],
                          tasks_sha256: str):
    """LanceDB table `relevance_vectors` beside `embeddings`: uid, r (eq. 10, one value per task), h_r
    (eq. 11), the task order and the task file's hash (so a reader can tell stale rows). Replaced whole."""
    import pyarrow as pa

    k = scores.shape[1]
    table = pa.table({
        "uid": pa.array(list(uids), pa.string()),
        "r": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(scores, np.float32).ravel()), k),
        "h_r": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(h_r, np.float32).ravel()), k),
        "tasks": pa.array([",".join(task_names)] * len(uids), pa.string()),
        "tasks_sha256": pa.array([tasks_sha256] * len(uids), pa.string()),
    })
    return db.create_table(RELEVANCE_TABLE, data=table, mode="overwrite")


def read_relevance_table(db):
    """(uids, r, h_r, task names) from the LanceDB table."""
    if RELEVANCE_TABLE not in table_names(db):
        raise FileNotFoundError(f"LanceDB table {RELEVANCE_TABLE} does not exist: materialize relevance_vectors first")
    t = db.open_table(RELEVANCE_TABLE).to_arrow()
    k = t.schema.field("r").type.list_size
    r = t.column("r").combine_chunks().flatten().to_numpy().reshape(-1, k)
    h = t.column("h_r").combine_chunks().flatten().to_numpy().reshape(-1, k)
    names = t.column("tasks")[0].as_py().split(",") if t.num_rows else []
    return t.column("uid").to_pylist(), r, h, names


def load_signals(quality_path, db, diversity_path, alignment_db=None) -> Signals:
    """Join quality_scores, the relevance_vectors table, cluster_diversity and, given `alignment_db` (the
    pool_embeddings database), each pair's held-out cosine on uid (quality_scores' order); a sample missing from
    one of them means a stale upstream asset, named in the error."""
    quality = pl.read_parquet(quality_path, columns=["uid", "quality"])
    r_uids, r, h, names = read_relevance_table(db)
    rel = pl.DataFrame({"uid": r_uids, "_row": np.arange(len(r_uids))})
    div = pl.read_parquet(diversity_path, columns=["uid", "cluster", "diversity"])
    frame = quality.join(rel, on="uid", how="left", maintain_order="left").join(div, on="uid", how="left",
                                                                                maintain_order="left")
    checks = [("_row", "relevance_vectors"), ("diversity", "cluster_diversity")]
    if alignment_db is not None:
        cos = read_embeddings(alignment_db, ("uid", "heldout_pair_cos"))
        frame = frame.join(cos, on="uid", how="left", maintain_order="left")
        checks.append(("heldout_pair_cos", "pool_embeddings"))
    for column, asset in checks:
        missing = frame.filter(pl.col(column).is_null())
        if missing.height:
            raise ValueError(f"{missing.height} quality_scores samples (e.g. uid {missing['uid'][0]}) have no "
                             f"{asset} row: rematerialize {asset}")
    rows = frame["_row"].to_numpy()
    a = frame["heldout_pair_cos"].to_numpy().astype(np.float64) if alignment_db is not None else None
    if a is not None and not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{int((~np.isfinite(a)).sum())} samples have a non-finite heldout_pair_cos (e.g. uid "
                         f"{frame['uid'][bad]}): rematerialize pool_embeddings")
    return Signals(frame["uid"].to_numpy(), frame["quality"].to_numpy().astype(np.float64), r[rows], h[rows],
                   frame["diversity"].to_numpy().astype(np.float64), frame["cluster"].to_numpy(), names, a)
