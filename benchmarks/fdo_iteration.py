"""Seconds per FDO meta-iteration of Algorithm 1 on a materialized demo pool, the iteration's proxy adaptations
batched (`HeadProxy.reward_many`: every J(V), J(top), J(V ± δ_C) of an iteration as one stacked computation)
against the same adaptations one after another, and whether both give the same rewards.

    make demo
    .venv/bin/python benchmarks/fdo_iteration.py [--home .tads] [--iterations 5] [--no-sequential]

The proxy, its validation features and the DVN are built exactly as the trained_dvn asset builds them (its
defaults: head proxy, 10 probed clusters, antithetic differences, J(top) tracked: 22 rewards per iteration); task
alignment is left out (it runs once before the iterations). Prints the median seconds per iteration of each
mode (over `--iterations`), their ratio, and the largest difference between the two modes' rewards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home  # noqa: E402

from resources import ClipEncoder  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.method.algorithm1 import Algorithm1Params, run_algorithm1  # noqa: E402
from tads_assets.core.method.fdo import FdoParams  # noqa: E402
from tads_assets.core.settings import BUDGET_FRACTION  # noqa: E402
from tads_assets.select import TrainedDvnConfig, _reward, _signals  # noqa: E402


class OneAtATime:
    """The same reward without `reward_many`: train_dvn then adapts the proxy once per mask."""

    def __init__(self, reward):
        self.inner = reward

    def reward(self, mask):
        return self.inner.reward(mask)

    @property
    def val(self):
        return self.inner.val

    @property
    def n_adaptations(self):
        return self.inner.n_adaptations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--iterations", type=int, default=5, help="meta-iterations per mode (the median is reported)")
    p.add_argument("--no-sequential", action="store_true", help="time the batched mode only")
    args = p.parse_args()
    cat = Catalog(home(args.home))
    if not cat.quality_scores.exists() or not cat.task_set.path.exists():
        raise SystemExit(f"{cat.root} lacks quality_scores or task_set: run `make demo` first (or pass --home)")
    tasks, _ = cat.task_set.read()
    config = TrainedDvnConfig(meta_iterations=args.iterations)
    sig = _signals(cat.quality_scores, cat.relevance_vectors, cat.cluster_diversity, cat.pool_embeddings)
    t0 = time.perf_counter()
    reward = _reward(config, ClipEncoder(), "cpu", tasks, sig.uids, cat.raw_pool, cat.pool_embeddings, cat.clip_encoder,
                     cat.frozen_cache_dir, lambda m: None)
    print(f"{len(sig.uids)} samples, {len(tasks)} tasks; proxy and validation features built in "
          f"{time.perf_counter() - t0:.1f} s")
    params = Algorithm1Params(fdo=FdoParams(meta_iterations=args.iterations, rate=BUDGET_FRACTION))
    modes = {"batched": reward} if args.no_sequential else {"batched": reward, "sequential": OneAtATime(reward)}
    runs = {}
    for name, r in modes.items():
        before = r.n_adaptations
        res = run_algorithm1(sig, tasks, r, params, progress=lambda m, name=name: print(f"  {name}: {m}"))
        secs = [h["seconds"] for h in res.history]
        runs[name] = (res, secs, (r.n_adaptations - before) // max(len(secs), 1))
    print("\n| mode | rewards / iteration | median s / iteration | min | max |\n|---|---:|---:|---:|---:|")
    for name, (_, secs, per) in runs.items():
        print(f"| {name} | {per} | {np.median(secs):.2f} | {min(secs):.2f} | {max(secs):.2f} |")
    if "sequential" in runs:
        b, s = runs["batched"][0], runs["sequential"][0]
        diff_j = max(abs(x["reward"] - y["reward"]) for x, y in zip(b.history, s.history))
        diff_g = max(abs(x["advantages"][c] - y["advantages"][c]) for x, y in zip(b.history, s.history)
                     for c in x["advantages"])
        speedup = np.median(runs["sequential"][1]) / np.median(runs["batched"][1])
        print(f"\nspeed-up (median sequential / median batched): {speedup:.1f}x")
        print(f"largest difference batched vs sequential: J {diff_j:.2e}, g_C {diff_g:.2e}; "
              f"final v Spearman-equal: {np.allclose(b.v, s.v, atol=1e-4)}")
    print(f"target: <= 2 s per meta-iteration (batched median {np.median(runs['batched'][1]):.2f} s)")


if __name__ == "__main__":
    main()
