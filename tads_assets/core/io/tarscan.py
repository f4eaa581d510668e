"""A tar reader that accounts for every byte of a shard (plain or gzip-compressed; ustar, GNU, pax and v7 headers).

Python's `tarfile` stops silently at the first bad header or end-of-archive marker, follows its own idea of
sparse files into memory and reads whole members; on a web pool that loses samples without a trace. This reader
walks the archive block by block instead:

- every 512-byte header is checksum-verified; a block that is neither a valid header nor zeros starts an
  *unreadable region*, and reading resynchronises at the next valid header (data is block-aligned, so a scan at
  block boundaries finds it). Regions come back as `Region(start, end)` events in archive offsets (offsets of the
  decompressed stream for `.tar.gz`);
- zero blocks are skipped, not taken as the end: two tars concatenated, or zero blocks mid-file, read on.
  `Scan.end_marker` says whether two zero blocks followed the last member (a shard cut between members has none);
- a member whose data runs past the end of the file ends the scan with a `Region(kind="truncated")`;
- non-regular members (links, devices, FIFOs, directories, sparse files, unknown types) are reported with their
  kind and never followed or read; regular members are read only when the caller asks for their extension and
  their declared size is within the caller's limit, otherwise skipped by seeking (or by streaming through a
  compressed file in bounded chunks);
- pax `path`/`size` records and GNU long names apply to the member after them; names that are not UTF-8 are
  reported, not decoded silently.

Whatever the input, iteration never raises after the file is open: the caller gets members and regions, and
`Scan.bytes_read + sum(region sizes) == Scan.bytes_total` at the end.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
CHUNK = 1 << 20  # skip through compressed data in 1 MiB reads
MAX_META_BYTES = 1 << 20  # pax headers and GNU long names larger than this are not read
MAX_SPARSE_EXTENSIONS = 4096

REGULAR_TYPES = {b"0": "file", b"\x00": "file", b"7": "file"}
NON_REGULAR_TYPES = {b"1": "hardlink", b"2": "symlink", b"3": "character device", b"4": "block device",
                     b"5": "directory", b"6": "fifo", b"S": "sparse file", b"D": "directory", b"V": "volume label",
                     b"M": "multi-volume continuation"}
NO_DATA_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}  # POSIX: these carry no data blocks, whatever `size` says


@dataclass
class Member:
    """One archive member. `data` is None unless it was asked for and within its limit (`skipped` says why not)."""

    name: str
    kind: str  # "file" or one of NON_REGULAR_TYPES' values, or "unknown type 'X'"
    offset: int  # of its (first) header block
    end: int  # end of its data (padded)
    size: int  # declared data size
    data: bytes | None = None
    skipped: str | None = None  # "not needed" | "over the size limit" | "not a regular file"
    name_error: str | None = None  # the member name is not UTF-8 (`name` then escapes the bad bytes)
    sparse: bool = False
    linkname: str = ""

    @property
    def regular(self) -> bool:
        return self.kind == "file" and not self.sparse


@dataclass
class BadHeader:
    """A checksum-valid header whose fields cannot be used (a negative or malformed size): the member it names is
    lost, and its bytes are in the unreadable region that follows."""

    name: str
    offset: int
    problem: str


@dataclass
class Region:
    """Bytes of the archive that could not be read as members."""

    start: int
    end: int
    kind: str  # "corrupt" (not a header, resynchronised after) | "truncated" (the file ends inside a member)
    detail: str

    @property
    def size(self) -> int:
        return self.end - self.start


Event = Member | BadHeader | Region


@dataclass
class Scan:
    """What a finished scan covered; filled while iterating `scan_tar`."""

    path: str
    compressed: bool = False
    bytes_total: int = 0  # archive bytes seen (decompressed for .tar.gz)
    bytes_read: int = 0  # of which read as headers, data, padding and zero blocks
    regions: list[Region] = field(default_factory=list)
    end_marker: bool = False  # two zero blocks followed the last member
    n_members: int = 0
    open_error: str | None = None

    @property
    def accounted(self) -> bool:
        return self.bytes_read + sum(r.size for r in self.regions) == self.bytes_total


class _Stream:
    """Sequential reads with a position, over a plain file (seekable) or a gzip stream."""

    def __init__(self, path: str):
        self.raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        magic = self.raw.read(2)
        self.raw.seek(0)
        self.compressed = magic == b"\x1f\x8b"
        self.fh = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.compressed else self.raw
        self.size = None if self.compressed else os.fstat(self.raw.fileno()).st_size
        self.pos = 0
        self.broken: str | None = None  # why the compressed stream could not be read further

    def read(self, n: int) -> bytes:
        try:
            data = self.fh.read(n)
        except (EOFError, OSError, zlib.error) as exc:  # a cut or damaged compressed stream
            self.broken = f"{type(exc).__name__}: {exc}"
            data = b""
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Skip n bytes; returns how many were there."""
        if not self.compressed:
            got = max(0, min(n, self.size - self.pos))
            self.raw.seek(self.pos + got)
            self.pos += got
            return got
        got = 0
        while got < n:
            chunk = self.read(min(CHUNK, n - got))
            if not chunk:
                break
            got += len(chunk)
        return got

    def close(self) -> None:
        self.raw.close()


def _octal(field_bytes: bytes) -> int | None:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (negative values are None)."""
    if field_bytes and field_bytes[0] & 0x80:
        if field_bytes[0] == 0xFF:
            return None  # base-256 negative
        return int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
    text = field_bytes.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        return None
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[148:156])
    if stored is None:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)  # some old tars sum signed chars
    return stored in (unsigned, signed)


def _cstr(b: bytes) -> bytes:
    return b.split(b"\x00", 1)[0]


def _decode_name(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "backslashreplace"), f"member name is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """`LEN KEY=VALUE\\n` records of a pax extended header; a malformed record ends the parse."""
    out, i = {}, 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp < 0 or not data[i:sp].isdigit():
            break
        length = int(data[i:sp])
        rec = data[sp + 1 : i + length]
        if length <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            break
        key, _, value = rec[:-1].partition(b"=")
        out[key] = value
        i += length
    return out


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def scan_tar(path: str, want: Callable[[str], int | None], scan: Scan | None = None) -> Iterator[Event]:
    """Members, bad headers and unreadable regions of the tar at `path`, in archive order.

    `want(name)` returns the byte limit up to which a regular member's data is read, or None to skip it unread.
    Pass a `Scan` to get the byte accounting (filled as the iteration goes; complete when it ends). Opening the
    file may raise OSError; nothing after that raises."""
    scan = scan if scan is not None else Scan(path)
    stream = _Stream(path)
    scan.compressed = stream.compressed
    try:
        yield from _walk(stream, want, scan)
    finally:
        scan.bytes_total = stream.pos
        stream.close()


def _walk(s: _Stream, want: Callable[[str], int | None], scan: Scan) -> Iterator[Event]:
    corrupt_start: int | None = None
    zeros = 0  # consecutive zero blocks since the last member
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None

    def close_corrupt(at: int) -> Iterator[Region]:
        nonlocal corrupt_start
        if corrupt_start is not None:
            region = Region(corrupt_start, at, "corrupt", f"bytes {corrupt_start}-{at} are not tar headers or data")
            scan.regions.append(region)
            corrupt_start = None
            yield region

    def truncated(start: int, what: str) -> Iterator[Region]:
        yield from close_corrupt(start)
        detail = what + (f" (compressed stream broken: {s.broken})" if s.broken else "")
        region = Region(start, s.pos, "truncated", detail)
        scan.regions.append(region)
        yield region

    while True:
        start = s.pos
        block = s.read(BLOCK)
        if not block:
            break
        if len(block) < BLOCK:
            yield from truncated(start, f"the archive ends {len(block)} bytes into a 512-byte block")
            break
        if block == ZERO_BLOCK:
            yield from close_corrupt(start)
            scan.bytes_read += BLOCK
            zeros += 1
            if zeros >= 2:
                scan.end_marker = True
            continue
        if not _checksum_ok(block):
            if corrupt_start is None:
                corrupt_start = start
            pax, long_name = {}, None  # metadata before an unreadable region is not for the member after it
            continue
        yield from close_corrupt(start)
        typeflag = block[156:157]
        size = _octal(block[124:136])
        magic = block[257:263]
        raw_name = _cstr(block[0:100])
        if magic == b"ustar\x00" and block[345:346] != b"\x00":  # POSIX ustar: the prefix field completes the name
            raw_name = _cstr(block[345:500]) + b"/" + raw_name
        if long_name is not None:
            raw_name, long_name = long_name, None
        if b"path" in pax:
            raw_name = pax[b"path"]
        if b"size" in pax:
            size = int(pax[b"size"]) if pax[b"size"].isdigit() else None
        sparse = typeflag == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax)
        linkname = pax.get(b"linkpath", _cstr(block[157:257]))
        pax = {}
        name, name_error = _decode_name(raw_name)
        if size is None:
            yield BadHeader(name, start, f"member {name!r} declares an invalid size {block[124:136]!r}")
            if corrupt_start is None:
                corrupt_start = start  # the header and whatever data it had join the unreadable region
            continue
        zeros = 0
        scan.end_marker = False
        scan.bytes_read += BLOCK
        if typeflag == b"S" and block[482]:  # old GNU sparse: extension headers follow, not counted in size
            ext = 0
            while ext < MAX_SPARSE_EXTENSIONS:
                ext_start = s.pos
                extra = s.read(BLOCK)
                if len(extra) < BLOCK:
                    yield from truncated(ext_start, "the archive ends inside a sparse-file header")
                    return
                scan.bytes_read += BLOCK
                ext += 1
                if not extra[504]:
                    break
        data_len = 0 if typeflag in NO_DATA_TYPES else size
        padded = _padded(data_len)

        if typeflag in (b"x", b"g", b"L", b"K"):  # metadata for the next member
            meta = s.read(padded) if padded <= _padded(MAX_META_BYTES) else None
            if meta is None:
                got = s.skip(padded)
            else:
                got = len(meta)
            if got < padded:
                yield from truncated(start + BLOCK, f"the archive ends inside a {typeflag.decode('latin-1')!r} "
                                     "header's data")
                return
            scan.bytes_read += padded
            if meta is not None and typeflag == b"x":
                pax = _pax_records(meta[:data_len])
            elif meta is not None and typeflag == b"L":
                long_name = _cstr(meta[:data_len])
            continue

        kind = REGULAR_TYPES.get(typeflag) or NON_REGULAR_TYPES.get(typeflag) or f"unknown type {typeflag!r}"
        data_start = s.pos
        member = Member(name, kind, start, data_start + padded, size, name_error=name_error, sparse=sparse,
                        linkname=linkname.decode("utf-8", "backslashreplace"))
        scan.n_members += 1
        if not member.regular:
            member.skipped = "not a regular file"
            limit = None
        else:
            limit = want(name)
            if limit is None:
                member.skipped = "not needed"
            elif size > limit:
                member.skipped = "over the size limit"
                limit = None
        if limit is not None:
            data = s.read(padded)
            got = len(data)
            if got >= size:
                member.data = data[:size]
        else:
            got = s.skip(padded)
        if got < padded:
            member.data, member.skipped = None, "cut off by the end of the archive"
            yield member
            yield from truncated(data_start, f"the archive ends inside member {name!r} ({got} of {padded} "
                                 "data bytes)")
            return
        scan.bytes_read += padded
        yield member
    yield from close_corrupt(s.pos)
    if s.broken:
        yield from truncated(s.pos, "the compressed stream ends early")
