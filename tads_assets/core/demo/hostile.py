"""A hostile-input corpus: the broken, odd and malicious inputs a web-scale pool holds, each with the outcome
TADS promises for it (issue "Reliability"). Tests and `benchmarks/hostile_inputs.py` generate it; nothing is
downloaded. Every case names what goes in and what must come out:

- `kept`: an odd but valid sample (CMYK, 16-bit, palette, animated, EXIF-rotated image; control characters in
  its caption) is ingested and decoded the one right way (`formats.decode_rgb`);
- `ledgered:<reason>`: the sample leaves the pool with a ledger row naming it and the reason;
- `error:<regex>`: the run stops before any work with a message naming the input and the fix.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from tads_assets.core.io import formats
from tads_assets.core.io import embeddings

COLORS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (230, 210, 40),
          "purple": (140, 50, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle", "cross", "stripe", "ring")


@dataclass(frozen=True)
class Case:
    """One hostile input: `uid` is the sample key (None for whole-input cases), `expect` the promised outcome."""

    kind: str
    source: str  # webdataset | img2dataset | csv | task file | embeddings | checkpoint
    uid: str | None
    expect: str  # "kept" | "ledgered:<reason>" | "error:<regex the message must match>"


# --------------------------------------------------------------------------------------------- images


def good_image(i: int, size: int = 64) -> tuple[bytes, str]:
    """A distinct, valid JPEG (a coloured shape on a grey background) and its caption."""
    color_name = list(COLORS)[i % len(COLORS)]
    shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
    rng = np.random.default_rng(i)
    arr = np.full((size, size, 3), 90 + (i * 7) % 80, np.uint8) + rng.integers(0, 12, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c, r = size / 2 + (i % 5) - 2, size / 3
    masks = {"circle": (yy - c) ** 2 + (xx - c) ** 2 < r * r, "square": (abs(yy - c) < r) & (abs(xx - c) < r),
             "triangle": (yy > c - r) & (abs(xx - c) < (yy - c + r) / 2), "cross": (abs(yy - c) < r / 3) | (abs(xx - c) < r / 3),
             "stripe": (xx // 8) % 2 == 0, "ring": abs(np.hypot(yy - c, xx - c) - r) < r / 4}
    arr[masks[shape]] = COLORS[color_name]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue(), f"a {color_name} {shape} on a grey background, picture {i}"


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def odd_images() -> dict[str, tuple[bytes, str]]:
    """Valid images in the modes a web pool holds besides 8-bit RGB: (bytes, extension)."""
    base = Image.open(io.BytesIO(good_image(3)[0])).convert("RGB")
    grey16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tall = Image.new("RGB", (80, 40), (30, 120, 200))  # stored 80 wide x 40 high, shown upright as 40 x 80
    tall.paste((250, 250, 250), (0, 0, 20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    return {
        "cmyk_jpeg": (_save(base.convert("CMYK"), "JPEG"), "jpg"),
        "grey_16bit_png": (_save(grey16, "PNG"), "png"),
        "palette_png_transparent": (_save(palette, "PNG", transparency=0), "png"),
        "animated_gif_as_png": (anim.getvalue(), "png"),
        "exif_rotated_jpeg": (_save(tall, "JPEG", exif=exif), "jpg"),
    }


def broken_images() -> dict[str, tuple[bytes, str, str]]:
    """Images that cannot be used: (bytes, extension, ledger reason)."""
    jpeg, png = good_image(5)[0], _save(Image.open(io.BytesIO(good_image(6)[0])), "PNG")
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "jpg", formats.CORRUPT_IMAGE),
        "truncated_png": (png[: len(png) // 2], "png", formats.CORRUPT_IMAGE),
        "corrupt_jpeg_garbage": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "jpg", formats.CORRUPT_IMAGE),
        "html_error_page_as_jpeg": (b"<html><body>404 Not Found</body></html>" * 20, "jpg", formats.CORRUPT_IMAGE),
        "zero_byte_image": (b"", "jpg", formats.EMPTY_IMAGE),
        "png_bomb_30000x30000": (bomb_png(), "png", formats.DECOMPRESSION_BOMB),
    }


def hostile_captions() -> dict[str, tuple[bytes | None, str]]:
    """Captions: (raw bytes, expected outcome)."""
    return {
        "empty_caption": (b"", f"ledgered:{formats.EMPTY_CAPTION}"),
        "whitespace_caption": (b" \t\r\n \xc2\xa0 ", f"ledgered:{formats.EMPTY_CAPTION}"),
        "caption_10mb": (b"spam " * 2_000_000, f"ledgered:{formats.CAPTION_TOO_LONG}"),
        "non_utf8_caption": ("caf\xe9 cr\xe8me".encode("latin-1"), f"ledgered:{formats.NON_UTF8_CAPTION}"),
        "control_char_caption": (b"a red\x00 circle\x07 with\x1b[31m escapes\x7f", "kept"),
        "missing_caption": (None, f"ledgered:{formats.MISSING_CAPTION}"),
    }


# --------------------------------------------------------------------------------------------- sources


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A plain tar of (member name, bytes), in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sample(key: str, image: bytes | None, caption: bytes | None, ext: str = "jpg") -> list[tuple[str, bytes]]:
    members = [] if image is None else [(f"{key}.{ext}", image)]
    if caption is not None:
        members.append((f"{key}.txt", caption))
    return members + [(f"{key}.json", json.dumps({"url": f"https://example.com/{key}.{ext}"}).encode())]


def build_webdataset(root: str | Path, n_good: int = 120) -> tuple[str, list[Case]]:
    """Three shards under `root`: good samples interleaved with every hostile sample, duplicate keys within and
    across shards, unsafe member names, and a third shard cut off inside its last sample. Returns the
    `webdataset:` spec and the cases."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    shards: list[list[tuple[str, bytes]]] = [[], [], []]
    good = [good_image(i) for i in range(n_good)]
    for i, (img, cap) in enumerate(good):
        shards[i % 2].extend(_sample(f"good-{i:05d}", img, cap.encode()))
    fine_image = good_image(999)[0]
    for kind, (data, ext) in odd_images().items():
        shards[0].extend(_sample(kind, data, f"an odd image: {kind.replace('_', ' ')}".encode(), ext))
        cases.append(Case(kind, "webdataset", kind, "kept"))
    for kind, (data, ext, reason) in broken_images().items():
        shards[0].extend(_sample(kind, data, b"a picture that will not decode", ext))
        cases.append(Case(kind, "webdataset", kind, f"ledgered:{reason}"))
    for j, (kind, (caption, expect)) in enumerate(hostile_captions().items()):
        shards[1].extend(_sample(kind, good_image(500 + j)[0], caption))
        cases.append(Case(kind, "webdataset", kind, expect))
    shards[1].extend(_sample("no_image_member", None, b"a caption without its picture"))
    cases.append(Case("sample_without_image", "webdataset", "no_image_member", f"ledgered:{formats.MISSING_IMAGE}"))
    # duplicate keys: the first occurrence is kept, the later one ledgered (same ledger uid: the key)
    shards[0].extend(_sample("dup-within", fine_image, b"first copy in shard 0"))
    shards[0].extend(_sample("dup-within", good_image(998)[0], b"second copy in shard 0"))
    shards[0].extend(_sample("dup-across", good_image(997)[0], b"first copy, shard 0"))
    shards[1].extend(_sample("dup-across", good_image(996)[0], b"second copy, shard 1"))
    cases += [Case("duplicate_key_within_shard", "webdataset", "dup-within", f"ledgered:{formats.DUPLICATE_KEY}"),
              Case("duplicate_key_across_shards", "webdataset", "dup-across", f"ledgered:{formats.DUPLICATE_KEY}")]
    # member names that would escape a folder if ever used as a path
    shards[1].extend(_sample("../../escape", fine_image, b"path traversal member"))
    shards[1].extend(_sample("/etc/absolute", fine_image, b"absolute member name"))
    shards[1].extend(_sample("nested/ok-key", good_image(995)[0], b"a nested WebDataset key is a fine key"))
    cases += [Case("tar_member_path_traversal", "webdataset", "../../escape", f"ledgered:{formats.UNSAFE_PATH}"),
              Case("tar_member_absolute_path", "webdataset", "/etc/absolute", f"ledgered:{formats.UNSAFE_PATH}"),
              Case("tar_member_nested_key", "webdataset", "nested/ok-key", "kept")]
    # shard 2: three whole samples, then the archive ends inside the fourth one's image
    for k in range(3):
        shards[2].extend(_sample(f"before-cut-{k}", good_image(900 + k)[0], b"complete before the cut"))
    shards[2].extend(_sample("cut-inside", good_image(904, size=160)[0], b"the archive ends inside me"))
    full = tar_bytes(shards[2])
    cut_at = full.rfind(b"cut-inside.jpg") + 512 + 700  # header block of the image member, then into its data
    for k in range(3):
        cases.append(Case("sample_before_tar_truncation", "webdataset", f"before-cut-{k}", "kept"))
    cases.append(Case("truncated_tar", "webdataset", "cut-inside", f"ledgered:{formats.TRUNCATED_TAR}"))
    (root / "00000.tar").write_bytes(tar_bytes(shards[0]))
    (root / "00001.tar").write_bytes(tar_bytes(shards[1]))
    (root / "00002.tar").write_bytes(full[:cut_at])
    return f"webdataset:{root}/{{00000..00002}}.tar", cases


def build_img2dataset(root: str | Path) -> tuple[str, list[Case]]:
    """An img2dataset output folder whose table lists a file that is not there, a failed download and an unsafe key."""
    root = Path(root)
    (root / "00000").mkdir(parents=True, exist_ok=True)
    rows = {"key": [], "url": [], "caption": [], "status": [], "error_message": []}

    def add(key, status="success", error=None):
        for col, v in zip(rows, (key, f"https://example.com/{key}.jpg", f"caption of {key}", status, error)):
            rows[col].append(v)

    for i in range(4):
        img, cap = good_image(700 + i)
        add(f"i2d-{i}")
        (root / "00000" / f"i2d-{i}.jpg").write_bytes(img)
    add("i2d-missing-file")
    add("i2d-failed", "failed_to_download", "HTTP 404")
    add("../i2d-escape")
    pl.DataFrame(rows).write_parquet(root / "00000.parquet")
    return f"img2dataset:{root}", [
        Case("img2dataset_missing_file", "img2dataset", "i2d-missing-file", f"ledgered:{formats.MISSING_FILE}"),
        Case("img2dataset_failed_download", "img2dataset", "i2d-failed", f"ledgered:{formats.DOWNLOAD_FAILED}"),
        Case("img2dataset_key_path_traversal", "img2dataset", "../i2d-escape", f"ledgered:{formats.UNSAFE_PATH}"),
        *[Case("img2dataset_sample", "img2dataset", f"i2d-{i}", "kept") for i in range(4)],
    ]


def build_csv(root: str | Path) -> tuple[str, list[Case]]:
    """A CSV pool with a good row, a `../` path, an absolute path outside its folder and a missing file."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    outside = root.parent / f"{root.name}-outside.jpg"
    outside.write_bytes(good_image(800)[0])
    for i in range(3):
        (root / "images" / f"ok{i}.jpg").write_bytes(good_image(810 + i)[0])
    lines = ["image_path,caption,url"] + [f"images/ok{i}.jpg,a fine csv row {i},https://example.com/ok{i}.jpg"
                                          for i in range(3)]
    lines += [f"../{outside.name},a path climbing out of the csv folder,", f"{outside},an absolute path outside,",
              "images/not-there.jpg,a file that does not exist,"]
    (root / "pool.csv").write_text("\n".join(lines) + "\n")
    uid = lambda row: f"pool-{row:09d}"  # noqa: E731 - the reader's uid: CSV stem and data row number
    return f"csv:{root / 'pool.csv'}", [
        *[Case("csv_row", "csv", uid(i), "kept") for i in range(3)],
        Case("csv_path_traversal", "csv", uid(3), f"ledgered:{formats.UNSAFE_PATH}"),
        Case("csv_absolute_path_outside_root", "csv", uid(4), f"ledgered:{formats.UNSAFE_PATH}"),
        Case("csv_missing_file", "csv", uid(5), f"ledgered:{formats.MISSING_FILE}"),
    ]


def build_csv_missing_columns(root: str | Path) -> tuple[str, Case]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad.csv").write_text("path,text\nimages/a.jpg,a caption\n")
    return f"csv:{root / 'bad.csv'}", Case("csv_missing_columns", "csv", None,
                                          r"error:lacks required column\(s\) \['image_path', 'caption'\].*header must name")


# --------------------------------------------------------------------------------------------- round 2: sources
# Each builder writes one small source of its own (so the benchmark measures each case's memory and time alone)
# and returns (spec, cases). Good samples after the damage are cases too: "kept" proves nothing after it was lost.


def member_offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """Member name -> (header offset, end of its padded data) in a plain tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.offset, m.offset_data + (m.size + 511) // 512 * 512) for m in tar.getmembers()}


def set_header_field(data: bytes, header_at: int, field_at: int, value: bytes, checksum: bool = True) -> bytes:
    """`data` with `value` written at `field_at` of the 512-byte header at `header_at`, checksum recomputed."""
    buf = bytearray(data)
    buf[header_at + field_at : header_at + field_at + len(value)] = value
    if checksum:
        block = buf[header_at : header_at + 512]
        block[148:156] = b" " * 8
        buf[header_at + 148 : header_at + 156] = b"%06o\0 " % sum(block)
    return bytes(buf)


def _good_samples(prefix: str, n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [m for i in range(start, start + n) for m in _sample(f"{prefix}{i:03d}", good_image(i, 32)[0],
                                                                     good_image(i, 32)[1].encode())]


def _wds(root: Path, files: dict[str, bytes]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    names = sorted(files)
    return f"webdataset:{root}/{names[0]}" if len(names) == 1 else f"webdataset:{root}/{{{','.join(names)}}}"


def _region_uid(root: Path, name: str, start: int, end: int) -> str:
    return f"{root / name}#bytes-{start}-{end}"


def build_header_bitflip(root: Path) -> tuple[str, list[Case]]:
    """One flipped bit in the header of sample 20 of 50 (its image member): the bytes of that member are an
    unreadable region, sample 20 lost its image, samples 21-49 are read on."""
    data = tar_bytes(_good_samples("a", 50))
    start, end = member_offsets(data)["a020.jpg"]
    buf = bytearray(data)
    buf[start + 3] ^= 0x04
    spec = _wds(root, {"00000.tar": bytes(buf)})
    return spec, [Case("tar_header_bitflip", "webdataset", "a020", f"ledgered:{formats.CORRUPT_TAR_REGION}"),
                  Case("tar_header_bitflip_region", "webdataset", _region_uid(root, "00000.tar", start, end),
                       f"ledgered:{formats.CORRUPT_TAR_REGION}"),
                  Case("tar_header_bitflip_after", "webdataset", "a021", "kept"),
                  Case("tar_header_bitflip_last", "webdataset", "a049", "kept")]


def build_concatenated_tars(root: Path) -> tuple[str, list[Case]]:
    """`cat a.tar b.tar` and a tar with two zero blocks between its samples: everything after is read."""
    cat = tar_bytes(_good_samples("c", 5)) + tar_bytes(_good_samples("c", 5, 5))
    first, second = tar_bytes(_good_samples("z", 5)), tar_bytes(_good_samples("z", 5, 5))
    zeros = first[: member_offsets(first)["z004.json"][1]] + bytes(1024) + second
    spec = _wds(root, {"cat.tar": cat, "zeros.tar": zeros})
    return spec, [Case("tars_concatenated", "webdataset", "c005", "kept"),
                  Case("tars_concatenated_last", "webdataset", "c009", "kept"),
                  Case("zero_blocks_mid_tar", "webdataset", "z005", "kept"),
                  Case("zero_blocks_mid_tar_last", "webdataset", "z009", "kept")]


def _v7(data: bytes) -> bytes:
    """The same tar with old-style (v7) headers: no ustar magic, version, owner names or device numbers."""
    for start, _ in member_offsets(data).values():
        data = set_header_field(data, start, 257, bytes(512 - 257))
    return data


def build_cut_between_samples(root: Path) -> tuple[str, list[Case]]:
    """A .tar.gz and a v7 tar, each cut right after sample 5 (no end-of-archive marker): samples 0-4 are kept,
    sample 5 is ledgered truncated_tar (nothing tells whether it was whole), and the shard says later samples may
    be missing."""
    import gzip

    plain = tar_bytes(_good_samples("g", 10))
    cut = member_offsets(plain)["g006.jpg"][0]
    v7 = _v7(tar_bytes(_good_samples("v", 10)))
    v7_cut = member_offsets(tar_bytes(_good_samples("v", 10)))["v006.jpg"][0]
    spec = _wds(root, {"cut.tar.gz": gzip.compress(plain[:cut]), "v7cut.tar": v7[:v7_cut],
                       "v7whole.tar": _v7(tar_bytes(_good_samples("w", 3)))})
    return spec, [Case("tar_gz_cut_between_samples", "webdataset", "g004", "kept"),
                  Case("tar_gz_cut_between_samples_last", "webdataset", "g005", f"ledgered:{formats.TRUNCATED_TAR}"),
                  Case("v7_tar_cut_between_samples", "webdataset", "v004", "kept"),
                  Case("v7_tar_cut_between_samples_last", "webdataset", "v005", f"ledgered:{formats.TRUNCATED_TAR}"),
                  Case("v7_tar_whole", "webdataset", "w002", "kept")]


def build_negative_size(root: Path) -> tuple[str, list[Case]]:
    """A caption member whose size field is a negative base-256 number: that sample is lost (ledgered), the
    following samples are read."""
    data = tar_bytes(_good_samples("n", 8))
    start, _ = member_offsets(data)["n003.txt"]
    data = set_header_field(data, start, 124, b"\xff" * 12)
    spec = _wds(root, {"00000.tar": data})
    return spec, [Case("tar_member_negative_size", "webdataset", "n003", f"ledgered:{formats.CORRUPT_TAR_REGION}"),
                  Case("tar_member_negative_size_prev", "webdataset", "n002", "kept"),
                  Case("tar_member_negative_size_next", "webdataset", "n004", "kept")]


def _special_member(name: str, kind: bytes, linkname: str = "") -> tuple[str, tarfile.TarInfo]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return name, info


def special_tar(members: list[tuple[str, bytes] | tuple[str, tarfile.TarInfo]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, item in members:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(item)
                tar.addfile(info, io.BytesIO(item))
    return buf.getvalue()


def gnu_sparse_member(name: str, real_size: int) -> bytes:
    """A GNU sparse ('S') header whose file expands to `real_size` bytes from one stored block of data."""
    info = tarfile.TarInfo(name)
    info.size = 512
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT)[:512])
    header[156:157] = b"S"
    header[386:398] = b"%011o\0" % (real_size - 512)  # sparse map entry 0: offset
    header[398:410] = b"%011o\0" % 512  # ... and its stored bytes
    header[483:495] = b"%011o\0" % real_size  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"spam " * 102 + b"xx"


def build_special_members(root: Path) -> tuple[str, list[Case]]:
    """Samples whose members are links, a FIFO, a device or a sparse file: never followed or read."""
    img, cap = good_image(7, 32)
    members = [*_good_samples("s", 2),
               _special_member("links.jpg", tarfile.SYMTYPE, "/etc/passwd"), _special_member("links.txt", tarfile.LNKTYPE, "s000.txt"),
               _special_member("fifo.jpg", tarfile.FIFOTYPE), ("fifo.txt", b"a fifo"),
               _special_member("dev.jpg", tarfile.CHRTYPE), ("dev.txt", b"a device"),
               ("half-link.jpg", img), _special_member("half-link.txt", tarfile.SYMTYPE, "/etc/shadow"),
               *_good_samples("s", 2, 2)]
    body = special_tar(members)
    end = member_offsets(body)["s003.json"][1]
    sparse = body[:end] + gnu_sparse_member("sparse.txt", 300_000_000) + tar_bytes(_good_samples("t", 1))
    spec = _wds(root, {"00000.tar": sparse})
    return spec, [Case("tar_symlink_and_hardlink_members", "webdataset", "links", f"ledgered:{formats.UNSAFE_MEMBER}"),
                  Case("tar_fifo_member", "webdataset", "fifo", f"ledgered:{formats.UNSAFE_MEMBER}"),
                  Case("tar_device_member", "webdataset", "dev", f"ledgered:{formats.UNSAFE_MEMBER}"),
                  Case("tar_caption_symlink", "webdataset", "half-link", f"ledgered:{formats.UNSAFE_MEMBER}"),
                  Case("gnu_sparse_300mb_caption", "webdataset", "sparse", f"ledgered:{formats.UNSAFE_MEMBER}"),
                  Case("tar_after_special_members", "webdataset", "s003", "kept"),
                  Case("tar_after_sparse_member", "webdataset", "t000", "kept")]


def build_hostile_metadata(root: Path) -> tuple[str, list[Case]]:
    """Per-sample metadata that used to stop the run: a lone surrogate in the JSON url, a 100,000-deep JSON
    array, a member name with a raw non-UTF-8 byte, an EPS and a PSD named .jpg, a 50000 x 1 PNG."""
    img, cap = good_image(11, 32)
    strip = Image.new("L", (50_000, 1), 128)
    members = [*_good_samples("m", 2),
               ("surrogate.jpg", img), ("surrogate.txt", cap.encode()), ("surrogate.json", b'{"url": "http://x/\\ud800"}'),
               ("deep.jpg", img), ("deep.txt", cap.encode()), ("deep.json", b"[" * 100_000 + b"]" * 100_000),
               ("eps.jpg", _save(Image.new("RGB", (16, 16), (200, 0, 0)), "EPS")), ("eps.txt", b"an EPS file"),
               ("psd.jpg", b"8BPS\x00\x01" + bytes(40)), ("psd.txt", b"a PSD file"),
               ("strip.png", _save(strip, "PNG")), ("strip.txt", b"a 50000 pixel wide strip"),
               *_good_samples("m", 2, 2)]
    raw_name = tar_bytes([("badXname.jpg", img), ("badXname.txt", cap.encode())])
    for at, _ in member_offsets(raw_name).values():  # "badXname" -> b"bad\xffname": a name that is not UTF-8
        raw_name = set_header_field(raw_name, at, 3, b"\xff")
    spec = _wds(root, {"00000.tar": tar_bytes(members), "00001.tar": raw_name})
    return spec, [Case("json_url_lone_surrogate", "webdataset", "surrogate", f"ledgered:{formats.INVALID_METADATA}"),
                  Case("json_100000_deep", "webdataset", "deep", "kept"),
                  Case("eps_named_jpg", "webdataset", "eps", f"ledgered:{formats.UNSUPPORTED_IMAGE_FORMAT}"),
                  Case("psd_named_jpg", "webdataset", "psd", f"ledgered:{formats.UNSUPPORTED_IMAGE_FORMAT}"),
                  Case("png_50000x1", "webdataset", "strip", f"ledgered:{formats.IMAGE_TOO_LARGE}"),
                  Case("member_name_not_utf8", "webdataset", "bad\\xffname", f"ledgered:{formats.INVALID_KEY}"),
                  Case("after_hostile_metadata", "webdataset", "m003", "kept")]


def build_gz_caption_bomb(root: Path, size: int = 300_000_000) -> tuple[str, list[Case]]:
    """A small .tar.gz whose caption member inflates to `size` bytes: skipped by streaming, never held."""

    class Spam(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = (b"spam " * (n // 5 + 1))[:n]
            self.left -= n
            return n

    root.mkdir(parents=True, exist_ok=True)
    img, cap = good_image(13, 32)
    with tarfile.open(root / "bomb.tar.gz", "w:gz", compresslevel=6) as tar:
        for name, data in _good_samples("b", 1):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in (("bomb.jpg", img), ("bomb.txt", None)):
            info = tarfile.TarInfo(name)
            info.size = size if data is None else len(data)
            tar.addfile(info, io.BufferedReader(Spam(size)) if data is None else io.BytesIO(data))
        for name, data in _good_samples("b", 1, 1):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"webdataset:{root}/bomb.tar.gz", [
        Case("tar_gz_300mb_caption", "webdataset", "bomb", f"ledgered:{formats.CAPTION_TOO_LONG}"),
        Case("tar_gz_after_caption_bomb", "webdataset", "b001", "kept")]


def build_i2d_round2(root: Path) -> tuple[str, list[Case]]:
    """An img2dataset files layout with a key listed twice and files that are symlinks out of the folder."""
    root = Path(root)
    (root / "00000").mkdir(parents=True, exist_ok=True)
    secret = root.parent / f"{root.name}-secret.txt"
    secret.write_text("a secret that must never become a caption")
    keys = ["ok0", "ok1", "dup", "dup", "txtlink", "jpglink"]
    for k in ("ok0", "ok1", "dup", "txtlink"):
        (root / "00000" / f"{k}.jpg").write_bytes(good_image(len(k), 32)[0])
    for link, target in (("txtlink.txt", secret), ("jpglink.jpg", "/etc/passwd")):
        (root / "00000" / link).unlink(missing_ok=True)
        (root / "00000" / link).symlink_to(target)
    pl.DataFrame({"key": keys, "url": [f"https://example.com/{k}" for k in keys], "caption": [None] * 6,
                  "status": ["success"] * 6}).write_parquet(root / "00000.parquet")
    for k in ("ok0", "ok1", "dup"):
        (root / "00000" / f"{k}.txt").write_text(f"caption of {k}")
    return f"img2dataset:{root}", [
        Case("img2dataset_duplicate_key", "img2dataset", "dup", f"ledgered:{formats.DUPLICATE_KEY}"),
        Case("img2dataset_caption_symlink_outside", "img2dataset", "txtlink", f"ledgered:{formats.UNSAFE_PATH}"),
        Case("img2dataset_image_symlink_etc_passwd", "img2dataset", "jpglink", f"ledgered:{formats.UNSAFE_PATH}"),
        Case("img2dataset_sample_beside_them", "img2dataset", "ok1", "kept")]


def build_i2d_list_url(root: Path) -> tuple[str, Case]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"key": ["a"], "url": [["https://x/a", "https://y/a"]]}).write_parquet(root / "00000.parquet")
    return f"img2dataset:{root}", Case("img2dataset_url_column_of_lists", "img2dataset", None,
                                       r"error:00000\.parquet: column 'url' has type List")


def build_csv_round2(root: Path) -> tuple[str, list[Case]]:
    """CSV rows that used to stop the run or hang it: a 200,000-character caption, non-UTF-8 bytes in url and
    image_path, an image_path that is a FIFO, and a terminal escape sequence in a path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / "images" / f"ok{i}.jpg").write_bytes(good_image(820 + i, 32)[0])
    (root / "images" / "fifo.jpg").unlink(missing_ok=True)
    os.mkfifo(root / "images" / "fifo.jpg")
    lines = [b"image_path,caption,url", b"images/ok0.jpg,a fine row,https://example.com/0",
             b"images/ok1.jpg," + b"long " * 40_000 + b",",
             b"images/ok1.jpg,a url with a latin-1 byte,https://example.com/caf\xe9",
             b"images/caf\xe9.jpg,a path with a latin-1 byte,",
             b"images/fifo.jpg,a fifo must not hang the run,",
             b"images/\x1b[2J\x1b[31mgone.jpg,a path with terminal escapes,",
             b"images/ok2.jpg,the last fine row,"]
    (root / "pool.csv").write_bytes(b"\n".join(lines) + b"\n")
    uid = lambda row: f"pool-{row:09d}"  # noqa: E731
    return f"csv:{root / 'pool.csv'}", [
        Case("csv_caption_200000_chars", "csv", uid(1), f"ledgered:{formats.CAPTION_TOO_LONG}"),
        Case("csv_url_not_utf8", "csv", uid(2), f"ledgered:{formats.INVALID_METADATA}"),
        Case("csv_image_path_not_utf8", "csv", uid(3), f"ledgered:{formats.INVALID_METADATA}"),
        Case("csv_image_path_fifo", "csv", uid(4), f"ledgered:{formats.UNSAFE_PATH}"),
        Case("csv_image_path_terminal_escapes", "csv", uid(5), f"ledgered:{formats.MISSING_FILE}"),
        Case("csv_row_after_them", "csv", uid(6), "kept")]


def build_brace_bomb(root: Path) -> tuple[str, Case]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return f"webdataset:{root}/{{0..999999}}.tar", Case("brace_range_million", "webdataset", None,
                                                       "error:expands to more than 100000 paths")


ROUND2_SOURCES = {  # name -> builder: sources whose samples are judged in raw_pool
    "header-bitflip": build_header_bitflip, "concatenated": build_concatenated_tars,
    "cut-between": build_cut_between_samples, "negative-size": build_negative_size,
    "special-members": build_special_members, "metadata": build_hostile_metadata,
    "gz-caption-bomb": build_gz_caption_bomb, "i2d-round2": build_i2d_round2, "csv-round2": build_csv_round2,
}
ROUND2_SOURCE_ERRORS = {"i2d-list-url": build_i2d_list_url, "brace-bomb": build_brace_bomb}


# --------------------------------------------------------------------------------------------- damaged vectors


def damage_embeddings(db, part: str) -> list[str]:
    """Rewrite one raw_pool part's rows of the LanceDB embeddings table as a damaged copy that still counts as done
    (same encoder and fingerprint): +inf in the first sample's image vector, -inf in the second's text vector
    (LanceDB itself refuses NaN on write). Returns the part's uids in table order."""
    rows = embeddings.read_embeddings(db, ("uid", "encoder_id", "part_fingerprint", "heldout_pair_cos", "image_vec",
                                           "text_vec", "flipped_image_vec"), part=part)
    image, text, flipped = embeddings.arrays(rows, "image_vec", "text_vec", "flipped_image_vec")
    image[0, 3], text[1, 0] = np.inf, -np.inf
    uids = rows["uid"].to_list()
    embeddings.write_part(db, embeddings.open_embeddings(db), part, rows["encoder_id"][0], uids, image, text, flipped,
                          rows["part_fingerprint"][0], rows["heldout_pair_cos"].to_numpy())
    return uids


def damage_frozen_features(cache_file: str | Path, row: int) -> None:
    """NaN into one sample's cached frozen image features, leaving the part's fingerprint as it was."""
    frame = pl.read_parquet(cache_file)
    feats = embeddings.arrays(frame, "image_feat")[0]
    feats[row] = np.nan
    frame.with_columns(pl.Series("image_feat", feats, dtype=frame.schema["image_feat"])).write_parquet(cache_file)


# --------------------------------------------------------------------------------------------- task files

# one wrong field at a time: (edit of a valid document, regex the error message must match)
TASK_FILE_EDITS = {
    "task_name_missing": (lambda d: d["tasks"][0].pop("name"), r"tasks\[0\]\.name"),
    "task_kind_unknown": (lambda d: d["tasks"][0].update(kind="detection"), r"'shapes'\.kind"),
    "task_template_without_placeholder": (lambda d: d["tasks"][0].update(templates=["a photo"]), r"'shapes'\.templates"),
    "task_one_class": (lambda d: d["tasks"][0].update(classes=["circle"]), r"'shapes'\.classes"),
    "task_classes_repeat": (lambda d: d["tasks"][0].update(classes=["circle", "circle"]), r"'shapes'\.classes"),
    "task_weight_not_a_number": (lambda d: d["tasks"][0].update(weight="heavy"), r"'shapes'\.weight"),
    "task_weight_negative": (lambda d: d["tasks"][0].update(weight=-1), r"'shapes'\.weight"),
    "task_test_set_missing": (lambda d: d["tasks"][0].pop("test"), r"'shapes'\.test: missing"),
    "task_set_file_missing": (lambda d: d["tasks"][0].update(validation="webdataset:gone.tar"),
                              r"'shapes'\.validation.*does not exist"),
    "task_set_not_webdataset": (lambda d: d["tasks"][0].update(validation="/data/v.tar"), r"'shapes'\.validation.*webdataset:PATH"),
    "task_name_repeated": (lambda d: d["tasks"][1].update(name="shapes"), r"'shapes'\.name: used by more than one"),
    "task_list_empty": (lambda d: d.update(tasks=[]), "non-empty list"),
    "task_template_two_placeholders": (lambda d: d["tasks"][0].update(templates=["a {} next to a {}"]),
                                       r"'shapes'\.templates.*2 '\{\}' placeholders"),
    "task_template_named_field": (lambda d: d["tasks"][0].update(templates=["a {place}"]), r"'shapes'\.templates.*\{place"),
    "task_template_stray_brace": (lambda d: d["tasks"][0].update(templates=["a {} }"]), r"'shapes'\.templates.*Single '\}'"),
    "task_template_escaped_braces_only": (lambda d: d["tasks"][0].update(templates=["a {{}}"]),
                                          r"'shapes'\.templates.*0 '\{\}' placeholders"),
    "task_weight_infinite": (lambda d: d["tasks"][0].update(weight=float("inf")), r"'shapes'\.weight: expected a finite"),
    "task_classes_null_and_empty": (lambda d: d["tasks"][0].update(classes=[None, ""]), r"'shapes'\.classes: .*non-empty strings"),
    "task_weight_integer_beyond_float": (lambda d: d["tasks"][0].update(weight=10**400), r"'shapes'\.weight: expected a finite"),
    "task_weights_all_zero": (lambda d: [t.update(weight=0) for t in d["tasks"]], r"every task has weight 0"),
    "task_name_with_comma": (lambda d: d["tasks"][0].update(name="shapes,caps"), r"'shapes,caps'\.name: .*','"),
    "task_retrieval_classes_not_a_list": (lambda d: d["tasks"][1].update(classes="abc"), r"'caps'\.classes: expected a list"),
}


def eval_tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A held-out set's tar: (key, {ext: bytes}) with an image added to each sample that has none."""
    members = []
    for i, (key, rec) in enumerate(samples):
        rec = {"jpg": good_image(600 + i, 24)[0], **rec}
        members += [(f"{key}.{ext}", data) for ext, data in rec.items()]
    return tar_bytes(members)


def _good_set(n: int = 4) -> bytes:
    return eval_tar([(f"s{i}", {"cls": str(i % 2).encode(), "txt": f"caption {i}".encode()}) for i in range(n)])


# Task files whose held-out sets or paths are wrong (found when task_set opens and counts the sets), raw YAML that
# is hostile in itself, and valid layouts that must pass: kind -> (YAML text or None for "the path is a folder",
# extra files to write beside it, expected outcome).
def _task_content_cases(doc: dict) -> dict[str, tuple[str | None, dict[str, bytes], str]]:
    import copy

    import yaml

    def with_validation(value: str) -> str:
        d = copy.deepcopy(doc)
        d["tasks"][0]["validation"] = value
        return yaml.safe_dump(d)

    good = yaml.safe_dump(doc)
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)) + "tasks: *i\n"
    nested = eval_tar([(f"{d}/x{i}", {"cls": str(i % 2).encode()}) for d in "ab" for i in range(3)])
    return {
        "task_yaml_duplicate_key": (good.replace("kind: classification", "kind: classification\n  kind: retrieval", 1),
                                    {}, "error:duplicate key 'kind'"),
        "task_yaml_alias_bomb": (bomb, {}, "error:anchors .* not allowed"),
        "task_set_not_a_tar": (with_validation("webdataset:notatar.tar"), {"notatar.tar": b"just some text\n" * 100},
                               r"error:'shapes'\.validation: .*notatar\.tar.*not tar headers"),
        "task_labels_out_of_range": (with_validation("webdataset:range.tar"),
                                     {"range.tar": eval_tar([("r0", {"cls": b"7"}), ("r1", {"cls": b"99"})])},
                                     r"error:'shapes'\.validation: .*'r0': label 7 is out of range for 2 classes"),
        "task_cls_not_utf8": (with_validation("webdataset:latin.tar"), {"latin.tar": eval_tar([("l0", {"cls": b"caf\xe9"})])},
                              r"error:'shapes'\.validation: .*'l0': l0\.cls is not UTF-8"),
        "task_label_unknown_class_name": (with_validation("webdataset:names.tar"),
                                          {"names.tar": eval_tar([("n0", {"cls": b"hexagon"})])},
                                          r"error:'shapes'\.validation: .*'hexagon' is not one of the task's classes"),
        "task_label_from_json": (with_validation("webdataset:json.tar"),
                                 {"json.tar": eval_tar([(f"j{i}", {"json": json.dumps({"label": i % 2}).encode()})
                                                        for i in range(4)])}, "kept"),
        "task_path_is_directory": (None, {}, "error:is a directory"),
        "task_set_nested_keys": (with_validation("webdataset:nested.tar"), {"nested.tar": nested}, "kept"),
        "task_set_folder_of_shards": (with_validation("webdataset:shards"),
                                      {"shards/000.tar": _good_set(), "shards/001.tar": eval_tar(
                                          [("t0", {"cls": b"1"}), ("t1", {"cls": b"circle"})])}, "kept"),
        "task_set_brace_pattern": (with_validation("webdataset:part-{0..1}.tar"),
                                   {"part-0.tar": _good_set(), "part-1.tar": eval_tar([("p9", {"cls": b"0"})])}, "kept"),
    }


def task_file_cases(root: str | Path) -> list[tuple[Case, str]]:
    """A valid task file edited to have one wrong field at a time, then the cases of `_task_content_cases`: (case,
    YAML text or None where the path is a folder), all in `root` (a case's file is `root / f"{case.kind}.yaml"`)."""
    import copy

    import yaml

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("v.tar", "t.tar"):
        (root / name).write_bytes(_good_set())
    doc = {"tasks": [{"name": "shapes", "kind": "classification", "classes": ["circle", "square"],
                      "templates": ["a photo of a {}."], "weight": 1, "validation": "webdataset:v.tar",
                      "test": "webdataset:t.tar"},
                     {"name": "caps", "kind": "retrieval", "validation": "webdataset:v.tar", "test": "webdataset:t.tar"}]}
    out = []
    for kind, (edit, pattern) in TASK_FILE_EDITS.items():
        d = copy.deepcopy(doc)
        edit(d)
        out.append((Case(kind, "task file", None, f"error:{pattern}"), yaml.safe_dump(d)))
    out.append((Case("task_file_not_yaml", "task file", None, "error:not valid YAML"), "tasks: [ {name: x"))
    for kind, (text, files, expect) in _task_content_cases(doc).items():
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        if text is None:
            (root / f"{kind}.yaml").mkdir(exist_ok=True)
        out.append((Case(kind, "task file", None, expect), text))
    return out
