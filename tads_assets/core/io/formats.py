"""Pool readers and sample validation: `webdataset:`, `img2dataset:` and `csv:` sources (docs/architecture.md).

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
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from tads_assets.core.io import tarscan
from tads_assets.core.sanitize import one_line

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
UNSAFE_MEMBER = "unsafe_member"  # a link, device, FIFO or sparse file inside a tar: never followed or read
CORRUPT_TAR_REGION = "corrupt_tar_region"  # bytes of a tar that are not headers or data (offsets in the detail)
INVALID_KEY = "invalid_key"  # a member name that is not UTF-8, a table row without key
IMAGE_TOO_LARGE = "image_too_large"  # encoded bytes or a side over the limit, checked before decoding
MEMBER_TOO_LARGE = "member_too_large"  # a metadata member over its limit, skipped unread
UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"  # EPS, PSD, ...: Pillow opens only WEB_IMAGE_FORMATS
INVALID_METADATA = "invalid_metadata"  # a url or path field that is not valid UTF-8
BAD_ROW = "bad_row"  # a CSV row the csv module cannot parse
RECORD_ERROR = "record_error"  # any other error while turning this one record into a row (type and message kept)

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
    value: float | None = None


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


MAX_BRACE_EXPANSION = 100_000


def expand_braces(pattern: str, limit: int = MAX_BRACE_EXPANSION) -> list[str]:
    """Expand `{00000..00009}` numeric ranges (zero padding kept) and `{a,b}` lists, like a shell. A pattern that
    would expand to more than `limit` paths is refused before anything is expanded."""
    n = 1
    for body in re.findall(r"\{([^{}]*)\}", pattern):
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        n *= max(0, int(rng.group(2)) - int(rng.group(1)) + 1) if rng else len(body.split(","))
        if n > limit:
            raise ValueError(f"pattern {one_line(pattern, 200)!r} expands to more than {limit} paths; name fewer "
                             "shards (or raise formats.MAX_BRACE_EXPANSION)")
    return _expand_braces(pattern)


def _expand_braces(pattern: str) -> list[str]:
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
    return [p for item in items for p in _expand_braces(head + item + tail)]


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
    if why := _special_file(path):
        raise SourceError(f"csv source {why}")
    if not path.is_file():
        raise FileNotFoundError(f"csv source {path} does not exist")
    return [Shard("csv", str(path), path.name)]


def read_shard(shard: Shard, limits: IngestLimits | None = None, coverage: dict | None = None) -> Iterator[RawRecord]:
    """The records of one shard, each a sample or a problem to ledger; never raises on the data inside a shard
    (only `SourceError` for a source that cannot be read as configured). `coverage`, if given, receives what the
    source held when the iteration ends: `bytes_total`/`bytes_read`/`unreadable` for tars (every unreadable range
    with the ledger uid that names it), `rows_total` for tables."""
    limits = limits or IngestLimits()
    if shard.kind == "webdataset":
        return _read_webdataset(shard, limits, coverage)
    if shard.kind == "img2dataset":
        return _read_img2dataset(shard, limits, coverage)
    if shard.kind == "csv":
        return _read_csv(shard, limits, coverage)
    raise ValueError(f"unknown shard kind {shard.kind!r}")


# ---------------------------------------------------------------------------------------------- readers


def split_member(name: str) -> tuple[str, str]:
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


def _wanted(limits: IngestLimits):
    """The byte limit per member extension of a sample (None: not needed, skipped unread)."""
    per_ext = {"txt": limits.max_caption_bytes, "json": limits.max_json_bytes,
               **{ext: limits.max_image_bytes for ext in IMAGE_EXTS}}
    return lambda name: per_ext.get(split_member(name)[1])


@dataclass
class _Group:
    """The members of one sample as the tar reader assembles them."""

    key: str
    start: int
    data: dict[str, bytes] = field(default_factory=dict)  # ext -> bytes, for the members read
    present: dict[str, str] = field(default_factory=dict)  # ext -> why present but unread ("" when read)
    sizes: dict[str, int] = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # the first decisive problem: (reason, detail)
    near_region: tarscan.Region | None = None  # an unreadable region right before or after this sample's members

    def flag(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)




def _member_problem(m: tarscan.Member, key: str) -> tuple[str, str] | None:
    if m.name_error:
        return INVALID_KEY, f"{m.name_error}: {one_line(m.name)}"
    if not m.regular:
        what = "sparse file" if m.sparse else m.kind
        target = f" -> {one_line(m.linkname, 120)}" if m.linkname and m.kind in ("symlink", "hardlink") else ""
        return UNSAFE_MEMBER, (f"member {one_line(m.name, 120)} is a {what}{target}: only regular files are read, "
                               "links and special files are never followed")
    return None


def _group_record(g: _Group, shard: Shard, ref: str, limits: IngestLimits) -> RawRecord:
    rec = RawRecord(g.key, shard.name, ref, image=_first_image(g.data), caption=g.data.get("txt"),
                    url=_url_from_json(g.data.get("json")))
    if g.problem is None and (unsafe := unsafe_name(g.key)):
        g.flag(UNSAFE_PATH, f"member name {one_line(g.key, 120)} refused ({unsafe}): sample keys must be relative "
               "paths inside the shard")
    image_ext = next((e for e in IMAGE_EXTS if e in g.present), None)
    if g.problem is None and image_ext and g.present[image_ext] == "over the size limit":
        g.flag(IMAGE_TOO_LARGE, f"image member {g.key}.{image_ext} declares {g.sizes[image_ext]} bytes "
               f"(limit {limits.max_image_bytes})")
    if g.problem is None and g.present.get("txt") == "over the size limit":
        g.flag(CAPTION_TOO_LONG, f"caption member {g.key}.txt declares {g.sizes['txt']} bytes (limit {limits.max_caption_bytes})")
    if g.problem is None and g.present.get("json") == "over the size limit":
        g.flag(MEMBER_TOO_LARGE, f"metadata member {g.key}.json declares {g.sizes['json']} bytes (limit {limits.max_json_bytes})")
    incomplete = rec.image is None or rec.caption is None
    if g.problem is None and incomplete and g.near_region is not None:
        r = g.near_region
        g.flag(CORRUPT_TAR_REGION, f"sample lost member(s) to the unreadable bytes {r.start}-{r.end} of {shard.name} "
               f"(found: {sorted(g.present)})")
    if g.problem is None and rec.image is None:
        g.flag(MISSING_IMAGE, f"no {'/'.join(IMAGE_EXTS)} member (found: {sorted(g.present)})")
    if g.problem is not None:
        rec.problem, rec.detail = g.problem
        rec.image = rec.caption = None
    return rec


def _iter_tar_samples(path: str, shard: Shard, limits: IngestLimits, coverage: dict | None,
                      key_of=lambda k: k) -> Iterator[RawRecord]:
    """Samples of one tar (WebDataset grouping: consecutive members with one key; a repeated extension starts a
    same-key sample), and a shard-level record for every unreadable region that no sample's row names. Fills
    `coverage` (bytes_total, bytes_read, unreadable ranges and the ledger uid naming each)."""
    scan = tarscan.Scan(path)
    unreadable: list[dict] = []
    group: _Group | None = None
    last_region: tarscan.Region | None = None
    n_samples = 0

    def region_record(r: tarscan.Region, reason: str) -> RawRecord:
        uid = f"{path}#bytes-{r.start}-{r.end}"
        unreadable.append({"start": r.start, "end": r.end, "kind": r.kind, "uid": uid})
        return RawRecord(uid, shard.name, f"{path}#{r.start}", problem=reason,
                         detail=f"{r.detail}; {n_samples} sample(s) read before it")

    def finish(g: _Group) -> RawRecord:
        return _group_record(g, shard, f"{path}#{g.key}", limits)

    leading: list[tarscan.Region] = []  # regions before any member: a file that is no tar at all is one row
    try:
        for ev in tarscan.scan_tar(path, _wanted(limits), scan):
            if isinstance(ev, tarscan.Region) and scan.n_members == 0 and group is None:
                leading.append(ev)
                continue
            if leading:
                for r in leading:
                    yield region_record(r, CORRUPT_TAR_REGION if r.kind == "corrupt" else TRUNCATED_TAR)
                last_region, leading = leading[-1], []
            if isinstance(ev, tarscan.Region):
                if ev.kind == "truncated" and group is not None:  # the sample being read when the archive ended
                    group.flag(TRUNCATED_TAR, f"the archive ends inside or right after this sample (bytes "
                               f"{ev.start}-{ev.end}): {ev.detail}; {n_samples} complete sample(s) before it")
                    unreadable.append({"start": ev.start, "end": ev.end, "kind": ev.kind, "uid": group.key})
                else:
                    yield region_record(ev, TRUNCATED_TAR if ev.kind == "truncated" else CORRUPT_TAR_REGION)
                    if group is not None:
                        group.near_region = group.near_region or ev
                    last_region = ev
                continue
            name = ev.name
            if isinstance(ev, tarscan.BadHeader):
                key, ext = split_member(name)
                key = key_of(key)
                if group is None or group.key != key:
                    if group is not None:
                        n_samples += 1
                        yield finish(group)
                    group = _Group(key, ev.offset)
                group.flag(CORRUPT_TAR_REGION, one_line(ev.problem))
                continue
            if ev.kind == "directory" and not ev.name_error:
                continue  # a folder entry holds no sample
            key, ext = split_member(name)
            key = key_of(key)
            if group is not None and (key != group.key or ext in group.present):
                n_samples += 1
                yield finish(group)
                group = None
            if group is None:
                group = _Group(key, ev.offset, near_region=last_region)
                last_region = None
            group.present[ext] = ev.skipped if ev.skipped and ev.skipped != "not needed" else ""
            group.sizes[ext] = ev.size
            if ev.data is not None:
                group.data[ext] = ev.data
            if (problem := _member_problem(ev, key)) is not None:
                group.flag(*problem)
        if group is not None and not scan.end_marker and not any(r.kind == "truncated" for r in scan.regions):
            group.flag(TRUNCATED_TAR, f"the archive ends after this sample without its end-of-archive marker (two zero "
                       f"blocks): later samples may be missing; {n_samples} complete sample(s) before it")
            unreadable.append({"start": scan.bytes_total, "end": scan.bytes_total, "kind": "truncated", "uid": group.key})
        if leading:
            uid = f"{path}#not-a-tar"
            unreadable.extend({"start": r.start, "end": r.end, "kind": r.kind, "uid": uid} for r in leading)
            yield RawRecord(uid, shard.name, path, problem=UNREADABLE_SHARD,
                            detail=f"not a readable tar: no valid member header in bytes {leading[0].start}-"
                            f"{leading[-1].end} ({leading[-1].detail})")
        elif group is None and not scan.end_marker and not scan.regions:
            r = tarscan.Region(scan.bytes_total, scan.bytes_total, "truncated",
                               "the archive ends without its end-of-archive marker: later samples may be missing"
                               if n_samples else "no tar member and no end-of-archive marker: not a tar")
            scan.regions.append(r)
            yield region_record(r, TRUNCATED_TAR if n_samples else UNREADABLE_SHARD)
        if group is not None:
            yield finish(group)
    except Exception as exc:  # noqa: BLE001 - a reader defect must not stop the run; the check sees the gap
        yield RawRecord(f"{path}#reader-error", shard.name, path, problem=UNREADABLE_SHARD,
                        detail=one_line(f"reading stopped at byte {scan.bytes_total}: {type(exc).__name__}: {exc}"))
    if coverage is not None:
        coverage.update(bytes_total=scan.bytes_total, bytes_read=scan.bytes_read, compressed=scan.compressed,
                        unreadable=unreadable)


def _first_image(group: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in group:
            return group[ext]
    return None


def _url_from_json(raw: bytes | None) -> str | None:
    """The `url` of a sample's JSON metadata; None when the JSON is absent, malformed or too deep (the metadata is
    optional: a sample is not dropped for it)."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return url if isinstance(url, str) else (str(url) if isinstance(url, int | float) else None)


def _read_webdataset(shard: Shard, limits: IngestLimits, coverage: dict | None) -> Iterator[RawRecord]:
    try:
        if _special_file(shard.path):
            raise OSError(f"{_special_file(shard.path)}, not a regular file")
        Path(shard.path).open("rb").close()
    except OSError as exc:
        why = "shard file does not exist" if not Path(shard.path).exists() else f"cannot open: {exc}"
        yield RawRecord(shard.path, shard.name, shard.path, problem=UNREADABLE_SHARD, detail=one_line(why))
        if coverage is not None:
            coverage.update(bytes_total=0, bytes_read=0, unreadable=[], missing=True)
        return
    yield from _iter_tar_samples(shard.path, shard, limits, coverage)


def _special_file(path: str | Path) -> str | None:
    """Why `path` must not be opened (a FIFO would hang, a device never ends), or None for a regular file/absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(st.st_mode) else f"{path} is a {_file_kind(st.st_mode)}"


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def read_under(root: Path, rel: str, max_bytes: int, what: str = "image_path") -> bytes | tuple[str, str]:
    """The bytes of the regular file `rel` under the folder `root`, or (reason, detail) why not. The rule for every
    file a table source names: the path must resolve inside `root`, its last component must not be a symbolic
    link (links are never followed), it must be a regular file (FIFOs and devices are refused before opening) and
    no larger than `max_bytes` (checked before reading)."""
    if "\x00" in rel:
        return UNSAFE_PATH, f"{what} contains a NUL byte"
    path = root / rel
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the OS refuses
        return UNSAFE_PATH, one_line(f"{what} {rel!r} cannot be resolved: {exc}")
    if not (target == root or root in target.parents):
        return UNSAFE_PATH, one_line(
            f"{what} {rel!r} resolves to {target}, outside the source's folder {root}: files must lie under the "
            "folder holding the table (for a CSV: move it to the top of the image tree)", 500)
    try:
        st = os.lstat(path)
    except OSError as exc:
        return MISSING_FILE, one_line(f"{path}: {exc.strerror or exc}")
    if stat.S_ISLNK(st.st_mode):
        return UNSAFE_PATH, one_line(f"{what} {rel!r} is a symbolic link: links are never followed (copy the file in)")
    if not stat.S_ISREG(st.st_mode):
        return UNSAFE_PATH, one_line(f"{what} {rel!r} is a {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        return IMAGE_TOO_LARGE if what == "image_path" else MEMBER_TOO_LARGE, one_line(
            f"{path} has {st.st_size} bytes (limit {max_bytes})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return MISSING_FILE, one_line(f"{path}: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped after the lstat
            return UNSAFE_PATH, one_line(f"{path} is not a regular file")
        return fh.read(max_bytes + 1)[:max_bytes]


class SourceError(ValueError):
    """A whole source cannot be read as configured (missing or mistyped columns, not a table): names the file,
    the column and its type, and the fix."""


_I2D_COLUMNS = {"key": "required", "url": "optional", "caption": "optional", "status": "optional",
                "error_message": "optional"}


def _check_i2d_table(table: pl.DataFrame, path: str) -> None:
    if "key" not in table.columns:
        raise SourceError(f"img2dataset table {path} lacks column(s) ['key']; columns are {table.columns}")
    for col in _I2D_COLUMNS:
        if col in table.columns:
            dtype = table.schema[col]
            ok = dtype in (pl.Utf8, pl.Null) or (col == "key" and dtype.is_integer())
            if not ok:
                raise SourceError(f"img2dataset table {path}: column {col!r} has type {dtype}; expected a string "
                                  "column (one value per row)")


def _read_img2dataset(shard: Shard, limits: IngestLimits, coverage: dict | None) -> Iterator[RawRecord]:
    base = Path(shard.path).with_suffix("")
    for path in (Path(shard.path), base.with_suffix(".tar")):
        if why := _special_file(path):
            raise SourceError(f"img2dataset source: {why}")
    try:
        table = pl.read_parquet(shard.path)
    except Exception as exc:  # noqa: BLE001 - polars/arrow raise many types for a damaged file
        raise SourceError(one_line(f"img2dataset table {shard.path} cannot be read as Parquet: {type(exc).__name__}: "
                                   f"{exc}", 500)) from None
    _check_i2d_table(table, shard.path)
    root = base.parent.resolve()
    tar_path = base.with_suffix(".tar")
    pending: dict[str, dict] = {}
    seen: set[str] = set()
    for i, r in enumerate(table.iter_rows(named=True)):
        key = None if r["key"] is None else str(r["key"])
        url = r.get("url")
        ref = f"{shard.path}#row-{i}"
        if key is None:
            yield RawRecord(ref, shard.name, ref, problem=INVALID_KEY, detail=f"row {i} has no key")
            continue
        ref = f"{shard.path}#{key}"
        status = r.get("status", "success")
        if key in seen:
            yield RawRecord(key, shard.name, ref, url=url, problem=DUPLICATE_KEY,
                            detail=f"key {one_line(key, 120)} listed again in row {i} of {Path(shard.path).name}")
            continue
        seen.add(key)
        if unsafe := unsafe_name(key):
            yield RawRecord(key, shard.name, ref, url=url, problem=UNSAFE_PATH,
                            detail=f"key {one_line(key, 120)} refused ({unsafe}): img2dataset keys name files beside "
                            "the table")
        elif status not in (None, "success"):
            yield RawRecord(key, shard.name, ref, url=url, problem=DOWNLOAD_FAILED,
                            detail=one_line(r.get("error_message") or status))
        else:
            pending[key] = r
    if coverage is not None:
        coverage.update(rows_total=table.height)

    def record(key: str, image: bytes | None, text: bytes | None, ref: str) -> RawRecord:
        r = pending.pop(key)
        caption = r.get("caption")
        cap = caption.encode("utf-8", "surrogateescape") if isinstance(caption, str) else text
        return RawRecord(key, shard.name, ref, image=image, caption=cap, url=r.get("url"))

    if tar_path.exists():
        tar_cov: dict = {}
        for item in _iter_tar_samples(str(tar_path), shard, limits, tar_cov, key_of=lambda k: k.rpartition("/")[2]):
            if item.uid not in pending:
                if item.problem in (CORRUPT_TAR_REGION, TRUNCATED_TAR, UNREADABLE_SHARD):
                    yield item  # an unreadable region of the tar (or a cut inside a member the table does not list)
                continue
            rec = record(item.uid, item.image, item.caption, item.ref)
            if item.problem is not None:
                rec.problem, rec.detail, rec.image = item.problem, item.detail, None
            yield rec
        if coverage is not None:
            coverage.update(tar_cov)
    elif base.is_dir():
        for key in list(pending):
            image_ext = next((ext for ext in IMAGE_EXTS if os.path.lexists(base / f"{key}.{ext}")), None)
            if image_ext is None:
                continue
            rel = f"{base.name}/{key}"
            image = read_under(root, f"{rel}.{image_ext}", limits.max_image_bytes)
            txt = None
            if isinstance(image, bytes) and os.path.lexists(base / f"{key}.txt"):
                txt = read_under(root, f"{rel}.txt", limits.max_caption_bytes, "caption file")
            rec = record(key, image if isinstance(image, bytes) else None, txt if isinstance(txt, bytes) else None,
                         str(base / f"{key}.{image_ext}"))
            for got in (image, txt):
                if isinstance(got, tuple) and rec.problem is None:
                    rec.problem, rec.detail, rec.image, rec.caption = got[0], got[1], None, None
            yield rec
    for key, r in list(pending.items()):
        yield RawRecord(key, shard.name, f"{shard.path}#{key}", url=r.get("url"), problem=MISSING_FILE,
                        detail=f"listed as downloaded in {Path(shard.path).name} but no image found in "
                        f"{tar_path.name if tar_path.exists() else base.name + '/'}")


CSV_REQUIRED = ("image_path", "caption")
CSV_MAX_LINE_CHARS = 1 << 20  # a longer physical line is refused unread (a caption that long is unusable anyway)


class _BoundedLines:
    """Physical lines of a text file for csv.reader, each at most `limit` characters: a longer line is consumed
    in bounded reads and replaced by a placeholder, and `overlong` says so until reset."""

    PLACEHOLDER = "\x1e\n"

    def __init__(self, fh, limit: int):
        self.fh, self.limit, self.overlong = fh, limit, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.fh.readline(self.limit)
        if not line:
            raise StopIteration
        if len(line) == self.limit and not line.endswith("\n"):
            n = len(line)
            while (more := self.fh.readline(self.limit)) and not more.endswith("\n"):
                n += len(more)
            self.overlong = n + len(more)
            return self.PLACEHOLDER
        return line


def bad_text(value: str | None, what: str) -> str | None:
    """Why a text field read from a file cannot be stored (undecodable bytes kept as surrogates), or None."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid UTF-8 (character {exc.start}: {one_line(value[exc.start:exc.start + 1])})"
    return None


def _read_csv(shard: Shard, limits: IngestLimits, coverage: dict | None) -> Iterator[RawRecord]:
    path = Path(shard.path)
    root = path.parent.resolve()
    if why := _special_file(path):
        raise SourceError(f"csv source {why}")
    csv.field_size_limit(CSV_MAX_LINE_CHARS)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        lines = _BoundedLines(fh, CSV_MAX_LINE_CHARS)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise SourceError(f"CSV pool {path}: header line cannot be parsed: {exc}") from None
        header = [h.strip() for h in header or []]
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing or lines.overlong:
            raise SourceError(
                f"CSV pool {path} lacks required column(s) {missing}; found {one_line(header, 200)}. "
                "The header must name image_path and caption (url is optional)."
            )
        col = {name: header.index(name) for name in ("image_path", "caption", "url") if name in header}
        i = 0
        while True:
            uid, ref = f"{path.stem}-{i:09d}", f"{path}:row {i + 1}"
            lines.overlong = 0
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield RawRecord(uid, shard.name, ref, problem=BAD_ROW, detail=one_line(f"row cannot be parsed: {exc}"))
                i += 1
                continue
            if not row:
                continue  # a blank line is no row
            i += 1
            if lines.overlong:
                yield RawRecord(uid, shard.name, ref, problem=CAPTION_TOO_LONG, value=float(lines.overlong),
                                detail=f"a line of this row has {lines.overlong} characters (limit "
                                f"{CSV_MAX_LINE_CHARS}); not read")
                continue
            get = lambda name: row[col[name]] if name in col and col[name] < len(row) else None  # noqa: E731
            caption, url, rel = get("caption"), get("url") or None, (get("image_path") or "").strip()
            cap = caption.encode("utf-8", "surrogateescape") if caption is not None else None
            rec = RawRecord(uid, shard.name, ref, caption=cap, url=url)
            bad = bad_text(url, "url") or bad_text(rel, "image_path")
            if bad:
                rec.url = None
                rec.problem, rec.detail = INVALID_METADATA, bad
            elif not rel:
                rec.problem, rec.detail = MISSING_IMAGE, "empty image_path"
            else:
                got = read_under(root, rel, limits.max_image_bytes)
                if isinstance(got, tuple):
                    rec.problem, rec.detail = got
                else:
                    rec.image, rec.ref = got, str(root / rel)
            yield rec
    if coverage is not None:
        coverage.update(rows_total=i)


# ------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class IngestLimits:
    """Per-sample limits, all checked before the bytes are read or decoded (sizes declared by the tar header or
    the file system, sides declared by the image header)."""

    max_image_pixels: int = 50_000_000  # width * height above this is treated as a decompression bomb
    max_caption_chars: int = 4_000
    max_image_side: int = 16_384  # a longer side (a 50000 x 1 strip) is refused as image_too_large
    max_image_bytes: int = 32 << 20  # encoded image
    max_caption_bytes: int = 64 << 10  # encoded caption member or file
    max_json_bytes: int = 1 << 20  # a sample's JSON metadata


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


TINY_SIDE = 16  # the tiny-image thumbnail is TINY_SIDE x TINY_SIDE RGB levels
TINY_BYTES = TINY_SIDE * TINY_SIDE * 3


def tiny_image(im: Image.Image) -> bytes:
    """The tiny-image thumbnail of a decoded image: its RGB levels averaged down to 16 x 16 (768 bytes). The dedup
    layer compares 12 x 12 averages of it over the whole frame and over slightly trimmed frames
    (`dedup.Pictures`), so rescaling, re-encoding and small crops barely move it and the same picture posted
    twice is found. Colour is kept: distinct products of one kind share a grey silhouette far more often than a
    colourway (docs/method.md, "Why the visual test")."""
    return im.convert("RGB").resize((TINY_SIDE, TINY_SIDE), Image.BOX, reducing_gap=3.0).tobytes()


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


# The formats a web pool's images come in. Pillow is never asked to identify anything else: its EPS plugin runs
# Ghostscript, and PSD, PDF-like and legacy formats add attack surface for no sample worth having.
# (Camera JPEGs that Pillow opens as MPO come through the JPEG opener.)
Image.init()
WEB_IMAGE_FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)


def open_image(data: bytes) -> Image.Image:
    """`Image.open` restricted to WEB_IMAGE_FORMATS; raises UnsupportedImageFormat for a known other format."""
    try:
        return Image.open(io.BytesIO(data), formats=WEB_IMAGE_FORMATS)
    except Image.UnidentifiedImageError:
        if (fmt := sniff_format(data)) is not None:
            raise UnsupportedImageFormat(fmt) from None
        raise


class UnsupportedImageFormat(ValueError):
    def __init__(self, fmt: str):
        super().__init__(f"{fmt} images are not read (formats read: {', '.join(WEB_IMAGE_FORMATS)})")
        self.format = fmt


def sniff_format(data: bytes) -> str | None:
    """The name of the Pillow format outside WEB_IMAGE_FORMATS whose signature `data` starts with, by the
    plugins' prefix tests alone (nothing is parsed or run), or None."""
    Image.init()
    prefix = data[:64]
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt in WEB_IMAGE_FORMATS:  # a signature of a format read: the bytes after it are what is broken
            continue
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001,S112 - a prefix test failing on odd bytes just means "not this format"
            continue
    return None


def decode_rgb(data: bytes) -> Image.Image:
    """Decode raw_pool image bytes for a model: first frame, upright, 8-bit RGB (every stage decodes the same way)."""
    with open_image(data) as im:
        im.load()
        return to_rgb(oriented(im)).copy()


def inspect_image(data: bytes | None, limits: IngestLimits) -> tuple[int, int, str, bytes] | Rejection:
    """Decode fully (so truncation is caught) and return (width, height, format, tiny-image descriptor) of the
    upright first frame, or why not."""
    if data is None:
        return Rejection(MISSING_IMAGE, "no image")
    if len(data) == 0:
        return Rejection(EMPTY_IMAGE, "image file has zero bytes", 0.0)
    if len(data) > limits.max_image_bytes:
        return Rejection(IMAGE_TOO_LARGE, f"image has {len(data)} bytes (limit {limits.max_image_bytes})", float(len(data)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = open_image(data)
            w, h = im.size
            if max(w, h) > limits.max_image_side:
                return Rejection(IMAGE_TOO_LARGE, f"{w}x{h}: a side exceeds {limits.max_image_side} pixels", float(max(w, h)))
            if w * h > limits.max_image_pixels:
                return Rejection(DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels exceeds {limits.max_image_pixels}", float(w * h))
            im.load()
            fmt = (im.format or "unknown").lower()
            rgb = to_rgb(oriented(im))
            return rgb.width, rgb.height, fmt, tiny_image(rgb)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejection(DECOMPRESSION_BOMB, str(exc))
    except UnsupportedImageFormat as exc:
        return Rejection(UNSUPPORTED_IMAGE_FORMAT, str(exc), float(len(data)))
    except Image.UnidentifiedImageError:
        return Rejection(CORRUPT_IMAGE, f"not an image format Pillow reads (starts {data[:12]!r})", float(len(data)))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all mean "corrupt"
        return Rejection(CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}"[:300], float(len(data)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
