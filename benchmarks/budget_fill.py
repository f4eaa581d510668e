"""What fills the data budget where a pool's good distinct pairs run out (issue 20: TADS against clip_score on the
noise majority)?

θ₀'s row (`trained_dvn`'s prior, or --row) ranks the *deduplicated* pool; clip_score ranks the *raw* pool by the
same held-out pair cosine (the A signal). Where the budget (36 % of the readable raw pool) outruns the pool's
well-aligned distinct pairs the two spend its tail differently. On each finished home the script

1. decomposes clip_score's subset against the row's: the pairs only one of them holds, by the demo generator's
   truth kind where the home has it, and how many of clip_score's own are pairs deduplication removed (copies);
2. trains a CLIP from scratch (`--seeds` training seeds, `_common.SubsetTrainer`, scored as Table 1) on each way of
   spending the budget:
   - `ROW@P%`: the row's top P % of the budget (`--shares`): a smaller subset, each pair seen more often at the same
     samples seen (the paper's DVN "expands or contracts" its retention, §4.3);
   - `ROW|q`: the row's order within q_φ's clean class first (q ≥ 0.5, the quality model's decision boundary), then
     the rest by the row — the foreign-language and flagged pairs the row would take last;
   - `Q+ROW`: q_φ added to the row (equal-weight z-scores, as the static rows combine signals; rows without q);
   - clip_score's and TADS's own subsets, for reference;
   and prints per variant the test average of each seed, their mean, and the paired difference to clip_score.

    .venv/bin/python benchmarks/budget_fill.py --homes /tmp/zoo/noise_majority-n10000-s{0,1,2} --seeds 2

Subsets are passed in the pool's order (as final_subset and the baselines write theirs); runs of equal subsets come
from each home's reports/runs_cache.jsonl. Writes reports/budget_fill.{md,json} in the first home.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SubsetTrainer, demo_truth, dvn_info, home, home_signals, mean_std, took, write_report  # noqa: E402

from tads_assets.core.harness import clip_train  # noqa: E402
from tads_assets.core.harness.baselines import BaselineParams  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.method import fdo  # noqa: E402
from tads_assets.core.method.algorithm1 import PRIOR_ROWS, row_label  # noqa: E402
from tads_assets.core.method.selection import static_score  # noqa: E402
from tads_assets.core.report import markdown_table  # noqa: E402

Q_CLEAN = BaselineParams.quality_threshold  # q_φ's decision boundary (P(clean) ≥ ½), quality_only's threshold


def variants(sig, row: str, rate: float, shares: list[int]) -> dict[str, np.ndarray]:
    """Keep masks over the deduplicated pool, one per way of spending the budget, named with ROW for the row."""
    score = sig.static(PRIOR_ROWS[row])
    n_budget = int(fdo.top_fraction(score, rate).sum())
    order = np.argsort(-score, kind="stable")

    def first(ranking: np.ndarray, n: int) -> np.ndarray:
        mask = np.zeros(len(ranking), bool)
        mask[ranking[:n]] = True
        return mask

    out = {f"ROW@{p}%": first(order, int(round(n_budget * p / 100))) for p in shares}
    clean_first = np.lexsort((np.arange(len(score)), -score, -(sig.q >= Q_CLEAN).astype(int)))
    out["ROW|q"] = first(clean_first, n_budget)
    if "q" not in PRIOR_ROWS[row]:
        with_q = static_score(sig.q, sig.r, sig.d, ("q", *PRIOR_ROWS[row]), sig.a)
        out["Q+ROW"] = first(np.argsort(-with_q, kind="stable"), n_budget)
    return out


def decompose(row_uids: set, clip_uids: set, deduped: set, truth: pl.DataFrame | None) -> list[dict]:
    """The pairs only the row's subset or only clip_score's holds, and clip_score's pairs deduplication removed."""
    parts = {"row only": row_uids - clip_uids, "clip_score only": clip_uids - row_uids,
             "clip_score's pairs dedup removed": clip_uids - deduped}
    rows = []
    for name, uids in parts.items():
        entry = {"pairs": name, "count": len(uids)}
        if truth is not None:
            kinds = truth.filter(pl.col("uid").is_in(list(uids)))["kind"].value_counts(sort=True)
            entry["by truth kind"] = ", ".join(f"{k} {n}" for k, n in kinds.iter_rows())
        rows.append(entry)
    return rows


def measure_home(h: Path, seeds: int, shares: list[int], row: str | None, cache: bool) -> dict:
    cat = Catalog(h)
    info = dvn_info(cat)
    row = row or info.get("prior")
    if row not in PRIOR_ROWS:
        raise SystemExit(f"{h}: trained_dvn recorded no static row (prior {row!r}); pass --row")
    rate = float(info["fdo"]["rate"])
    sig = home_signals(cat)
    subsets = {name: sig.uids[m].tolist() for name, m in variants(sig, row, rate, shares).items()}
    for method in ("clip_score", "tads"):
        subsets[method] = cat.subsets.of(method).scan().select("uid").collect()["uid"].to_list()
    truth_path = demo_truth(cat)
    truth = pl.read_parquet(truth_path).select("uid", "kind") if truth_path.exists() else None
    row_top = set(sig.uids[fdo.top_fraction(sig.static(PRIOR_ROWS[row]), rate)].tolist())
    parts = decompose(row_top, set(subsets["clip_score"]), set(sig.uids.tolist()), truth)

    trainer = SubsetTrainer(h, clip_train.TrainParams.model, clip_train.TrainParams.budget_samples_seen, cache=cache)
    runs: dict[str, list[float]] = {}
    for name, uids in subsets.items():
        runs[name] = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            r = trainer.run(uids, seed)
            runs[name].append(r["average"])
            print(f"{h.name} {name:>10} ({len(uids)} pairs) seed {seed}: test average {r['average']:.2f} "
                  f"({took(r, t0)})", flush=True)
    sizes = {name: len(uids) for name, uids in subsets.items()}
    return {"home": h.name, "row": row, "sizes": sizes, "runs": runs, "decomposition": parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--homes", nargs="+", default=[None])
    p.add_argument("--seeds", type=int, default=2, help="training seeds a subset")
    p.add_argument("--shares", nargs="+", type=int, default=[100, 70, 50], help="the row's top P %% of the budget")
    p.add_argument("--row", choices=sorted(PRIOR_ROWS), default=None, help="default: the row trained_dvn chose")
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args()
    if args.seeds < 1 or any(not 0 < s <= 100 for s in args.shares):
        raise SystemExit("--seeds must be at least 1 and --shares percentages in (0, 100]")
    t_start = time.perf_counter()
    homes = [home(h) for h in args.homes]
    measured = []
    for h in homes:
        m = measure_home(h, args.seeds, args.shares, args.row, not args.no_cache)
        measured.append(m)
        print(f"\n{h.name}: θ₀'s row {row_label(m['row'])}\n\n{markdown_table(m['decomposition'])}")
    md_parts = []
    for m in measured:
        clip = np.array(m["runs"]["clip_score"])
        table = [{"subset": name.replace("ROW", row_label(m["row"])), "pairs": m["sizes"][name],
                  **{f"seed {s}": f"{v:.2f}" for s, v in enumerate(vals)}, "mean": f"{np.mean(vals):.2f}",
                  "minus clip_score (paired)": f"{np.mean(np.array(vals) - clip):+.2f}"}
                 for name, vals in m["runs"].items()]
        md_parts.append(f"{m['home']} (θ₀'s row {row_label(m['row'])})\n\n{markdown_table(table)}")
    over = []
    for name in measured[0]["runs"]:
        have = [m for m in measured if name in m["runs"]]
        diffs = [np.mean(np.array(m["runs"][name]) - np.array(m["runs"]["clip_score"])) for m in have]
        over.append({"subset": name, "homes": len(have),
                     "mean over homes": "{:.2f} ± {:.2f}".format(*mean_std([np.mean(m["runs"][name]) for m in have])),
                     "minus clip_score, per home": " / ".join(f"{d:+.2f}" for d in diffs)})
    md = "\n\n".join(md_parts + [f"Over {len(measured)} home(s)\n\n{markdown_table(over)}"])
    print("\n" + md)
    write_report(homes[0], "budget_fill", md, {"seeds": args.seeds, "homes": measured}, t_start)


if __name__ == "__main__":
    main()
