"""Throughput of each §3.2.1 operator on this machine, over the demo pool's images and captions.

    make demo
    .venv/bin/python benchmarks/operators_throughput.py [--home .tads] [--n 2000] [--repeats 3]

Prints samples/s per operator (median over repeats) on a sample of the raw pool, and the OCR stage's
rate over the whole sample: pre-filter on every image, Tesseract only where the pre-filter lets it run,
with the configured number of parallel Tesseract calls, each reading a sheet of several images. Targets (issue): cheap image operators
>= 1,000 img/s; OCR stage >= 30 img/s over the whole pool. Also prints how often the pre-filter lets
the demo's text-heavy images through (its recall) against how much of the rest it passes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_truth, home  # noqa: E402

from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.method import operators as op  # noqa: E402


def rate(n: int, fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    h = home(args.home)
    cat = Catalog(h)
    try:
        files = cat.raw_pool.parts()
    except FileNotFoundError:
        raise SystemExit(f"no raw_pool under {h}: run `make demo` first") from None
    raw = pl.concat([pl.read_parquet(f, columns=["uid", "caption", "bytes"]) for f in files])
    truth_path = demo_truth(cat)
    if truth_path.exists():
        raw = raw.join(pl.read_parquet(truth_path).select("uid", "kind"), on="uid", how="left")
    sample = raw.sample(min(args.n, raw.height), seed=0)
    blobs, captions = sample["bytes"].to_list(), sample["caption"].to_list()
    n = len(blobs)
    params = op.OperatorParams()
    images = [op.decode(b) for b in blobs]
    lid = op.LanguageId()
    print(f"{n} samples from {h}, median of {args.repeats} repeats")
    results = {
        "decode (JPEG/PNG -> RGB)": rate(n, lambda: [op.decode(b) for b in blobs], args.repeats),
        "resolution + aspect ratio": rate(n, lambda: [(im.size, max(im.size) / min(im.size)) for im in images], args.repeats),
        "Laplacian variance (blur)": rate(n, lambda: [op.laplacian_variance(im) for im in images], args.repeats),
        "OCR pre-filter (text likelihood)": rate(n, lambda: [op.text_likelihood(im) for im in images], args.repeats),
        "cheap image operators, decode included": rate(n, lambda: [op.image_features(op.decode(b)) for b in blobs], args.repeats),
        "fastText language id": rate(n, lambda: lid.predict(captions), args.repeats),
        "caption length + noun phrases": rate(n, lambda: [(op.caption_features(c), op.noun_phrases(c)) for c in captions], args.repeats),
    }
    likelihood = np.array([op.text_likelihood(im) for im in images])
    todo = np.flatnonzero(likelihood >= params.ocr_min_text_likelihood)
    batches = [todo[j : j + params.ocr_batch] for j in range(0, len(todo), params.ocr_batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=params.ocr_workers) as pool:
        list(pool.map(lambda b: op.tesseract_ocr_batch([images[i] for i in b]), batches))
    ocr_s = time.perf_counter() - t0
    few = [images[i] for i in todo[:48]]
    t0 = time.perf_counter()
    for im in few:
        op.tesseract_ocr(im)
    single = len(few) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for j in range(0, len(few), params.ocr_batch):
        op.tesseract_ocr_batch(few[j : j + params.ocr_batch])
    batched = len(few) / (time.perf_counter() - t0)
    for name, r in results.items():
        print(f"{name:<42} {r:>10,.0f} samples/s")
    print(f"{'Tesseract, one image per call':<42} {single:>10,.1f} img/s")
    print(f"{'Tesseract, ' + str(params.ocr_batch) + ' images per call (one sheet)':<42} {batched:>10,.1f} img/s")
    stage = n / (ocr_s + n / results["OCR pre-filter (text likelihood)"])
    print(f"{'OCR stage (pre-filter + Tesseract x' + str(params.ocr_workers) + ')':<42} {stage:>10,.1f} img/s over the "
          f"whole sample; OCR ran on {len(todo)} ({len(todo) / n:.1%}), skipped {n - len(todo)}")
    cheap = results["cheap image operators, decode included"]
    print(f"targets: cheap image operators >= 1,000 img/s: {'met' if cheap >= 1000 else 'NOT met'} ({cheap:,.0f}); "
          f"OCR stage >= 30 img/s: {'met' if stage >= 30 else 'NOT met'} ({stage:,.1f})")
    if "kind" in sample.columns:
        kinds = sample["kind"].to_numpy()
        passed = likelihood >= params.ocr_min_text_likelihood
        th = kinds == "text_heavy"
        print(f"pre-filter lets through {passed[th].mean():.1%} of text_heavy images ({th.sum()}) "
              f"and {passed[~th].mean():.1%} of the others")


if __name__ == "__main__":
    main()
