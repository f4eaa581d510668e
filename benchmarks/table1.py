"""Table 1 on the demo pool: a CLIP trained from scratch on each method's subset under one budget of samples
seen, zero-shot on the tasks' test sets, mean ± std over seeds.

    make demo                                         # materializes the pool stages and q_φ
    .venv/bin/python benchmarks/table1.py --seeds 3 [--home .tads] [--budget N] [--methods random dbp]

Each seed changes the training (initialisation, batch order) and the seeded selections (random's draw,
SemDeDup's and DBP's k-means). random/clip_score/semdedup/dbp keep the same number of samples (TADS's
final_subset size when it exists, else keep_fraction of the pool). Images are decoded and preprocessed
once for all runs. Prints the table (percent), the sanity comparisons against random, and writes
TADS_HOME/reports/table1.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home  # noqa: E402

from tads_assets.core import baselines, benchmark, clip_train  # noqa: E402
from tads_assets.core.encoder import read_encoder_info  # noqa: E402
from tads_assets.core.ingest import scan_raw_pool  # noqa: E402
from tads_assets.core.report import markdown_table  # noqa: E402
from tads_assets.core.tasks import load_task_set  # noqa: E402

SIZE_MATCHED = ("random", "clip_score", "semdedup", "dbp")


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="*", default=list(baselines.METHODS))
    p.add_argument("--budget", type=int, default=clip_train.TrainParams.budget_samples_seen, help="samples seen per run")
    p.add_argument("--model", default=clip_train.TrainParams.model)
    p.add_argument("--keep-fraction", type=float, default=baselines.BaselineParams.keep_fraction)
    p.add_argument("--tasks", default=None, help="task-set YAML (default: the demo's)")
    args = p.parse_args()
    h = home(args.home)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()

    need = [h / "parquet" / "quality_scores" / "quality_scores.parquet", h / "lance"]
    if not all(x.exists() for x in need):
        raise SystemExit(f"{h} lacks the materialized pool stages and q_φ: run `make demo` first (or pass --home)")
    builtin = read_encoder_info(h / "models" / "clip_encoder")["kind"] == "builtin"
    cand = baselines.load_candidates(h / "parquet" / "raw_pool", lancedb.connect(str(h / "lance")), need[0],
                                     h / "cache" / "frozen_features" if builtin else None)
    pool = scan_raw_pool(h / "parquet" / "raw_pool").select("uid", "caption", "bytes").collect()
    row_of = {u: i for i, u in enumerate(pool["uid"].to_list())}
    size, _ = baselines.matched_size(h / "parquet" / "final_subset" / "final_subset.parquet", args.keep_fraction,
                                     len(cand.uids))
    tasks = load_task_set(args.tasks or h / "demo" / "tasks.yaml")
    eval_sets = benchmark.load_eval_sets(tasks, "test")

    _, preprocess, tokenizer = clip_train.create_model(args.model)
    images = clip_train.preprocess_images(pool["bytes"].to_list(), preprocess, progress=lambda m: None)
    tokens = tokenizer(pool["caption"].to_list())
    del pool
    print(f"pool {len(row_of)} samples, size-matched subsets {size}, budget {args.budget} samples seen, model "
          f"{args.model}, {args.seeds} seed(s); images preprocessed in {time.perf_counter() - t_start:.0f}s", flush=True)

    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    chance = None
    for seed in range(args.seeds):
        for method in args.methods:
            t0 = time.perf_counter()
            uids, sel = baselines.select(method, cand, baselines.BaselineParams(seed=seed), size)
            idx = torch.as_tensor([row_of[u] for u in uids[sel.keep]])
            params = clip_train.TrainParams(model=args.model, budget_samples_seen=args.budget, seed=seed)
            torch.manual_seed(seed)
            model, preprocess, tokenizer = clip_train.create_model(args.model)
            res = clip_train.train_on_tensors(model, images[idx], tokens[idx], params, progress=lambda m: None)
            enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer)
            scores = benchmark.evaluate_model(tasks, eval_sets, enc.encode_images, enc.encode_texts)
            chance = chance or benchmark.chance_row(scores)
            row = {"samples": len(idx), "samples_seen": res.samples_seen, **benchmark.headline(scores)}
            results[method].append(row)
            print(f"seed {seed} {method:>12}: {len(idx):5d} samples, {res.samples_seen} seen, average "
                  f"{row['average']:.2f}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    columns = [c for c in results[args.methods[0]][0] if c not in ("samples", "samples_seen")]
    table, summary = [], {}
    for method, rows in results.items():
        stats = {c: mean_std([r[c] for r in rows]) for c in columns}
        summary[method] = {"samples": rows[0]["samples"], "samples_seen": rows[0]["samples_seen"],
                           **{c: {"mean": m, "std": s} for c, (m, s) in stats.items()}}
        table.append({"method": method, "samples": rows[0]["samples"],
                      **{c: f"{m:.1f} ± {s:.1f}" for c, (m, s) in stats.items()}})
    table.append({"method": "chance", "samples": "", **{c: f"{chance[c]:.1f}" for c in columns}})
    md = markdown_table(table)
    print(f"\nTable 1 (percent, mean ± std over {args.seeds} seeds, test sets; {args.budget} samples seen each)\n")
    print(md)

    verdicts = []
    if "random" in summary:
        r = summary["random"]["average"]
        print("\nSanity: beats random at equal size beyond one std, i.e. the difference of the mean averages exceeds "
              "the larger of the two methods' stds across seeds:")
        for method in ("clip_score", "semdedup", "dbp"):
            if method in summary:
                m = summary[method]["average"]
                delta, one_std = m["mean"] - r["mean"], max(m["std"], r["std"])
                verdicts.append({"method": method, "delta": delta, "one_std": one_std, "beats_random": delta > one_std})
                print(f"  {method:>10}: {m['mean']:.2f} ± {m['std']:.2f} vs random {r['mean']:.2f} ± {r['std']:.2f} "
                      f"→ Δ {delta:+.2f} (one std {one_std:.2f})  {'yes' if delta > one_std else 'NO'}")
    total = time.perf_counter() - t_start
    print(f"\ntotal {total / 60:.1f} min")
    reports = h / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "table1.md").write_text(md + "\n")
    (reports / "table1.json").write_text(json.dumps({"seeds": args.seeds, "budget_samples_seen": args.budget,
                                                     "model": args.model, "size_matched": size, "summary": summary,
                                                     "chance": chance, "sanity": verdicts, "minutes": total / 60},
                                                    indent=2))


if __name__ == "__main__":
    main()
