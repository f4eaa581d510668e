"""How much q_φ moves between fits, and what the mean of several fits (`QualityParams.members`) gives, on finished
zoo homes (`benchmarks/zoo.py --stage all` or `--stage quality`).

    .venv/bin/python benchmarks/quality_members.py --homes /tmp/zoo9/catalog-n10000-s0 /tmp/zoo9/demo-n10000-s0

Each home is copied (without its CLIPs and exports; its LanceDB folder linked, which quality_scores only reads) and quality_scores materialized there with
members = 1 and seed = 0 .. --fits - 1; each fit's q_φ is kept, and the mean of the first k fits scored for every
k — what members = k computes (member i is the fit with seed i). Printed per home: the ROC-AUC clean vs noisy over
the deduplicated pool, overall and for the weakest noise kind, of each fit and of each mean. A home's name says its
zoo pool and seed (`POOL-nN-sSEED`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import NOISY, auc, home_resources  # noqa: E402

from tads_assets.core.io.catalog import Catalog  # noqa: E402


def figures(truth: pl.DataFrame, q: pl.DataFrame) -> tuple[float, str, float]:
    """ROC-AUC clean vs noisy overall, and the weakest noise kind with its ROC-AUC."""
    d = truth.join(q, on="uid")
    clean = d.filter(pl.col("kind") == "clean")["quality"].to_numpy()
    noisy = d.filter(pl.col("kind").is_in(NOISY))
    per = {k: auc(clean, noisy.filter(pl.col("kind") == k)["quality"].to_numpy()) for k in NOISY
           if noisy.filter(pl.col("kind") == k).height >= 10}
    worst = min(per, key=per.get)
    return auc(clean, noisy["quality"].to_numpy()), worst, per[worst]


def fits_on(home: Path, work: Path, n_fits: int) -> pl.DataFrame:
    """uid and q0 .. q{n_fits-1}: quality_scores with members = 1 and seeds 0 .. n_fits - 1, on a copy of home."""
    import tads_assets.characterize as ch
    from tads_assets.local import materialize

    m = re.fullmatch(r"(.+)-n(\d+)-s(\d+)", home.name)
    if not m:
        raise SystemExit(f"{home}: not a zoo home (POOL-nN-sSEED)")
    name, n, seed = m.group(1), int(m.group(2)), int(m.group(3))
    copy = work / home.name
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("lance", "exports", "trained_clip"))
    (copy / "lance").symlink_to(home / "lance")  # quality_scores reads the pool's vectors, never writes them
    _, resources = home_resources(copy, name, seed, n)
    out = None
    for k in range(n_fits):
        config = {"ops": {"quality_scores": {"config": {"members": 1, "seed": k}}}}
        if not materialize([ch.quality_scores], resources=resources, run_config=config).success:
            raise SystemExit(f"{home}: quality_scores failed (seed {k})")
        q = pl.read_parquet(Catalog(copy).quality_scores.path).rename({"quality": f"q{k}"})
        out = q if out is None else out.join(q, on="uid")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--homes", type=Path, nargs="+", required=True)
    p.add_argument("--fits", type=int, default=5)
    args = p.parse_args()
    for home in args.homes:
        t0 = time.perf_counter()
        truth_file = Catalog(home).demo_dir / "truth.parquet"
        if not (truth_file.exists() and Catalog(home).quality_scores.path.exists()):
            raise SystemExit(f"{home}: not a finished zoo home (no {truth_file.name} or quality_scores): run "
                             "benchmarks/zoo.py --stage quality or --stage all first")
        truth = pl.read_parquet(truth_file).select("uid", "kind")
        with tempfile.TemporaryDirectory(prefix="tads-members-") as work:
            q = fits_on(home, Path(work), args.fits)
        one = [figures(truth, q.select("uid", pl.col(f"q{k}").alias("quality"))) for k in range(args.fits)]
        print(f"\n{home.name} ({time.perf_counter() - t0:.0f} s)")
        for k, (a, kind, w) in enumerate(one):
            print(f"  fit seed {k}: ROC-AUC {a:.4f} (weakest {kind} {w:.3f})")
        for k in range(2, args.fits + 1):
            mean = q.select("uid", pl.mean_horizontal([f"q{i}" for i in range(k)]).alias("quality"))
            a, kind, w = figures(truth, mean)
            print(f"  mean of {k}: ROC-AUC {a:.4f} (weakest {kind} {w:.3f})")
        print(f"  one fit {min(o[0] for o in one):.3f}-{max(o[0] for o in one):.3f}, weakest kind "
              f"{min(o[2] for o in one):.3f}-{max(o[2] for o in one):.3f}", flush=True)


if __name__ == "__main__":
    main()
