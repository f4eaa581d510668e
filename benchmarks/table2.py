"""Table 2 on the demo pool: which of TADS's signals earn their place. Q, Q+R, Q+R+D and Q+R+D+A rank the
deduplicated pool by equal-weight standardised signals (q_φ, the best task's relevance, log diversity, and the
held-out image-caption cosine A, not in the paper) with no feedback, and keep as many samples as TADS; `full` is
TADS's final_subset (the DVN trained by Algorithm 1 on the same signals, from θ₀ fitted to Q+R+D+A by default).
A CLIP is trained from scratch on each and scored zero-shot on the test sets, mean ± std over seeds, as in Table 1.

    make demo
    .venv/bin/python benchmarks/table2.py --seeds 3 [--home .tads]

Also prints the FDO reward curves of the materialized trained_dvn — J(S(θ)) of each meta-iteration's draw
and J(top) of the DVN's deterministic top selection at the budget, before each update and after the last
— and whether each rises (last three above the first three and a positive least-squares slope), the
reward's task alignment, and the share of each task's images in every subset. Where the demo truth
exists, a reference row "truth: clean garments" (a seeded sample of the pool's clean garment pairs, the
generator's own labels — not a method) shows what a perfectly clean subset of this size buys. Runs of
equal subsets come from TADS_HOME/reports/runs_cache.jsonl (table1.py's `tads` runs included).
Writes TADS_HOME/reports/table2.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (SubsetTrainer, beats, demo_truth, dvn_info, home, home_signals, summarise, took,  # noqa: E402
                     write_report)

from tads_assets.core.harness import clip_train  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.io.tasks import load_task_set  # noqa: E402
from tads_assets.core.method import selection  # noqa: E402
from tads_assets.core.method.algorithm1 import PRIOR_ROWS, row_label  # noqa: E402
from tads_assets.core.report import markdown_table  # noqa: E402

ROWS = {"Q": "q", "Q+R": "q_r", "Q+R+D": "q_r_d", "Q+R+D+A": "q_r_d_a", "full (FDO)": "tads"}
ORACLE = "truth: clean garments"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=clip_train.TrainParams.budget_samples_seen)
    p.add_argument("--model", default=clip_train.TrainParams.model)
    p.add_argument("--no-cache", action="store_true", help="train every run even when reports/runs_cache.jsonl has it "
                   "(table1.py's runs of the same subsets are reused from there)")
    p.add_argument("--no-oracle", action="store_true", help="skip the reference row of the demo's truth (clean garments)")
    args = p.parse_args()
    h = home(args.home)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    cat = Catalog(h)
    if not cat.final_subset.exists():
        raise SystemExit(f"{cat.final_subset.path} does not exist: run `make demo` first (or pass --home)")
    sig = home_signals(cat)
    tads_uids = cat.final_subset.uids()
    size = len(tads_uids)
    subsets = {"tads": tads_uids}
    info = dvn_info(cat)
    # θ₀'s static row (prior "auto" may have chosen one outside Table 2's, e.g. Q+R+A): a row of its own here
    init = info.get("init", "prior")
    prior_key = info.get("prior", "q_r_d") if init in ("prior", "residual") else None
    rows = dict(ROWS)
    if prior_key and prior_key not in rows.values():
        rows = {**{k: v for k, v in ROWS.items() if v != "tads"}, row_label(prior_key): prior_key, "full (FDO)": "tads"}
    for key in rows.values():
        if key != "tads":
            score = sig.static(PRIOR_ROWS[key])
            subsets[key] = sig.uids[selection.threshold_selection(score, -1.0, size).keep].tolist()

    truth = demo_truth(cat)
    composition = []
    if truth.exists():
        src = pl.read_parquet(truth, columns=["uid", "source", "kind", "label"])
        if not args.no_oracle:
            # not a method: the demo generator's own labels, a ceiling for what a selection of this size can buy
            clean = set(src.filter((pl.col("kind") == "clean") & (pl.col("source") == "fashion"))["uid"].to_list())
            members = [u for u in sig.uids.tolist() if u in clean]
            subsets["oracle"] = [members[i] for i in np.random.default_rng(0).permutation(len(members))[:size]]
            rows[ORACLE] = "oracle"
        # the share whose generator label is a class a classification task names (the footwear of the task-minority
        # pool; every garment and digit of the demo's)
        task_classes = sorted({c for t in load_task_set(cat.demo_dir / "tasks.yaml") if t.kind == "classification"
                               for c in t.classes})
        for label, key in rows.items():
            part = pl.DataFrame({"uid": subsets[key]}).join(src, on="uid", how="left")
            composition.append({"row": label, "samples": part.height,
                                **{f"{s} %": 100.0 * part.filter(pl.col("source") == s).height / part.height
                                   for s in ("fashion", "digits")},
                                "task-class %": 100.0 * part.filter(pl.col("label").is_in(task_classes)).height / part.height,
                                "clean %": 100.0 * part.filter(pl.col("kind") == "clean").height / part.height})

    trainer = SubsetTrainer(h, args.model, args.budget, cache=not args.no_cache)
    print(f"{len(sig.uids)} deduplicated samples; every row keeps {size}; budget {args.budget} samples seen, "
          f"{args.seeds} seed(s)", flush=True)
    results: dict[str, list[dict]] = {label: [] for label in rows}
    for seed in range(args.seeds):
        for label, key in rows.items():
            t0 = time.perf_counter()
            row = trainer.run(subsets[key], seed)
            results[label].append(row)
            print(f"seed {seed} {label:>10}: average {row['average']:.2f}  "
                  f"({took(row, t0)})", flush=True)
    table, summary = summarise(results)
    md = markdown_table(table)
    print(f"\nTable 2 (percent, mean ± std over {args.seeds} seeds, test sets)\n\n{md}")
    if composition:
        print("\nComposition of each subset (demo truth):\n")
        print(markdown_table([{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in r.items()} for r in composition]))
    prior = row_label(prior_key) if prior_key else None  # θ₀'s static row
    versus = {other: beats(summary, "full (FDO)", other) for other in ("Q+R+D", "Q", "Q+R", "Q+R+D+A", prior, ORACLE)
              if other in summary}
    fdo_vs_static = versus["Q+R+D"]  # the paper's: the feedback loop against its three signals
    fdo_vs_prior = versus.get(prior)
    theta0 = {"residual": f"selects the static {prior} row's top share exactly (init: residual): FDO learns a "
                          "correction to it, which has to beat it to earn its place",
              "prior": f"was fitted to the static {prior} row (init: prior): FDO has to beat it to earn its place"}
    print("\nθ₀ of the DVN " + (theta0[init] if prior else "started from a constant v (init: constant)"))
    print()
    for v in versus.values():
        print(f"FDO vs {v['versus']}: Δ {v['delta']:+.2f} (one std {v['one_std']:.2f}); "
              f"higher: {'yes' if v['at_least'] else 'NO'}, beyond one std: {'yes' if v['beats'] else 'no'}")

    draws = [r["reward"] for r in info["history"]]
    last = info.get("reward_top_last_update", info.get("reward_top_final"))  # J(top) after the last update
    top = [r["reward_top"] for r in info["history"] if "reward_top" in r] + ([last] if last is not None else [])
    if "returned_iterate" in info:
        print(f"\nreturned iterate (keep_best): θ_{info['returned_iterate']} of θ_0..θ_{len(info['history'])}, "
              f"J(top) {info['reward_top_final']:.4f}")
    curves = {"J(S(θ)), each iteration's draw": draws, "J(top), the DVN's top selection at the budget": top}
    trend = {}
    for name, rewards in curves.items():
        if len(rewards) < 2:
            continue
        k = max(1, min(3, len(rewards) // 3))
        slope = float(np.polyfit(np.arange(len(rewards)), rewards, 1)[0])
        trend[name] = {"curve": rewards, "first_k": float(np.mean(rewards[:k])), "last_k": float(np.mean(rewards[-k:])),
                       "slope": slope, "rises": float(np.mean(rewards[-k:])) > float(np.mean(rewards[:k])) and slope > 0}
        print(f"\nFDO reward curve, {name}: {' '.join(f'{r:.3f}' for r in rewards)}")
        print(f"  first {k}: {trend[name]['first_k']:.4f}, last {k}: {trend[name]['last_k']:.4f}, least-squares slope "
              f"{slope:+.4f}/iteration → rises: {'yes' if trend[name]['rises'] else 'NO'}")
    alignment = info.get("task_alignment") or []
    if alignment:
        print("\nTask alignment of the reward (trained_dvn):\n")
        print(markdown_table([{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in r.items()} for r in alignment]))
    write_report(h, "table2", md, {
        "seeds": args.seeds, "size": size, "summary": summary, "composition": composition,
        "fdo_vs_static": fdo_vs_static, "fdo_vs_prior": fdo_vs_prior, "prior": prior, "fdo_versus": list(versus.values()), "reward_trend": trend, "task_alignment": alignment, "runs": results}, t_start)


if __name__ == "__main__":
    main()
