"""A synthetic web-like image-text pool with known ground truth, built from real images that ship offline.

Image sources (no downloads):
- Fashion-MNIST (Debian package `dataset-fashion-mnist`): the train split feeds the pool, the test split
  feeds the tasks' validation and test sets only, so no held-out garment is ever in the pool.
- scikit-learn's handwritten digits (`load_digits`): split into pool glyphs and held-out glyphs.
- scikit-image's bundled photos (cat, astronaut, coffee, rocket) for a rare long-tail concept, and its
  textures (brick, grass, gravel, moon) for off-task content.

Each clean sample is a garment or digit glyph rendered in a named colour on a background at a random
position and scale, with an English caption written from its label, colour and background in varied
phrasings. Web noise is injected at configurable rates and every sample carries its `kind` in the truth
table, so each later stage can be scored for precision and recall.

Output directory:
    pool/{00000..N}.tar       WebDataset shards: KEY.jpg|png, KEY.txt (caption), KEY.json ({"url": ...})
    truth.parquet             one row per sample: uid, kind, source, label, color, background, lang, ...
    tasks.yaml                the demo task set (schema in docs/architecture.md), paths relative to this directory
    val/*.tar, test/*.tar     task validation and test sets (KEY.jpg, KEY.cls, KEY.txt, KEY.json)
    manifest.json             the config it was made with and the counts per kind
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tads_assets.core.io.storage import replace_dir

from tads_assets.core.atomic import write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Bump when the generator's output changes, so an existing demo pool is regenerated rather than reused.
GENERATOR_VERSION = 4


def _tuples(x):
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x


def _load_words() -> dict:
    return _tuples(json.loads((Path(__file__).parent / "data" / "words.json").read_text(encoding="utf-8")))


CLEAN = "clean"
NOISE_KINDS = (
    "exact_duplicate",
    "near_duplicate",
    "misaligned",
    "text_heavy",
    "blurred",
    "non_english",
    "vague",
    "low_resolution",
    "extreme_aspect",
    "off_task",
    "rare",
)
# Samples that are broken on the wire; ingestion must ledger them, never crash on them.
BROKEN_KINDS = ("corrupt_image", "empty_caption")

DEFAULT_RATES: dict[str, float] = {
    "exact_duplicate": 0.05,
    "near_duplicate": 0.05,
    "misaligned": 0.08,
    "text_heavy": 0.04,
    "blurred": 0.04,
    "non_english": 0.04,
    "vague": 0.04,
    "low_resolution": 0.02,
    "extreme_aspect": 0.02,
    "off_task": 0.06,
    "rare": 0.01,
    "corrupt_image": 0.002,
    "empty_caption": 0.002,
}

# The demo's vocabulary (class names, synonyms, colours, caption templates, foreign phrases, brands, ...) is data:
# data/words.json. Lists load as tuples, as the generator uses them.
WORDS = _load_words()
FASHION_CLASSES = WORDS["FASHION_CLASSES"]
FASHION_SYNONYMS = WORDS["FASHION_SYNONYMS"]
DIGIT_WORDS = WORDS["DIGIT_WORDS"]
COLORS = WORDS["COLORS"]
BACKGROUNDS = WORDS["BACKGROUNDS"]
RARE_CAPTIONS = WORDS["RARE_CAPTIONS"]
OFF_TASK_CAPTIONS = WORDS["OFF_TASK_CAPTIONS"]
ENGLISH_TEMPLATES = WORDS["ENGLISH_TEMPLATES"]
DIGIT_TEMPLATES = WORDS["DIGIT_TEMPLATES"]
FOREIGN = WORDS["FOREIGN"]
BRANDS = WORDS["BRANDS"]
CLOTHING_SIZES = WORDS["CLOTHING_SIZES"]
SHOE_SIZES = WORDS["SHOE_SIZES"]
MATERIALS = WORDS["MATERIALS"]
MATERIALS_SHOES = WORDS["MATERIALS_SHOES"]
VAGUE_FIXED = WORDS["VAGUE_FIXED"]
BANNER_LINES = WORDS["BANNER_LINES"]
TASK_TEMPLATES_FASHION = WORDS["TASK_TEMPLATES_FASHION"]
TASK_TEMPLATES_DIGITS = WORDS["TASK_TEMPLATES_DIGITS"]
CATALOG_NAMES = WORDS["CATALOG_NAMES"]
CATALOG_TEMPLATES = WORDS["CATALOG_TEMPLATES"]
CATALOG_DIGIT_TEMPLATES = WORDS["CATALOG_DIGIT_TEMPLATES"]
COARSE_CATEGORIES = WORDS["COARSE_CATEGORIES"]
TASK_TEMPLATES_COARSE = WORDS["TASK_TEMPLATES_COARSE"]

CAPTION_STYLES = ("varied", "catalog")
# The task set written beside the pool: "demo" (fashion's 10 classes, digits, caption retrieval), "coarse" (garment
# categories top/bottom/dress/footwear/bag, names the captions never use, and product retrieval), "digits" (digit
# classification and digit caption retrieval only: the garments are off-task), "footwear" (sandal / sneaker / ankle
# boot classification and footwear caption retrieval: the other garments and the digits are off-task; with
# `task_class_share` the footwear is a minority of the pool).
TASK_PROFILES = ("demo", "coarse", "digits", "footwear")
FOOTWEAR = tuple(COARSE_CATEGORIES["footwear"])
FOOTWEAR_LABELS = [FASHION_CLASSES.index(c) for c in FOOTWEAR]  # their Fashion-MNIST label ids


@dataclass
class DemoConfig:
    """Size, seed and noise rates of the demo pool, and sizes of the held-out task sets."""

    n_samples: int = 10_000
    seed: int = 0
    shard_size: int = 1_000
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    digit_share: float = 0.12  # share of digit glyphs among garment/digit samples
    fashion_val: int = 500
    fashion_test: int = 1_000
    digits_val: int = 150
    digits_test: int = 300
    captions_val: int = 200
    captions_test: int = 500
    fashion_mnist_dir: str = str(FASHION_MNIST_DIR)
    # "varied": captions phrased freely with colour, background and listing details; "catalog": product titles from
    # a few templates (CATALOG_TEMPLATES x class: under 100 distinct clean captions however large the pool)
    caption_style: str = "varied"
    image_sides: tuple[int, ...] = ()  # square sides of the glyph samples' images; () = the demo's 96-192 px, any aspect
    task_profile: str = "demo"
    # share of the glyph draws (garments and digits) that are footwear, the rest of the garments drawn from the other
    # classes; 0: every garment class alike (Fashion-MNIST's own balance, 3 of 10 classes footwear)
    task_class_share: float = 0.0

    def __post_init__(self) -> None:
        self.image_sides = tuple(int(s) for s in self.image_sides)
        if self.caption_style not in CAPTION_STYLES:
            raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {self.caption_style!r}")
        if self.task_profile not in TASK_PROFILES:
            raise ValueError(f"task_profile must be one of {TASK_PROFILES}, got {self.task_profile!r}")
        if any(s < 16 for s in self.image_sides):
            raise ValueError(f"image_sides must be at least 16 px, got {self.image_sides}")
        if not 0.0 <= self.task_class_share < 1.0 - self.digit_share:
            raise ValueError(f"task_class_share must lie in [0, 1 - digit_share), got {self.task_class_share}")
        self._check_rates()

    def _check_rates(self) -> None:
        unknown = set(self.rates) - set(NOISE_KINDS) - set(BROKEN_KINDS)
        if unknown:
            raise ValueError(f"unknown noise kinds {sorted(unknown)}; known: {', '.join(NOISE_KINDS + BROKEN_KINDS)}")
        bad = {k: r for k, r in self.rates.items() if not 0.0 <= r <= 1.0}
        if bad:
            raise ValueError(f"noise rates must lie in [0, 1]: {bad}")
        if self.n_samples < 1 or self.shard_size < 1:
            raise ValueError("n_samples and shard_size must be positive")
        if self.kind_counts()[CLEAN] < 0:
            raise ValueError(f"noise rates add up to more than the pool: {self.rates}")

    def kind_counts(self) -> dict[str, int]:
        """Exact number of samples of each kind: round(rate * n) per noise kind, the rest clean."""
        counts = {k: int(round(self.rates.get(k, 0.0) * self.n_samples)) for k in (*NOISE_KINDS, *BROKEN_KINDS)}
        counts[CLEAN] = self.n_samples - sum(counts.values())
        return counts

    def to_json(self) -> dict:
        """The config as JSON types (tuples as lists), equal to what the manifest reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class ImageSources:
    fashion_train: np.ndarray  # (60000, 28, 28) uint8
    fashion_train_labels: np.ndarray
    fashion_test: np.ndarray  # (10000, 28, 28) uint8
    fashion_test_labels: np.ndarray
    digits: np.ndarray  # (1797, 8, 8) uint8
    digit_labels: np.ndarray
    photos: dict[str, np.ndarray]  # RGB uint8
    textures: dict[str, np.ndarray]  # gray uint8
    text_scans: dict[str, np.ndarray]  # gray uint8


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_sources(fashion_mnist_dir: str | Path = FASHION_MNIST_DIR) -> ImageSources:
    root = Path(fashion_mnist_dir)
    files = {n: root / f"{n}-ubyte.gz" for n in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install Debian's package with "
            "`apt-get install dataset-fashion-mnist` (the Makefile's setup does this) or point "
            "DemoConfig.fashion_mnist_dir at a folder holding the four *-ubyte.gz files."
        )
    from sklearn.datasets import load_digits
    import skimage.data as skd

    digits = load_digits()
    digit_imgs = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return ImageSources(
        fashion_train=_read_idx(files["train-images-idx3"]),
        fashion_train_labels=_read_idx(files["train-labels-idx1"]),
        fashion_test=_read_idx(files["t10k-images-idx3"]),
        fashion_test_labels=_read_idx(files["t10k-labels-idx1"]),
        digits=digit_imgs,
        digit_labels=digits.target.astype(np.uint8),
        photos={"cat": skd.chelsea(), "astronaut": skd.astronaut(), "coffee": skd.coffee(), "rocket": skd.rocket()},
        textures={"brick": skd.brick(), "grass": skd.grass(), "gravel": skd.gravel(), "moon": skd.moon()},
        text_scans={"text": skd.text(), "page": skd.page()},
    )


# --------------------------------------------------------------------------------------------- rendering


@dataclass
class GlyphSpec:
    """Everything needed to render one garment/digit sample again (near duplicates re-render it)."""

    source: str  # "fashion" | "digits"
    index: int  # index into the source split
    split: str  # "train" | "test" | "pool" | "heldout"
    label: str
    color: str
    background: str
    width: int
    height: int
    scale: float  # glyph side as a fraction of the canvas's short side
    cx: float  # glyph centre, fraction of width
    cy: float
    details: tuple[str, ...] = ()  # listing details (brand, size, price ...) that make captions specific


def _glyph_array(src: ImageSources, spec: GlyphSpec) -> np.ndarray:
    if spec.source == "fashion":
        return (src.fashion_train if spec.split == "train" else src.fashion_test)[spec.index]
    return src.digits[spec.index]


def _canvas(width: int, height: int, rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A backdrop of the named colour with what product photos have: a lighting gradient in a random
    direction, a faint pattern (fabric, paper, tiles) of its own scale and angle, sensor noise."""
    base = np.empty((height, width, 3), np.float32)
    base[:] = rgb
    yy, xx = _grid(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(angle) * xx / max(width, 1) + np.sin(angle) * yy / max(height, 1)) * rng.uniform(-24, 24))[..., None]
    texture = (_pattern(height, width, rng) - 0.5)[..., None] * rng.uniform(6, 22)
    noise = rng.normal(0.0, 3.0, size=(height, width, 1)).astype(np.float32)
    return base + ramp + texture + noise


PATTERNS = WORDS["PATTERNS"]


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates as a (height, 1) and a (1, width) float32 array: broadcast, they give every
    pixel the values np.mgrid would, without building two full grids per image (the generator's main cost)."""
    return (np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :])


def _pattern(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A periodic pattern in [0, 1] with a random kind, period, angle and phase (plain: all 0.5)."""
    kind = str(rng.choice(PATTERNS))
    if kind == "plain":
        return np.full((height, width), 0.5, np.float32)
    yy, xx = _grid(height, width)
    period = rng.uniform(4.0, 14.0)
    a = rng.uniform(0, np.pi)
    u = (np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    v = (-np.sin(a) * xx + np.cos(a) * yy) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        out = (np.sin(u) > 0).astype(np.float32)
    elif kind == "checks":
        out = ((np.sin(u) > 0) ^ (np.sin(v) > 0)).astype(np.float32)
    elif kind == "dots":
        out = ((np.cos(u) + np.cos(v)) > 1.2).astype(np.float32)
    else:
        out = 0.5 + 0.5 * np.sin(u + 1.5 * np.sin(v / 2))
    return out.astype(np.float32)


def render_glyph(src: ImageSources, spec: GlyphSpec, rng: np.random.Generator) -> Image.Image:
    glyph = _glyph_array(src, spec)
    side = max(4, int(round(min(spec.width, spec.height) * spec.scale)))
    alpha = np.asarray(Image.fromarray(glyph).resize((side, side), Image.BICUBIC), np.float32) / 255.0
    canvas = _canvas(spec.width, spec.height, BACKGROUNDS[spec.background], rng)
    x0 = int(round(spec.cx * spec.width - side / 2))
    y0 = int(round(spec.cy * spec.height - side / 2))
    # Clip the glyph box to the canvas.
    gx0, gy0 = max(0, -x0), max(0, -y0)
    cx0, cy0 = max(0, x0), max(0, y0)
    w = min(side - gx0, spec.width - cx0)
    h = min(side - gy0, spec.height - cy0)
    if w > 0 and h > 0:
        a = alpha[gy0 : gy0 + h, gx0 : gx0 + w, None]
        # the named colour, shaded by the item's own print (stripes, checks ...) as real garments are
        shade = 1.0 + (_pattern(h, w, rng)[..., None] - 0.5) * rng.uniform(0.15, 0.45)
        fg = np.asarray(COLORS[spec.color], np.float32) * shade
        region = canvas[cy0 : cy0 + h, cx0 : cx0 + w]
        canvas[cy0 : cy0 + h, cx0 : cx0 + w] = region * (1.0 - a) + fg * a
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def _crop_photo(arr: np.ndarray, rng: np.random.Generator, out_wh: tuple[int, int], tint: bool,
                flip: bool = True) -> Image.Image:
    img = Image.fromarray(arr if arr.ndim == 3 else arr).convert("RGB")
    w, h = img.size
    frac = rng.uniform(0.55, 0.95)
    cw, ch = int(w * frac), int(h * frac)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(out_wh, Image.BILINEAR)
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if tint:
        gain = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).astype(np.uint8))
    return img


def _banner(src: ImageSources, rng: np.random.Generator, product: str) -> tuple[Image.Image, str]:
    """An image dominated by rendered text (a sale banner) or a crop of a scanned text page."""
    if rng.random() < 0.3:
        name = str(rng.choice(sorted(src.text_scans)))
        img = _crop_photo(src.text_scans[name], rng, (int(rng.integers(160, 257)), int(rng.integers(96, 161))), False, flip=False)
        return img, str(rng.choice(("scanned page of a document", "screenshot of a text document", "page of text")))
    w, h = int(rng.integers(160, 257)), int(rng.integers(96, 161))
    bg = BACKGROUNDS[str(rng.choice(sorted(BACKGROUNDS)))]
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    ink = (245, 245, 245) if sum(bg) < 300 else (20, 20, 20)
    lines = BANNER_LINES[int(rng.integers(len(BANNER_LINES)))]
    size = int(h * 0.36)
    font = ImageFont.load_default(size=size)
    for i, line in enumerate(lines):
        draw.text((int(w * 0.05), int(h * 0.06) + i * int(size * 1.1)), line, fill=ink, font=font)
    caption = f"{' '.join(lines).title()} on all {product}s this weekend"
    return img, caption


def _encode(img: Image.Image, rng: np.random.Generator, fmt: str | None = None, quality: int | None = None) -> tuple[bytes, str]:
    fmt = fmt or ("png" if rng.random() < 0.15 else "jpg")
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=int(quality or rng.integers(70, 96)))
    return buf.getvalue(), fmt


# ---------------------------------------------------------------------------------------------- captions


def english_caption(spec: GlyphSpec, rng: np.random.Generator, avoid: str | None = None) -> str:
    for _ in range(8):
        if spec.source == "fashion":
            thing = str(rng.choice(FASHION_SYNONYMS[spec.label]))
            tpl = str(rng.choice(ENGLISH_TEMPLATES))
            text = tpl.format(color=spec.color, Color=spec.color.capitalize(), thing=thing, bg=spec.background)
        else:
            d = int(spec.label)
            tpl = str(rng.choice(DIGIT_TEMPLATES))
            text = tpl.format(color=spec.color, Color=spec.color.capitalize(), d=d, word=DIGIT_WORDS[d], bg=spec.background)
        if spec.details:
            text += str(rng.choice((" - ", ", ", " | ", "; "))) + ", ".join(spec.details)
        text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
        if text != avoid:
            return text
    return text


def catalog_caption(spec: GlyphSpec, rng: np.random.Generator, avoid: str | None = None) -> str:
    """A product title from a few fixed templates and the class's one catalogue name: many images, few captions."""
    for _ in range(8):
        if spec.source == "fashion":
            text = str(rng.choice(CATALOG_TEMPLATES)).format(name=CATALOG_NAMES[spec.label])
        else:
            text = str(rng.choice(CATALOG_DIGIT_TEMPLATES)).format(d=spec.label)
        if text != avoid:
            return text
    return text


def caption_of(spec: GlyphSpec, style: str, rng: np.random.Generator, avoid: str | None = None) -> str:
    """The English caption of a glyph sample in the pool's caption style."""
    return (catalog_caption if style == "catalog" else english_caption)(spec, rng, avoid)


REPOST_TAGS = WORDS["REPOST_TAGS"]
REPOST_PREFIXES = WORDS["REPOST_PREFIXES"]
PARAPHRASED_REPOSTS = 0.35  # share of near duplicates whose caption is rewritten rather than lightly edited


def repost_caption(caption: str, spec: GlyphSpec, rng: np.random.Generator, style: str = "varied") -> str:
    """The caption a re-post of a listing carries: usually the original lightly edited (case, separator,
    a detail dropped, a tag or prefix added, as mirrors and re-pins do); otherwise a paraphrase that keeps
    the listing details. Never the original caption itself."""
    if rng.random() < PARAPHRASED_REPOSTS:
        return caption_of(spec, style, rng, avoid=caption)
    text = caption
    details = ", ".join(spec.details)
    edits = ["case", "separator", "tag", "prefix", "period"] + (["drop"] if len(spec.details) > 1 else [])
    for edit in rng.choice(edits, size=int(rng.integers(1, 3)), replace=False):
        if edit == "case":
            text = text[0].swapcase() + text[1:] if rng.random() < 0.6 else text.lower()
        elif edit == "separator" and details and text.endswith(details):
            head = text[: -len(details)].rstrip(" -,|;")
            text = head + str(rng.choice((" - ", ", ", " | ", "; ", " / "))) + details
        elif edit == "drop" and text.endswith(details):
            keep = [d for i, d in enumerate(spec.details) if i != int(rng.integers(len(spec.details)))]
            text = text[: -len(details)] + ", ".join(keep)
        elif edit == "tag":
            text += str(rng.choice(REPOST_TAGS))
        elif edit == "prefix":
            text = str(rng.choice(REPOST_PREFIXES)) + text
        elif edit == "period":
            text = text.rstrip(".!") + "."
    return text if text != caption else caption + "."


def repost_image(data: bytes, rng: np.random.Generator) -> Image.Image:
    """A re-posted copy of an image: trimmed by up to 5 % per side, often rescaled, brightness and contrast
    nudged, then re-encoded by the caller (new bytes, new hash, the same picture)."""
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    w, h = img.size
    box = (int(w * rng.uniform(0, 0.05)), int(h * rng.uniform(0, 0.05)),
           w - int(w * rng.uniform(0, 0.05)), h - int(h * rng.uniform(0, 0.05)))
    img = img.crop(box)
    if rng.random() < 0.6:
        f = float(rng.uniform(0.75, 1.0))
        img = img.resize((max(16, int(img.width * f)), max(16, int(img.height * f))), Image.BILINEAR)
    arr = np.asarray(img, np.float32)
    arr = (arr - arr.mean()) * rng.uniform(0.94, 1.06) + arr.mean() + rng.uniform(-8, 8)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def foreign_caption(spec: GlyphSpec, lang: str, rng: np.random.Generator) -> str:
    table = FOREIGN[lang]
    if spec.source == "fashion":
        tpl = str(rng.choice(table["fashion"]))
        return tpl.format(thing=table["things"][spec.label], color=table["colors"][spec.color], bg=table["bgs"][spec.background])
    tpl = str(rng.choice(table["digits"]))
    return tpl.format(d=spec.label, color=table["colors"][spec.color], bg=table["bgs"][spec.background])


def vague_caption(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.35:
        return str(rng.choice(VAGUE_FIXED))
    if r < 0.65:
        stem = str(rng.choice(("IMG_", "DSC", "DSC_", "image-", "photo_", "P")))
        return f"{stem}{int(rng.integers(0, 100000)):04d}.{rng.choice(('jpg', 'JPG', 'jpeg', 'png'))}"
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    vowels = np.array(list("aeiouy"))
    words = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(2, 4))
        words.append("".join(str(rng.choice(letters)) + str(rng.choice(vowels)) for _ in range(n)))
    return " ".join(words)


# ------------------------------------------------------------------------------------------ the generator


class _GlyphPool:
    """Draws glyph specs for pool samples: garments from the train split, digits from the pool part."""

    def __init__(self, src: ImageSources, pool_digit_idx: np.ndarray, digit_share: float, rng: np.random.Generator,
                 image_sides: tuple[int, ...] = (), details: bool = True, footwear_share: float = 0.0):
        self.src, self.rng, self.digit_share, self.footwear_share = src, rng, digit_share, footwear_share
        self.image_sides, self.details = image_sides, details
        self.fashion_order = rng.permutation(len(src.fashion_train))
        self.digit_order = pool_digit_idx
        self.f_next = 0
        self.d_next = 0
        if footwear_share:  # two queues over the same permutation: footwear, and every other garment
            shoe = np.isin(src.fashion_train_labels[self.fashion_order], FOOTWEAR_LABELS)
            self.queues = {True: self.fashion_order[shoe], False: self.fashion_order[~shoe]}
            self.q_next = {True: 0, False: 0}

    def draw(self, width_height: tuple[int, int] | None = None, scale: float | None = None) -> GlyphSpec:
        rng = self.rng
        u = rng.random()
        if u < self.digit_share:
            idx = int(self.digit_order[self.d_next % len(self.digit_order)])
            self.d_next += 1
            source, split, label = "digits", "pool", str(int(self.src.digit_labels[idx]))
        else:
            if self.footwear_share:
                shoe = u < self.digit_share + self.footwear_share
                queue = self.queues[shoe]
                idx = int(queue[self.q_next[shoe] % len(queue)])
                self.q_next[shoe] += 1
            else:
                idx = int(self.fashion_order[self.f_next % len(self.fashion_order)])
                self.f_next += 1
            source, split, label = "fashion", "train", FASHION_CLASSES[int(self.src.fashion_train_labels[idx])]
        if width_height is None and self.image_sides:
            side = int(rng.choice(self.image_sides))
            width_height = (side, side)
            scale = scale if scale is not None else float(rng.uniform(0.75, 0.95))  # a catalogue's centred item
        spec = random_spec(source, idx, split, label, rng, width_height, scale)
        return spec if self.details else dataclasses.replace(spec, details=())


def random_spec(source: str, idx: int, split: str, label: str, rng: np.random.Generator,
                width_height: tuple[int, int] | None = None, scale: float | None = None) -> GlyphSpec:
    bg = str(rng.choice(sorted(BACKGROUNDS)))
    colors = [c for c in sorted(COLORS) if np.abs(np.subtract(COLORS[c], BACKGROUNDS[bg])).sum() > 180]
    color = str(rng.choice(colors))
    if width_height is None:
        side = int(rng.choice((96, 112, 128, 144, 160, 192)))
        aspect = float(rng.uniform(0.75, 1.34))
        width_height = (side, max(16, int(round(side / aspect))))
    w, h = width_height
    scale = scale if scale is not None else float(rng.uniform(0.55, 0.9))
    margin = scale * min(w, h) / 2
    cx = float(rng.uniform(margin, w - margin)) / w if w > 2 * margin else 0.5
    cy = float(rng.uniform(margin, h - margin)) / h if h > 2 * margin else 0.5
    return GlyphSpec(source, idx, split, label, color, bg, w, h, scale, cx, cy, listing_details(source, label, rng))


def listing_details(source: str, label: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Specifics a web caption carries (brand, size, price; sheet and row for scans): 0 to 3 of them."""
    if source == "fashion":
        shoe = label in ("sandal", "sneaker", "ankle boot")
        pool = (
            str(rng.choice(BRANDS)),
            f"size {rng.choice(SHOE_SIZES if shoe else CLOTHING_SIZES)}",
            f"${int(rng.integers(9, 200))}.{int(rng.choice((0, 49, 95, 99))):02d}",
            str(rng.choice(MATERIALS_SHOES if shoe else MATERIALS)),
            f"item {int(rng.integers(1000, 99999))}",
        )
    else:
        pool = (f"sheet {int(rng.integers(1, 400))}", f"row {int(rng.integers(1, 30))}",
                f"writer {int(rng.integers(1, 500))}", str(rng.choice(("pencil", "ballpoint", "marker", "fountain pen"))))
    k = int(rng.integers(1, 4))
    return tuple(pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False)))


def _url(rng: np.random.Generator, ext: str) -> str:
    host = str(rng.choice(("shop", "cdn", "img", "static", "media", "photos", "blog", "store")))
    return f"https://{host}{int(rng.integers(1, 500))}.example.com/{int(rng.integers(1, 10**12)):012x}.{ext}"


@dataclass
class _Sample:
    uid: str
    kind: str
    source: str
    label: str | None
    color: str | None
    background: str | None
    lang: str
    caption: str
    image: bytes
    ext: str
    url: str
    duplicate_of: str | None = None
    source_split: str | None = None
    source_index: int | None = None
    spec: GlyphSpec | None = None  # how a garment/digit sample was rendered


def _make_samples(config: DemoConfig, src: ImageSources, rng: np.random.Generator) -> list[_Sample]:
    counts = config.kind_counts()
    kinds = [k for k, c in counts.items() for _ in range(c)]
    # Duplicates are made from clean samples after those exist, so generate them last.
    first = [k for k in kinds if k not in ("exact_duplicate", "near_duplicate")]
    order = [first[i] for i in rng.permutation(len(first))] + [k for k in kinds if k not in first]
    glyphs = _GlyphPool(src, _pool_digit_indices(config, src), config.digit_share, rng, config.image_sides,
                        details=config.caption_style != "catalog", footwear_share=config.task_class_share)

    samples: list[_Sample] = []
    clean_specs: list[tuple[int, GlyphSpec]] = []  # (position in samples, spec) of clean samples
    for kind in order:
        samples.append(_make_one(kind, config, src, glyphs, rng, samples, clean_specs))
        if kind == CLEAN:
            clean_specs.append((len(samples) - 1, samples[-1].spec))

    # Shuffle, then number the samples in their new order (img2dataset-style 9-digit keys).
    perm = rng.permutation(len(samples))
    shuffled = [samples[i] for i in perm]
    uid_of_position = {int(old_pos): f"{new_pos:09d}" for new_pos, old_pos in enumerate(perm)}
    for old_pos, s in enumerate(samples):
        s.uid = uid_of_position[old_pos]
    for s in samples:
        if s.duplicate_of is not None:
            s.duplicate_of = uid_of_position[int(s.duplicate_of)]
    return shuffled


def _caption_digit_share(config: DemoConfig) -> float:
    """Share of digits among the caption-retrieval sets: the pool's in the demo, all of them when the task set is
    about digits only, none when it is about garments only."""
    return {"demo": config.digit_share, "coarse": 0.0, "digits": 1.0, "footwear": 0.0}[config.task_profile]


def _digit_share_of_captions(config: DemoConfig) -> int:
    return int(round((config.captions_val + config.captions_test) * _caption_digit_share(config)))


def _make_one(kind: str, config: DemoConfig, src: ImageSources, glyphs: _GlyphPool, rng: np.random.Generator,
              samples: list[_Sample], clean_specs: list[tuple[int, GlyphSpec]]) -> _Sample:
    def from_spec(spec: GlyphSpec, img: Image.Image, caption: str, lang: str = "en", **kw) -> _Sample:
        data, ext = _encode(img, rng)
        return _Sample("", kind, spec.source, spec.label, spec.color, spec.background, lang, caption, data, ext,
                       _url(rng, ext), source_split=spec.split, source_index=spec.index, spec=spec, **kw)

    if kind in ("exact_duplicate", "near_duplicate"):
        if not clean_specs:
            raise ValueError("duplicates need at least one clean sample; lower the noise rates")
        pos, spec = clean_specs[int(rng.integers(len(clean_specs)))]
        orig = samples[pos]
        if kind == "exact_duplicate":
            return dataclasses.replace(orig, kind=kind, duplicate_of=str(pos))
        img = repost_image(orig.image, rng)
        data, ext = _encode(img, rng, fmt="jpg", quality=int(rng.integers(55, 86)))
        return _Sample("", kind, spec.source, spec.label, spec.color, spec.background, "en",
                       repost_caption(orig.caption, spec, rng, config.caption_style), data, ext, _url(rng, ext),
                       duplicate_of=str(pos), source_split=spec.split, source_index=spec.index)

    if kind == "rare":
        concept = str(rng.choice(sorted(src.photos)))
        side = int(rng.choice((128, 160, 192)))
        img = _crop_photo(src.photos[concept], rng, (side, int(side * rng.uniform(0.75, 1.0))), True)
        data, ext = _encode(img, rng)
        return _Sample("", kind, "photo", concept, None, None, "en", str(rng.choice(RARE_CAPTIONS[concept])), data, ext, _url(rng, ext))
    if kind == "off_task":
        name = str(rng.choice(sorted(src.textures)))
        side = int(rng.choice((112, 128, 160, 192)))
        img = _crop_photo(src.textures[name], rng, (side, side), True)
        data, ext = _encode(img, rng)
        return _Sample("", kind, "texture", name, None, None, "en", str(rng.choice(OFF_TASK_CAPTIONS[name])), data, ext, _url(rng, ext))
    if kind == "text_heavy":
        spec = glyphs.draw()
        product = spec.label if spec.source == "fashion" else "printable worksheet"
        img, caption = _banner(src, rng, product)
        data, ext = _encode(img, rng)
        return _Sample("", kind, "banner", None, None, None, "en", caption, data, ext, _url(rng, ext))

    if kind == "low_resolution":
        side = int(rng.integers(10, 25))
        spec = glyphs.draw(width_height=(side, side))
    elif kind == "extreme_aspect":
        long, short = int(rng.integers(320, 481)), int(rng.integers(32, 49))
        wh = (long, short) if rng.random() < 0.5 else (short, long)
        spec = glyphs.draw(width_height=wh, scale=0.9)
    else:
        spec = glyphs.draw()
    img = render_glyph(src, spec, rng)

    if kind == "blurred":
        img = img.filter(ImageFilter.GaussianBlur(radius=min(spec.width, spec.height) * float(rng.uniform(0.035, 0.06))))
    if kind == "non_english":
        lang = str(rng.choice(sorted(FOREIGN)))
        return from_spec(spec, img, foreign_caption(spec, lang, rng), lang=lang)
    if kind == "vague":
        return from_spec(spec, img, vague_caption(rng), lang="none")
    if kind == "misaligned":
        other = glyphs.draw()
        while other.label == spec.label:
            other = glyphs.draw()
        return from_spec(spec, img, caption_of(other, config.caption_style, rng))
    if kind == "empty_caption":
        return from_spec(spec, img, str(rng.choice(("", " ", "\n", "\t "))), lang="none")
    s = from_spec(spec, img, caption_of(spec, config.caption_style, rng))
    if kind == "corrupt_image":
        r = rng.random()
        if r < 0.4:
            s.image = s.image[: max(16, len(s.image) // 3)]  # truncated transfer
        elif r < 0.7:
            s.image = rng.bytes(len(s.image))  # garbage (an HTML error page saved as .jpg, say)
        else:
            s.image = b""  # zero-byte file
    return s


# --------------------------------------------------------------------------------------------- task sets


def _heldout_specs(config: DemoConfig, src: ImageSources, rng: np.random.Generator) -> dict[str, list[GlyphSpec]]:
    """Glyph specs of the held-out sets. Garments come from Fashion-MNIST's test split only."""
    fashion = rng.permutation(len(src.fashion_test))
    if config.task_profile == "footwear":  # every held-out set is about footwear only
        fashion = fashion[np.isin(src.fashion_test_labels[fashion], FOOTWEAR_LABELS)]
    digits = _heldout_digit_order(config, src)
    fv, ft = config.fashion_val, config.fashion_test
    cap_digits = _digit_share_of_captions(config)
    cv_d = int(round(config.captions_val * _caption_digit_share(config)))
    out: dict[str, list[GlyphSpec]] = {}

    def fspec(i: int) -> GlyphSpec:
        return random_spec("fashion", int(i), "test", FASHION_CLASSES[int(src.fashion_test_labels[i])], rng)

    def dspec(i: int) -> GlyphSpec:
        return random_spec("digits", int(i), "heldout", str(int(src.digit_labels[i])), rng)

    if fv + ft + config.captions_val + config.captions_test > len(fashion):
        raise ValueError(f"held-out set sizes exceed the {len(fashion)} Fashion-MNIST test images they draw from")
    out["fashion_val"] = [fspec(i) for i in fashion[:fv]]
    out["fashion_test"] = [fspec(i) for i in fashion[fv : fv + ft]]
    dv, dt = config.digits_val, config.digits_test
    out["digits_val"] = [dspec(i) for i in digits[:dv]]
    out["digits_test"] = [dspec(i) for i in digits[dv : dv + dt]]
    cap_d = digits[dv + dt : dv + dt + cap_digits]
    cf = fashion[fv + ft :]
    n_cv_f = config.captions_val - cv_d
    n_ct_f = config.captions_test - (cap_digits - cv_d)
    out["captions_val"] = [fspec(i) for i in cf[:n_cv_f]] + [dspec(i) for i in cap_d[:cv_d]]
    out["captions_test"] = [fspec(i) for i in cf[n_cv_f : n_cv_f + n_ct_f]] + [dspec(i) for i in cap_d[cv_d:]]
    return out


def _heldout_digit_order(config: DemoConfig, src: ImageSources) -> np.ndarray:
    rng = np.random.default_rng([config.seed, 7])
    return rng.permutation(len(src.digits))


def _write_tar(path: Path, members: Iterator[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def coarse_category(label: str) -> str:
    """A Fashion-MNIST class's coarse category (COARSE_CATEGORIES: top, bottom, dress, footwear, bag)."""
    return next(cat for cat, members in COARSE_CATEGORIES.items() if label in members)


def _task_members(specs: list[GlyphSpec], src: ImageSources, rng: np.random.Generator, prefix: str,
                  classes: tuple[str, ...] | None, config: DemoConfig,
                  class_of=lambda label: label) -> Iterator[tuple[str, bytes]]:
    for i, spec in enumerate(specs):
        key = f"{prefix}{i:06d}"
        if config.image_sides:  # held-out images look like the pool's
            side = int(rng.choice(config.image_sides))
            spec = dataclasses.replace(spec, width=side, height=side, scale=float(rng.uniform(0.75, 0.95)), cx=0.5, cy=0.5)
        if config.caption_style == "catalog":
            spec = dataclasses.replace(spec, details=())
        data, ext = _encode(render_glyph(src, spec, rng), rng, fmt="jpg", quality=90)
        yield f"{key}.{ext}", data
        yield f"{key}.txt", caption_of(spec, config.caption_style, rng).encode()
        meta = {"label": spec.label, "source": spec.source, "split": spec.split, "index": spec.index,
                "color": spec.color, "background": spec.background}
        if classes is not None:
            yield f"{key}.cls", str(classes.index(class_of(spec.label))).encode()
        yield f"{key}.json", json.dumps(meta).encode()


def _rare_members(n: int, src: ImageSources, rng: np.random.Generator, prefix: str) -> Iterator[tuple[str, bytes]]:
    for i in range(n):
        concept = str(rng.choice(sorted(src.photos)))
        data, ext = _encode(_crop_photo(src.photos[concept], rng, (160, 128), True), rng, fmt="jpg", quality=90)
        yield f"{prefix}{i:06d}.{ext}", data
        yield f"{prefix}{i:06d}.txt", str(rng.choice(RARE_CAPTIONS[concept])).encode()
        yield f"{prefix}{i:06d}.json", json.dumps({"label": concept, "source": "photo"}).encode()


def write_task_sets(out: Path, config: DemoConfig, src: ImageSources) -> dict:
    """The task set of `config.task_profile` (TASK_PROFILES) with its validation and test shards, and tasks.yaml."""
    rng = np.random.default_rng([config.seed, 11])
    specs = _heldout_specs(config, src, rng)
    digit_classes = tuple(str(d) for d in range(10))
    coarse_classes = tuple(COARSE_CATEGORIES)
    profile = config.task_profile
    n_rare = ({"val": max(1, config.captions_val // 40), "test": max(1, config.captions_test // 40)}
              if profile == "demo" else {"val": 0, "test": 0})
    for split in ("val", "test"):
        if profile == "demo":
            _write_tar(out / split / "fashion.tar",
                       _task_members(specs[f"fashion_{split}"], src, rng, f"f{split}", FASHION_CLASSES, config))
        if profile == "footwear":
            _write_tar(out / split / "footwear.tar",
                       _task_members(specs[f"fashion_{split}"], src, rng, f"f{split}", FOOTWEAR, config))
        if profile == "coarse":
            _write_tar(out / split / "garment_category.tar",
                       _task_members(specs[f"fashion_{split}"], src, rng, f"f{split}", coarse_classes, config,
                                     class_of=coarse_category))
        if profile in ("demo", "digits"):
            _write_tar(out / split / "digits.tar",
                       _task_members(specs[f"digits_{split}"], src, rng, f"d{split}", digit_classes, config))

        def captions(split: str = split) -> Iterator[tuple[str, bytes]]:
            yield from _task_members(specs[f"captions_{split}"], src, rng, f"c{split}", None, config)
            yield from _rare_members(n_rare[split], src, rng, f"r{split}")

        _write_tar(out / split / "captions.tar", captions())

    def classification(name: str, classes, templates) -> dict:
        return {"name": name, "kind": "classification", "classes": list(classes), "templates": list(templates),
                "weight": 1.0, "validation": f"webdataset:val/{name}.tar", "test": f"webdataset:test/{name}.tar"}

    listed = {"demo": [classification("fashion", FASHION_CLASSES, TASK_TEMPLATES_FASHION),
                       classification("digits", digit_classes, TASK_TEMPLATES_DIGITS)],
              "coarse": [classification("garment_category", coarse_classes, TASK_TEMPLATES_COARSE)],
              "digits": [classification("digits", digit_classes, TASK_TEMPLATES_DIGITS)],
              "footwear": [classification("footwear", FOOTWEAR, TASK_TEMPLATES_FASHION)]}[profile]
    retrieval = {"demo": "captions", "coarse": "products", "digits": "digit_captions",
                 "footwear": "footwear_captions"}[profile]
    listed.append({"name": retrieval, "kind": "retrieval", "templates": ["{}"], "weight": 1.0,
                   "validation": "webdataset:val/captions.tar", "test": "webdataset:test/captions.tar"})
    (out / "tasks.yaml").write_text(
        ("# The demo task set" if profile == "demo" else f"# The {profile} task set of a generated pool")
        + ". Paths are relative to this file's folder.\n"
        + yaml.safe_dump({"tasks": listed}, sort_keys=False)
    )
    keep = {"demo": ("fashion", "digits", "captions"), "coarse": ("fashion", "captions"),
            "digits": ("digits", "captions"), "footwear": ("fashion", "captions")}[profile]
    sizes = {k: len(v) for k, v in specs.items() if k.rsplit("_", 1)[0] in keep}
    sizes["captions_val"] += n_rare["val"]
    sizes["captions_test"] += n_rare["test"]
    return sizes


def generate_demo_pool(out_dir: str | Path, config: DemoConfig | None = None) -> dict:
    """Render the demo pool, its truth table and its task set into `out_dir` (replaced atomically)."""
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    src = load_sources(config.fashion_mnist_dir)
    rng = np.random.default_rng(config.seed)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    # The held-out digits are fixed by the seed alone, so pool and task sets agree on them.
    samples = _make_samples(config, src, rng)
    log.info("demo pool: rendered %d samples in %.1fs", len(samples), time.perf_counter() - t0)

    n_shards = (len(samples) + config.shard_size - 1) // config.shard_size
    for shard in range(n_shards):
        chunk = samples[shard * config.shard_size : (shard + 1) * config.shard_size]

        def members(chunk: list[_Sample] = chunk) -> Iterator[tuple[str, bytes]]:
            for s in chunk:
                yield f"{s.uid}.{s.ext}", s.image
                yield f"{s.uid}.txt", s.caption.encode("utf-8")
                yield f"{s.uid}.json", json.dumps({"url": s.url}).encode()

        _write_tar(staging / "pool" / f"{shard:05d}.tar", members())
    truth = pl.DataFrame(
        {
            "uid": [s.uid for s in samples],
            "kind": [s.kind for s in samples],
            "source": [s.source for s in samples],
            "label": [s.label for s in samples],
            "color": [s.color for s in samples],
            "background": [s.background for s in samples],
            "lang": [s.lang for s in samples],
            "caption": [s.caption for s in samples],
            "url": [s.url for s in samples],
            "duplicate_of": [s.duplicate_of for s in samples],
            "source_split": [s.source_split for s in samples],
            "source_index": [s.source_index for s in samples],
            "shard": [i // config.shard_size for i in range(len(samples))],
        },
        schema_overrides={"source_index": pl.Int64},
    )
    write_parquet_atomic(truth, staging / "truth.parquet")
    task_sizes = write_task_sets(staging, config, src)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "config": config.to_json(),
        "n_samples": len(samples),
        "n_shards": n_shards,
        "kind_counts": dict(sorted(Counter(s.kind for s in samples).items())),
        "task_set_sizes": task_sizes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(manifest, staging / "manifest.json")
    replace_dir(staging, out_dir)
    log.info("demo pool: %d samples in %d shards, task sets %s, %.1fs -> %s",
             len(samples), n_shards, task_sizes, manifest["seconds"], out_dir)
    return manifest


def _pool_digit_indices(config: DemoConfig, src: ImageSources) -> np.ndarray:
    """Digits the pool may use: all but the held-out ones (fixed by the seed, shared with the task sets)."""
    order = _heldout_digit_order(config, src)
    n_heldout = config.digits_val + config.digits_test + _digit_share_of_captions(config)
    if n_heldout >= len(order):
        raise ValueError(f"held-out digit sets ({n_heldout}) leave none of the {len(order)} digits for the pool")
    return order[n_heldout:]


def ensure_demo_pool(out_dir: str | Path, config: DemoConfig | None = None) -> dict:
    """Generate the demo pool into `out_dir` unless one made with the same config is already there. Safe
    across processes: Dagster's multiprocess executor runs raw_pool and task_set at once on a fresh home,
    and both ask for the pool; an exclusive lock beside `out_dir` lets one generate while the other waits
    and then finds it made."""
    import fcntl

    config = config or DemoConfig()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_path = out_dir / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if (manifest.get("config") == json.loads(json.dumps(config.to_json()))
                    and manifest.get("generator_version") == GENERATOR_VERSION):
                return manifest
            log.info("demo pool at %s was made with another config or generator; regenerating", out_dir)
        return generate_demo_pool(out_dir, config)


def demo_shard_pattern(out_dir: str | Path, manifest: dict) -> str:
    """The `webdataset:` source spec of a generated demo pool."""
    last = manifest["n_shards"] - 1
    return f"webdataset:{Path(out_dir).resolve()}/pool/{{00000..{last:05d}}}.tar"
