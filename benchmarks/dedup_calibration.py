"""Calibrate the dedup thresholds on the demo truth: sweep τ_edit, τ_sem, τ_vis, γ (and the joint-space
radius of candidate pairs) and print the trade-off between redundancy removed and clean samples lost.

    make demo
    .venv/bin/python benchmarks/dedup_calibration.py [--home .tads]

As in the paper (§3.1), pick the elbow that removes the most redundancy while keeping the false removal
of clean unique samples below 1 %; the script prints that setting. Neighbours are searched once and
reused. τ_edit = 0 switches the structural test off, τ_sem > 1 the semantic one, τ_vis > 1 the visual one
(the paper's text-only rule). The sweep is of the `text_or_image` rule with calibration off: it is how the
pre-issue-20 defaults were chosen on the demo truth, kept to compare with `calibrate: true` (benchmarks/zoo.py).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home, load_demo_pool_with_vectors  # noqa: E402
from dedup_quality import dedup_figures  # noqa: E402

from tads_assets.core.method import dedup  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--tau-edit", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    p.add_argument("--tau-sem", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--tau-vis", type=float, nargs="+", default=[0.9, 0.93, 0.95, 1.01])
    p.add_argument("--gamma", type=float, nargs="+", default=[1.0])
    p.add_argument("--min-joint-cos", type=float, nargs="+", default=[0.75, 0.8, 0.85])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pool, image, text = load_demo_pool_with_vectors(home(args.home))
    tiny = dedup.tiny_image_vectors(pool["tiny"].to_list())
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def cached_neighbours(vectors: np.ndarray, k: int):
        key = len(vectors)
        if key not in cache:
            cache[key] = dedup.neighbours(vectors, k)
        return cache[key]

    rows = []
    grid = list(itertools.product(args.gamma, args.min_joint_cos, args.tau_edit, args.tau_sem, args.tau_vis))
    print(f"{len(grid)} settings over {pool.height} samples")
    print(f"{'gamma':>5} {'joint':>5} {'t_edit':>6} {'t_sem':>5} {'t_vis':>5} | {'exact%':>6} {'near%':>6} {'clean_lost%':>11} {'kept':>5}")
    for gamma, joint, tau_edit, tau_sem, tau_vis in grid:
        params = dedup.DedupParams(gamma=gamma, min_joint_cos=joint, tau_edit=tau_edit, tau_sem=tau_sem, tau_vis=tau_vis,
                                   redundancy="text_or_image", calibrate=False)  # the sweep sets the thresholds
        out = dedup.deduplicate(pool["sha256"].to_numpy(), pool["url"].to_numpy(), pool["caption"].to_list(),
                                pool["width"].to_numpy(), pool["height"].to_numpy(), image, text, params, tiny_vec=tiny,
                                neighbours=cached_neighbours, progress=lambda m: None)
        f = dedup_figures(pool, out)
        rows.append((params, f))
        print(f"{gamma:5.2f} {joint:5.2f} {tau_edit:6.2f} {tau_sem:5.2f} {tau_vis:5.2f} | {100 * f['exact_removed']:6.1f} "
              f"{100 * f['near_removed']:6.1f} {100 * f['clean_false_removed']:11.2f} {f['kept']:5d}", flush=True)
    ok = [(p_, f) for p_, f in rows if f["clean_false_removed"] < 0.01]
    if ok:
        best_p, best_f = max(ok, key=lambda r: (r[1]["near_removed"], -r[1]["clean_false_removed"]))
        print(f"elbow (most near duplicates removed with clean loss < 1 %): gamma={best_p.gamma} "
              f"min_joint_cos={best_p.min_joint_cos} tau_edit={best_p.tau_edit} tau_sem={best_p.tau_sem} tau_vis={best_p.tau_vis} -> "
              f"near {100 * best_f['near_removed']:.1f} %, clean lost {100 * best_f['clean_false_removed']:.2f} %")
    else:
        print("no setting keeps clean loss below 1 %")


if __name__ == "__main__":
    main()
