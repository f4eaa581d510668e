"""Deduplication time at 10k, 100k and 1M rows of synthetic embeddings with planted duplicates.

    .venv/bin/python benchmarks/dedup_scale.py [--sizes 10000 100000 1000000] [--dim 256]

Each size: random unit image/text vectors (dim each, joint 2*dim) and random captions; 2 % exact
duplicates (same hash), 2 % near duplicates (vectors jittered, one character of the caption changed).
Runs the full `tads_assets.core.method.dedup.deduplicate` (metadata, K-Means, LanceDB neighbours, edit distance)
and prints wall time per size, the growth factor per 10x rows, and how many planted pairs were caught.
Targets: <= 15x time for 10x rows; 1M rows in <= 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

import tads_assets  # noqa: F401
from tads_assets.core.method import dedup


def synthetic(n: int, dim: int, rng: np.random.Generator):
    base = int(n * 0.96)
    n_exact = n_near = (n - base) // 2
    n = base + n_exact + n_near
    img = rng.standard_normal((n, dim), dtype=np.float32)
    txt = img + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz  "))
    codes = rng.integers(0, len(alphabet), size=(n, 32))
    captions = ["".join(row) for row in alphabet[codes]]
    sha = np.array([f"h{i}" for i in range(n)], dtype=object)
    url = np.array([f"u{i}" for i in range(n)], dtype=object)
    ex_src = rng.choice(base, n_exact, replace=False)
    nr_src = rng.choice(np.setdiff1d(np.arange(base), ex_src), n_near, replace=False)
    ex = np.arange(base, base + n_exact)
    nr = np.arange(base + n_exact, n)
    img[ex], txt[ex], sha[ex], url[ex] = img[ex_src], txt[ex_src], sha[ex_src], url[ex_src]
    img[nr] = img[nr_src] + 0.02 * rng.standard_normal((n_near, dim), dtype=np.float32)
    txt[nr] = txt[nr_src] + 0.02 * rng.standard_normal((n_near, dim), dtype=np.float32)
    for i, j in zip(ex, ex_src):
        captions[i] = captions[j]
    for i, j in zip(nr, nr_src):
        captions[i] = captions[j][:-1] + "!"
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return sha, url, captions, img, txt, list(zip(ex, ex_src)) + list(zip(nr, nr_src))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    times = []
    for n in args.sizes:
        sha, url, captions, img, txt, planted = synthetic(n, args.dim, rng)
        wh = np.full(len(captions), 256)
        steps: list[str] = []
        t0 = time.perf_counter()
        out = dedup.deduplicate(sha, url, captions, wh, wh, img, txt, dedup.DedupParams(), progress=steps.append)
        seconds = time.perf_counter() - t0
        caught = np.mean([out.kept[a] != out.kept[b] for a, b in planted])
        times.append(seconds)
        growth = f", {seconds / times[-2]:.1f}x the previous size" if len(times) > 1 else ""
        print(f"{len(captions):>9} rows: {seconds:7.1f} s ({len(captions) / seconds:,.0f} rows/s{growth}); "
              f"planted pairs resolved {100 * caught:.1f} %, removed {int((~out.kept).sum())}")
        for s in steps:
            print(f"           {s}")


if __name__ == "__main__":
    main()
