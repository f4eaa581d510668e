"""Which static row should θ₀ start from, and how many target CLIPs does it take to tell (trained_dvn's prior
"auto", docs/method.md §3.3)?

For every candidate row of trained_dvn's `prior_candidates` on each finished home: the row's top budget share of the
deduplicated pool (what `algorithm1.choose_prior` trains its target on), a CLIP trained from scratch on it with each
of --seeds training seeds, scored on the tasks' validation sets as Algorithm 1 scores them (J over chance,
`algorithm1.candidate_j`, the classes the benchmark leaves out left out) and on the test sets as Table 1 scores them
(the average). Then each decision rule picks a row from the validation J's alone, and the script prints the test
average of the row it picks (the mean over every training seed), per home and over the homes, beside the best row
in hindsight (`oracle`) and every fixed row:

- `one target` (trained_dvn's rule: the highest J of one target CLIP), averaged over which seed that target has;
- `two targets`: the highest mean J of two target CLIPs a row, averaged over the pairs of seeds;
- `runoff`: the two highest by one target, then the higher mean J over two targets of those two (two trainings more
  than `one target`), averaged over the ordered pairs of seeds;
- `three targets` (with --seeds 3): the highest mean J over three.

Each rule is applied twice: to Algorithm 1's J (`(J)`: top-1 and the mean R@1 over chance) and to Table 1's average
of the same CLIP on the validation sets (`(V)`: every metric the benchmark defines, top-5 and R@5 included).

`held out` repeats the one- and two-target rules' test figure over the seeds the rule did not see (a lucky target
CLIP is lucky on the test set too, so scoring the rule with the same CLIP flatters it).

    .venv/bin/python benchmarks/row_choice.py --homes /tmp/zoo/noise_majority-n10000-s0 /tmp/zoo/catalog-n10000-s0

Runs of equal subsets come from each home's reports/runs_cache.jsonl (table1.py's and table2.py's included, when
they carry validation scores). Writes reports/row_choice.{md,json} in the first home.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SubsetTrainer, dvn_info, home, home_signals, mean_std, took, write_report  # noqa: E402

from tads_assets.core.harness import benchmark, clip_train  # noqa: E402
from tads_assets.core.io import eval_sets  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.method import fdo, proxy  # noqa: E402
from tads_assets.core.method.algorithm1 import (PRIOR_ROWS, Algorithm1Params, best_candidate,  # noqa: E402
                                                candidate_j, row_label)
from tads_assets.core.report import markdown_table  # noqa: E402

VALIDATION_ITEMS = 1000  # trained_dvn's validation_items default


def measure_home(h: Path, seeds: int, model: str, budget: int, cache: bool, only: list[str] | None) -> dict:
    """Per candidate row: validation Eval_k and the test average of a CLIP per training seed."""
    cat = Catalog(h)
    info = dvn_info(cat)
    rows = only or [t["row"] for t in info.get("prior_trials") or []] or list(Algorithm1Params().candidates())
    rate = float(info["fdo"]["rate"])
    sig = home_signals(cat)
    trainer = SubsetTrainer(h, model, budget, cache=cache)
    unnamed = benchmark.unnamed_classes(trainer.tasks, trainer.vocabulary, budget)
    levels: dict = {}

    val_sets = eval_sets.load_eval_sets(trainer.tasks, "validation")

    def validate(enc) -> dict:
        val = proxy.validation_tasks(trainer.tasks, enc.encode_images, enc.encode_texts, "validation",
                                     VALIDATION_ITEMS, 0, unnamed)
        table1 = benchmark.evaluate_model(trainer.tasks, val_sets, enc.encode_images, enc.encode_texts,
                                          trainer.vocabulary, budget, unnamed)
        return {"eval": proxy.evaluate_embeddings(val, lambda x: x, lambda x: x), "chance": proxy.chance_levels(val),
                "n": {v.name: len(v.image_feats) for v in val}, "average": benchmark.headline(table1)["average"]}

    runs = {}
    for row in rows:
        uids = sig.uids[fdo.top_fraction(sig.static(PRIOR_ROWS[row]), rate)].tolist()
        runs[row] = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            r = trainer.run(uids, seed, validate)
            levels = {"chance": r["validation"]["chance"], "n": r["validation"]["n"]}
            runs[row].append({"test": r["average"], "eval": r["validation"]["eval"], "V": r["validation"]["average"]})
            print(f"{h.name} {row_label(row):>8} seed {seed}: test average {r['average']:.2f}, validation "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["validation"]["eval"].items()) + f" ({took(r, t0)})",
                  flush=True)
    # J over the tasks some target learned, decided over every run of the home (as choose_prior decides over its rows)
    flat = [(row, s) for row in rows for s in range(seeds)]
    js, counted = candidate_j(trainer.tasks, [runs[row][s]["eval"] for row, s in flat], levels["chance"], levels["n"])
    for (row, s), j in zip(flat, js):
        runs[row][s]["J"] = j
    recorded = {t["row"]: t["J target (validation)"] for t in info.get("prior_trials") or []}
    return {"home": h.name, "rows": rows, "runs": runs, "counted": [t.name for t in counted],
            "chosen_by_trained_dvn": info.get("prior"), "recorded_J": recorded}


def rules(m: dict, seeds: int, by: str = "J", fixed: bool = True) -> dict[str, tuple[float, float | None]]:
    """Per decision rule on the validation score `by` ("J": Algorithm 1's; "V": Table 1's average on the validation
    sets): (test average of its pick, every seed; the same over the seeds it did not see, or None)."""
    rows, runs = m["rows"], m["runs"]
    J = np.array([[runs[r][s][by] for s in range(seeds)] for r in rows])
    T = np.array([[runs[r][s]["test"] for s in range(seeds)] for r in rows])
    test = T.mean(axis=1)

    def held(i: int, seen: tuple[int, ...]) -> float | None:
        rest = [s for s in range(seeds) if s not in seen]
        return float(T[i, rest].mean()) if rest else None

    def over(picks: list[tuple[int, tuple[int, ...]]]) -> tuple[float, float | None]:
        h = [held(i, seen) for i, seen in picks]
        return float(np.mean([test[i] for i, _ in picks])), (float(np.mean(h)) if all(x is not None for x in h) else None)

    out = {"one target": over([(best_candidate(J[:, s].tolist()), (s,)) for s in range(seeds)])}
    if seeds >= 2:
        pairs = list(itertools.combinations(range(seeds), 2))
        out["two targets"] = over([(best_candidate(J[:, list(p)].mean(axis=1).tolist()), p) for p in pairs])
        picks = []
        for s, s2 in itertools.permutations(range(seeds), 2):
            top2 = sorted(np.argsort(-J[:, s], kind="stable")[:2].tolist())
            picks.append((top2[best_candidate([J[i, [s, s2]].mean() for i in top2])], (s, s2)))
        out["runoff"] = over(picks)
    if seeds >= 3:
        out[f"{seeds} targets"] = over([(best_candidate(J.mean(axis=1).tolist()), tuple(range(seeds)))])
    out = {f"{k} ({by})": v for k, v in out.items()}
    if fixed:
        out["oracle (test)"] = (float(test.max()), None)
        for i, r in enumerate(rows):
            out[f"fixed {row_label(r)}"] = (float(test[i]), None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--homes", nargs="+", default=[None])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=clip_train.TrainParams.budget_samples_seen)
    p.add_argument("--model", default=clip_train.TrainParams.model)
    p.add_argument("--rows", nargs="+", choices=sorted(PRIOR_ROWS), default=None,
                   help="the candidate rows (default: those trained_dvn compared)")
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    homes = [home(h) for h in args.homes]
    measured, per_rule = [], {}
    for h in homes:
        m = measure_home(h, args.seeds, args.model, args.budget, not args.no_cache, args.rows)
        measured.append(m)
        table = [{"row": row_label(r), **{f"J s{s}": f"{m['runs'][r][s]['J']:.4f}" for s in range(args.seeds)},
                  "J mean ± std": "{:.4f} ± {:.4f}".format(*mean_std([x["J"] for x in m["runs"][r]])),
                  "validation average ± std": "{:.2f} ± {:.2f}".format(*mean_std([x["V"] for x in m["runs"][r]])),
                  "test average ± std": "{:.2f} ± {:.2f}".format(*mean_std([x["test"] for x in m["runs"][r]])),
                  "J trained_dvn": f"{m['recorded_J'][r]:.4f}" if r in m["recorded_J"] else "—"}
                 for r in m["rows"]]
        print(f"\n{h.name}: tasks counted {', '.join(m['counted'])}; trained_dvn chose "
              f"{row_label(m['chosen_by_trained_dvn']) if m['chosen_by_trained_dvn'] else '—'}\n\n{markdown_table(table)}")
        for rule, (t, held) in {**rules(m, args.seeds, "J", False), **rules(m, args.seeds, "V")}.items():
            per_rule.setdefault(rule, []).append((t, held))
    summary = []
    for rule, vals in per_rule.items():
        held = [x for _, x in vals]
        summary.append({"rule": rule, "test average of the pick (mean over homes)": f"{np.mean([t for t, _ in vals]):.2f}",
                        "over the unseen seeds": f"{np.mean(held):.2f}" if all(x is not None for x in held) else "—"})
    md = markdown_table(summary)
    print(f"\nDecision rules over {len(homes)} home(s), {args.seeds} training seeds a row (test average of the row each "
          f"rule picks from the validation J alone)\n\n{md}")
    write_report(homes[0], "row_choice", md, {"seeds": args.seeds, "homes": measured,
                                               "rules": per_rule}, t_start)


if __name__ == "__main__":
    main()
