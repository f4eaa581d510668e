"""Pool readers and sample validation: `webdataset:`, `img2dataset:` and `csv:` sources (DESIGN.md).

Readers stream: a source is a list of shards, and each shard yields `RawRecord`s one at a time, so the
pool never sits in memory whole. A reader never raises on bad data inside a shard: a record it cannot
assemble (truncated tar, missing member, missing file, failed download) carries a `problem` and a
`detail`, and the ingestion writes it to the ledger. Configuration mistakes (unknown source prefix,
a CSV without its required columns, a path that matches nothing) raise at once with the fix.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
POOL_KINDS = ("demo", "webdataset", "img2dataset", "csv")

# Reasons a sample leaves the pool at ingestion (the ledger's `reason` column).
TRUNCATED_TAR = "truncated_tar"
UNREADABLE_SHARD = "unreadable_shard"
MISSING_IMAGE = "missing_image"
MISSING_FILE = "missing_file"
DOWNLOAD_FAILED = "download_failed"
EMPTY_IMAGE = "empty_image"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
NON_UTF8_CAPTION = "non_utf8_caption"
CAPTION_TOO_LONG = "caption_too_long"
DUPLICATE_KEY = "duplicate_key"
UNSAFE_PATH = "unsafe_path"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class PoolSpec:
    kind: str
    location: str

    def __str__(self) -> str:
        return self.kind if self.kind == "demo" else f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class Shard:
    """One independently readable piece of a source (a tar, an img2dataset part, a CSV file)."""

    kind: str
    path: str
    name: str


@dataclass
class RawRecord:
    uid: str
    shard: str
    ref: str  # where the sample came from, e.g. "/data/00003.tar#000031337"
    image: bytes | None = None
    caption: bytes | None = None
    url: str | None = None
    problem: str | None = None
    detail: str | None = None


def parse_pool_spec(spec: str) -> PoolSpec:
    """`demo`, `webdataset:/p/{00000..00009}.tar`, `img2dataset:/dir` or `csv:/file.csv`."""
    spec = (spec or "").strip()
    if spec == "demo":
        return PoolSpec("demo", "")
    kind, sep, location = spec.partition(":")
    if not sep or kind not in POOL_KINDS or not location:
        raise ValueError(
            f"TADS_POOL={spec!r} is not a pool source. Use one of: demo, webdataset:/path/{{00000..00009}}.tar, "
            "img2dataset:/output/dir, csv:/file.csv"
        )
    return PoolSpec(kind, location)


def expand_braces(pattern: str) -> list[str]:
    """Expand `{00000..00009}` numeric ranges (zero padding kept) and `{a,b}` lists, like a shell."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [p for item in items for p in expand_braces(head + item + tail)]


def _expand_paths(pattern: str) -> list[str]:
    paths: list[str] = []
    for p in expand_braces(pattern):
        paths.extend(sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])
    return paths


def list_shards(spec: PoolSpec | str) -> list[Shard]:
    """The shards of a source, in a stable order. Raises if the source names nothing that exists."""
    spec = parse_pool_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "demo":
        raise ValueError("resolve the demo pool to its webdataset shards first (TadsPaths.pool_spec())")
    if spec.kind == "webdataset":
        paths = _expand_paths(spec.location)
        missing = [p for p in paths if not Path(p).exists()]
        if not paths or len(missing) == len(paths):
            raise FileNotFoundError(f"webdataset source {spec.location!r} matches no file")
        # A listed shard that is missing is recorded in the ledger by read_shard, not raised.
        return [Shard("webdataset", p, Path(p).name) for p in paths]
    if spec.kind == "img2dataset":
        root = Path(spec.location)
        parts = sorted(root.glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(f"img2dataset folder {root} holds no *.parquet shard tables")
        return [Shard("img2dataset", str(p), p.stem) for p in parts]
    path = Path(spec.location)
    if not path.is_file():
        raise FileNotFoundError(f"csv source {path} does not exist")
    return [Shard("csv", str(path), path.name)]


def read_shard(shard: Shard) -> Iterator[RawRecord]:
    if shard.kind == "webdataset":
        return _read_webdataset(shard)
    if shard.kind == "img2dataset":
        return _read_img2dataset(shard)
    if shard.kind == "csv":
        return _read_csv(shard)
    raise ValueError(f"unknown shard kind {shard.kind!r}")


# ---------------------------------------------------------------------------------------------- readers


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def unsafe_name(name: str) -> str | None:
    """Why a sample key or relative path taken from an input could escape its root, or None when it cannot:
    absolute paths, `..` components, backslashes, NUL and other control characters are refused."""
    if not name:
        return "empty name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name:
        return "backslash in name"
    if re.search(r"[\x00-\x1f\x7f]", name):
        return "control character in name"
    if any(part == ".." for part in name.split("/")):
        return "'..' component"
    return None


def safe_file_stem(uid: str) -> str:
    """A file name for a sample written to disk (exports): the uid itself when it is a plain name, else its
    plain characters plus a short hash of the whole uid (nested WebDataset keys `a/b` do not create folders,
    two uids never share a file)."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,150}", uid):
        return uid
    return re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:120].lstrip(".") + "-" + hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def _iter_tar_groups(path: str) -> Iterator[tuple[str, dict[str, bytes]] | tuple[str, Exception]]:
    """Yield (key, {ext: bytes}) for consecutive members of a tar; on a read error yield (key, exc) last.

    A plain tar cut exactly at a member boundary reads like a short, valid archive; it is caught by the
    missing end-of-archive marker (two zero blocks), and its last group is reported as truncated. A member
    whose extension the current group already has starts a new group with the same key (a repeated key,
    ledgered as a duplicate), so a second sample never silently overwrites the first one's members.
    """
    key, group = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_member(member.name)
                if key is not None and (k != key or ext in group):  # a repeated member starts a same-key sample
                    yield key, group
                    group = {}
                key = k
                fh = tar.extractfile(member)
                group[ext] = fh.read() if fh is not None else b""
            end = tar.offset
        if _is_plain_tar(path) and Path(path).stat().st_size - end < 2 * tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"no end-of-archive marker after byte {end}")
        if key is not None:
            yield key, group
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        yield (key or ""), exc


def _is_plain_tar(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(265)
    return len(head) >= 262 and head[257:262] == b"ustar"


def _first_image(group: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in group:
            return group[ext]
    return None


def _url_from_json(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return str(url) if url is not None else None


def _read_webdataset(shard: Shard) -> Iterator[RawRecord]:
    if not Path(shard.path).exists():
        yield RawRecord(shard.path, shard.name, shard.path, problem=UNREADABLE_SHARD, detail="shard file does not exist")
        return
    n = 0
    for key, payload in _iter_tar_groups(shard.path):
        ref = f"{shard.path}#{key}"
        if isinstance(payload, Exception):
            if key:  # the sample being read when the archive broke off
                yield RawRecord(key, shard.name, ref, problem=TRUNCATED_TAR,
                                detail=f"archive ended inside this sample after {n} complete samples: {payload}")
            elif n == 0:
                yield RawRecord(shard.path, shard.name, shard.path, problem=UNREADABLE_SHARD,
                                detail=f"not a readable tar: {payload}")
            else:
                yield RawRecord(f"{shard.path}#after-{n}", shard.name, shard.path, problem=TRUNCATED_TAR,
                                detail=f"archive ended after {n} complete samples: {payload}")
            return
        n += 1
        unsafe = unsafe_name(key)
        if unsafe:
            yield RawRecord(key, shard.name, ref, problem=UNSAFE_PATH,
                            detail=f"member name {key!r} refused ({unsafe}): sample keys must be relative paths "
                            "inside the shard")
            continue
        image = _first_image(payload)
        rec = RawRecord(key, shard.name, ref, image=image, caption=payload.get("txt"), url=_url_from_json(payload.get("json")))
        if image is None:
            rec.problem, rec.detail = MISSING_IMAGE, f"no {'/'.join(IMAGE_EXTS)} member (found: {sorted(payload)})"
        yield rec


_I2D_REQUIRED = ("key",)


def _read_img2dataset(shard: Shard) -> Iterator[RawRecord]:
    table = pl.read_parquet(shard.path)
    missing = [c for c in _I2D_REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"img2dataset table {shard.path} lacks column(s) {missing}; columns are {table.columns}")
    rows = {str(r["key"]): r for r in table.iter_rows(named=True)}
    base = Path(shard.path).with_suffix("")
    tar_path = base.with_suffix(".tar")
    pending: dict[str, dict] = {}
    for key, r in rows.items():
        status = r.get("status", "success")
        unsafe = unsafe_name(key)
        if unsafe:
            yield RawRecord(key, shard.name, f"{shard.path}#{key}", url=r.get("url"), problem=UNSAFE_PATH,
                            detail=f"key {key!r} refused ({unsafe}): img2dataset keys name files beside the table")
        elif status not in (None, "success"):
            yield RawRecord(key, shard.name, f"{shard.path}#{key}", url=r.get("url"), problem=DOWNLOAD_FAILED,
                            detail=str(r.get("error_message") or status))
        else:
            pending[key] = r

    def record(key: str, image: bytes | None, text: bytes | None, ref: str) -> RawRecord:
        r = pending.pop(key)
        caption = r.get("caption")
        cap = caption.encode("utf-8", "surrogateescape") if isinstance(caption, str) else text
        return RawRecord(key, shard.name, ref, image=image, caption=cap, url=r.get("url"))

    if tar_path.exists():
        for key, payload in _iter_tar_groups(str(tar_path)):
            if isinstance(payload, Exception):
                log.warning("img2dataset tar %s broke off: %s", tar_path, payload)
                break
            k = key.rpartition("/")[2]
            if k in pending:
                image = _first_image(payload)
                rec = record(k, image, payload.get("txt"), f"{tar_path}#{k}")
                if image is None:
                    rec.problem, rec.detail = MISSING_IMAGE, f"tar member set without an image: {sorted(payload)}"
                yield rec
    elif base.is_dir():
        for key in list(pending):
            image_path = next((base / f"{key}.{ext}" for ext in IMAGE_EXTS if (base / f"{key}.{ext}").exists()), None)
            if image_path is None:
                continue
            txt = base / f"{key}.txt"
            yield record(key, image_path.read_bytes(), txt.read_bytes() if txt.exists() else None, str(image_path))
    for key, r in list(pending.items()):
        yield RawRecord(key, shard.name, f"{shard.path}#{key}", url=r.get("url"), problem=MISSING_FILE,
                        detail=f"listed as downloaded in {Path(shard.path).name} but no image found in "
                        f"{tar_path.name if tar_path.exists() else base.name + '/'}")


CSV_REQUIRED = ("image_path", "caption")


def _outside_root(rel: str, root: Path) -> str | None:
    """Why a CSV image_path is refused, or None: it must resolve (symlinks followed) inside the CSV's folder."""
    if "\x00" in rel:
        return "image_path contains a NUL byte"
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the OS refuses
        return f"image_path {rel!r} cannot be resolved: {exc}"
    if target == root or root in target.parents:
        return None
    return (f"image_path {rel!r} resolves to {target}, outside the CSV's folder {root}: image paths must lie under "
            "the folder holding the CSV (move the CSV to the top of the image tree)")


def _read_csv(shard: Shard) -> Iterator[RawRecord]:
    path = Path(shard.path)
    root = path.parent.resolve()
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"CSV pool {path} lacks required column(s) {missing}; found {reader.fieldnames}. "
                "The header must name image_path and caption (url is optional)."
            )
        for i, row in enumerate(reader):
            uid = f"{path.stem}-{i:09d}"
            ref = f"{path}:{i + 2}"  # line number, header is line 1
            caption = row.get("caption")
            cap = caption.encode("utf-8", "surrogateescape") if caption is not None else None
            rel = (row.get("image_path") or "").strip()
            rec = RawRecord(uid, shard.name, ref, caption=cap, url=(row.get("url") or None))
            if not rel:
                rec.problem, rec.detail = MISSING_IMAGE, "empty image_path"
            elif (outside := _outside_root(rel, root)) is not None:
                rec.problem, rec.detail = UNSAFE_PATH, outside
            else:
                image_path = root / rel
                try:
                    rec.image = image_path.read_bytes()
                    rec.ref = str(image_path)
                except OSError as exc:
                    rec.problem, rec.detail = MISSING_FILE, f"{image_path}: {exc.strerror or exc}"
            yield rec


# ------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class IngestLimits:
    max_image_pixels: int = 50_000_000  # width * height above this is treated as a decompression bomb
    max_caption_chars: int = 4_000


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    value: float | None = None


def clean_caption(raw: bytes | None, limits: IngestLimits) -> str | Rejection:
    """UTF-8 decode, replace control characters by spaces, collapse whitespace; reject what is unusable."""
    if raw is None:
        return Rejection(MISSING_CAPTION, "no caption")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(NON_UTF8_CAPTION, f"caption is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})")
    text = " ".join(_CONTROL.sub(" ", text).split())
    if not text:
        return Rejection(EMPTY_CAPTION, "caption is empty or whitespace only")
    if len(text) > limits.max_caption_chars:
        return Rejection(CAPTION_TOO_LONG, f"caption has {len(text)} characters (limit {limits.max_caption_chars})", float(len(text)))
    return text


TINY_SIDE = 8  # the tiny-image descriptor is TINY_SIDE x TINY_SIDE grey levels


def tiny_image(im: Image.Image) -> bytes:
    """The tiny-image descriptor of a decoded image: its grey levels averaged down to 8 x 8 (64 bytes).
    Rescaling, re-encoding and small crops barely move it; the dedup layer compares it to find the same
    picture posted twice (`dedup.tiny_image_vectors`)."""
    grey = im.convert("L").resize((TINY_SIDE, TINY_SIDE), Image.BOX, reducing_gap=3.0)
    return grey.tobytes()


def oriented(im: Image.Image) -> Image.Image:
    """The first frame of an image (animations), turned upright by its EXIF orientation tag (phone photos)."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any decoded image: 16-bit and float grey scaled (not clipped to white), transparency
    composited on white (not the palette's hidden colour), CMYK and palettes converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8))  # 2-D uint8: mode L
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_rgb(data: bytes) -> Image.Image:
    """Decode raw_pool image bytes for a model: first frame, upright, 8-bit RGB (every stage decodes the same way)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return to_rgb(oriented(im)).copy()


def inspect_image(data: bytes | None, limits: IngestLimits) -> tuple[int, int, str, bytes] | Rejection:
    """Decode fully (so truncation is caught) and return (width, height, format, tiny-image descriptor) of the
    upright first frame, or why not."""
    if data is None:
        return Rejection(MISSING_IMAGE, "no image")
    if len(data) == 0:
        return Rejection(EMPTY_IMAGE, "image file has zero bytes", 0.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > limits.max_image_pixels:
                return Rejection(DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels exceeds {limits.max_image_pixels}", float(w * h))
            im.load()
            fmt = (im.format or "unknown").lower()
            rgb = to_rgb(oriented(im))
            return rgb.width, rgb.height, fmt, tiny_image(rgb)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejection(DECOMPRESSION_BOMB, str(exc))
    except Image.UnidentifiedImageError:
        return Rejection(CORRUPT_IMAGE, f"not an image format Pillow reads (starts {data[:12]!r})", float(len(data)))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all mean "corrupt"
        return Rejection(CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}"[:300], float(len(data)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
