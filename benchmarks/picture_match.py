"""How well the dedup's visual test tells a re-posted picture from another picture, per trim tolerance, on zoo homes.

    .venv/bin/python benchmarks/zoo.py --stage dedup --root /tmp/zoo            # pool stages of every zoo home
    .venv/bin/python benchmarks/picture_match.py --root /tmp/zoo --pools demo catalog --seeds 0 --trims 0 0.05 0.075

The pairs are what the visual test faces: each sample's 10 nearest neighbours by image embedding (the visual
candidates, `dedup.visual_candidates`), byte-identical pairs left out (the metadata layer takes those). With the
pool's truth, a pair is a copy when both samples belong to one duplicate group (an original and its re-posts) and
distinct otherwise. Per `picture_max_trim` (0: whole frames only; `dedup.Pictures`), the threshold that flags a
given share of the distinct pairs (0.1 % and 0.3 %: the calibration's α = 1 % allows about 0.07 % at the zoo's
~15 visual candidates a sample) and the share of copies above it: re-post recall at a fixed false-match rate,
with no calibration in between. Prints one row per home and trim, and the seconds the comparison took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import load, pool_home  # noqa: E402

from tads_assets.core.demo.zoo import ZOO  # noqa: E402
from tads_assets.core.method import dedup  # noqa: E402

RATES = (0.001, 0.003)


def pairs_with_truth(pool, image: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The visual candidates of a home (pairs i < j) and whether each is a copy."""
    pairs, _ = dedup.visual_candidates(image / np.linalg.norm(image, axis=1, keepdims=True), np.ones(len(image), bool), k)
    i, j = pairs[:, 0], pairs[:, 1]
    sha = pool["sha256"].to_numpy()
    keep = sha[i] != sha[j]
    i, j = i[keep], j[keep]
    group = np.array([o if o is not None else u for u, o in zip(pool["uid"].to_list(), pool["duplicate_of"].to_list())])
    return i, j, group[i] == group[j]


def recall_at(score: np.ndarray, copy: np.ndarray, rate: float) -> float:
    threshold = np.quantile(score[~copy], 1 - rate)
    return float((score[copy] > threshold).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="the --root of benchmarks/zoo.py")
    p.add_argument("--pools", nargs="*", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--trims", nargs="*", type=float, default=[0.0, 0.05, 0.075])
    args = p.parse_args()
    print(f"{'home':28s} {'max_trim':>8s} {'frames':>6s} {'copies':>6s} {'distinct':>8s} "
          + " ".join(f"{'@' + format(r, '.1%'):>7s}" for r in RATES) + "  seconds")
    for name in args.pools:
        for seed in args.seeds:
            h = pool_home(args.root, name, seed, args.samples)
            pool, image, _ = load(h)
            i, j, copy = pairs_with_truth(pool, image)
            for trim in args.trims:
                pics = dedup.tiny_image_vectors(pool["tiny"].to_list(), max_trim=trim)
                t0 = time.perf_counter()
                score = pics.cos(i, j)
                seconds = time.perf_counter() - t0
                print(f"{h.name:28s} {trim:8.3f} {pics.n_variants:6d} {int(copy.sum()):6d} {int((~copy).sum()):8d} "
                      + " ".join(f"{100 * recall_at(score, copy, r):7.1f}" for r in RATES) + f"  {seconds:7.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
