"""TADS on every pool of the zoo (`tads_assets/core/demo/zoo.py`), against each pool's truth: the demo is not the
world, so a default is judged on pools it was not tuned on (`heldout` never was).

    .venv/bin/python benchmarks/zoo.py --stage dedup                       # pool stages + dedup, every rule
    .venv/bin/python benchmarks/zoo.py --stage all --seeds 0 1 2          # the whole graph (tads run), Table 1

Each pool and seed gets its own TADS_HOME under --root (default $TADS_HOME/zoo), with the pool generated into
it (TADS_DEMO_PROFILE), so every other benchmark runs on it too with --home.

`--stage dedup` materializes raw_pool, clip_encoder and pool_embeddings, then runs the deduplication in process
under each redundancy rule (`--rules`), calibrated, and prints per rule: exact-duplicate and near-duplicate
recall, clean unique samples removed, the removed share, the calibrated thresholds. Targets (issue 20): exact
100 %, near >= 85 %, clean removed <= 2 % on every pool.

`--stage quality` materializes the graph up to quality_scores and prints q_phi's and y_weak's ROC-AUC clean vs
noisy, overall and per noise kind (targets: >= 0.90 overall, >= 0.80 per kind), and the LFs the LabelModel inverted.

`--stage all` runs `tads run` (the whole graph with the defaults) and prints, per pool and seed: the dedup figures
of deduped_pool, q_phi's ROC-AUC clean vs noisy overall and per noise kind, the final subset's size and clean
share, and Table 1's averages per method; with several seeds, mean +- std per method. Each run is timed.
`--stage select` materializes the selection again over finished `--stage all` homes (after a change to Algorithm 1
or to the static rows): trained_dvn, final_subset, every baseline_subsets partition, a trained_clip for each method
whose subset changed or has no checkpoint, and benchmark_scores; a run whose upstream stages are unchanged gives what
a whole `tads run` would, in a third of its time. `--stage retrain` trains every method's CLIP (or `--methods`, a contiguous run of trained_clip's partitions) with
`--repeats` training seeds on finished homes and benchmarks each method by the mean over its seeds: one CLIP trained
from scratch is a noisy measurement of its subset (docs/results.md). `--stage rescore` materializes benchmark_scores again over the
trained_clip checkpoints of finished `--stage all` homes (after a change to the metrics) and prints the same
figures; `--stage report` only reads them. With several seeds `all`, `select`, `rescore` and `report` end with Table 1 over the seeds and issue 20's criteria per pool: TADS at
least every baseline's mean (or within one std of the best), above random and no_filter beyond one std, and on the
task-minority pool above clip_score and quality_only beyond one std ("beyond one std": the difference of the means
exceeds the larger of the two stds). Where the seeds' benchmarks average different columns (the naming rule names a
class on one seed's pool and not on another's), the report says so and adds TADS's per-seed differences.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home, mean_std  # noqa: E402
from dedup_quality import dedup_figures  # noqa: E402

from tads_assets.core.demo.zoo import HELD_OUT, ZOO  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.io.embeddings import pool_with_vectors  # noqa: E402
from tads_assets.core.method import dedup  # noqa: E402
from tads_assets.core.method.dvn import DVN_INFO  # noqa: E402

NOISY = ("misaligned", "vague", "non_english", "blurred", "text_heavy", "low_resolution", "extreme_aspect")


def pool_home(root: Path, name: str, seed: int, n: int) -> Path:
    return root / f"{name}-n{n}-s{seed}"


def environment(h: Path, name: str, seed: int, n: int) -> dict:
    return {**os.environ, "TADS_HOME": str(h), "DAGSTER_HOME": str(h / "dagster"), "TADS_POOL": "demo",
            "TADS_DEMO_PROFILE": name, "TADS_DEMO_SEED": str(seed), "TADS_DEMO_SAMPLES": str(n)}


def home_resources(h: Path, name: str, seed: int, n: int) -> tuple:
    """TadsPaths and the resources for in-process runs on one zoo home (the pool and seed from the arguments, every
    other TADS_* setting from the environment)."""
    from resources import TadsPaths, tads_resources

    paths = TadsPaths(home=str(h), demo_profile=name, demo_seed=seed, demo_samples=n)
    env = {k: v for k, v in os.environ.items() if k.startswith("TADS_") and k not in ("TADS_HOME", "TADS_POOL", "TADS_TASKS")}
    return paths, tads_resources(paths, env)


def pool_stages(h: Path, name: str, seed: int, n: int) -> float:
    """raw_pool, clip_encoder and pool_embeddings of one zoo pool (the pool generated on first use); seconds."""
    from tads_assets.local import materialize
    from tads_assets.pool import clip_encoder, pool_embeddings, raw_pool

    t0 = time.perf_counter()
    _, resources = home_resources(h, name, seed, n)
    res = materialize([raw_pool, clip_encoder, pool_embeddings], resources=resources)
    if not res.success:
        raise SystemExit(f"{name} seed {seed}: the pool stages failed")
    return time.perf_counter() - t0


QUALITY_STAGES = ("raw_pool", "clip_encoder", "pool_embeddings", "deduped_pool", "feature_table", "weak_labels",
                  "quality_scores")


def quality_stages(h: Path, name: str, seed: int, n: int, reuse: bool) -> tuple[float, dict]:
    """The graph up to quality_scores (with --reuse and a feature table there: only feature_table, whose parts are
    cached, weak_labels and quality_scores); seconds, and weak_labels' metadata (plain values)."""
    import tads_assets.characterize as ch
    import tads_assets.pool as po
    from tads_assets.local import materialize

    t0 = time.perf_counter()
    _, resources = home_resources(h, name, seed, n)
    names = QUALITY_STAGES[-3:] if reuse and Catalog(h).feature_table.path.exists() else QUALITY_STAGES
    assets = [getattr(ch, a, None) or getattr(po, a) for a in names]
    res = materialize(assets, resources=resources)
    if not res.success:
        raise SystemExit(f"{name} seed {seed}: the quality stages failed")
    (weak,) = res.asset_materializations_for_node("weak_labels")
    return time.perf_counter() - t0, {k: getattr(v, "value", v) for k, v in weak.metadata.items()}


def quality_figures(h: Path, weak_meta: dict) -> dict:
    """q_phi's and y_weak's ROC-AUC clean vs noisy, overall and per noise kind, over the deduplicated pool; the LFs
    the LabelModel inverted."""
    cat = Catalog(h)
    truth = pl.read_parquet(cat.demo_dir / "truth.parquet").select("uid", "kind")
    q = pl.read_parquet(cat.quality_scores.path, columns=["uid", "quality"]).join(
        pl.read_parquet(cat.weak_labels.path, columns=["uid", "y_weak"]), on="uid").join(truth, on="uid")
    out = {}
    for col in ("quality", "y_weak"):
        clean = q.filter(pl.col("kind") == "clean")[col].to_numpy()
        noisy = q.filter(pl.col("kind").is_in(NOISY))
        out[col] = {"all": auc(clean, noisy[col].to_numpy()),
                    **{k: auc(clean, noisy.filter(pl.col("kind") == k)[col].to_numpy())
                       for k in NOISY if noisy.filter(pl.col("kind") == k).height >= 10}}
    out["inverted"] = weak_meta.get("inverted_lfs", "")
    out["clean_share"] = float((q["kind"] == "clean").mean())
    return out


def load(h: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    cat = Catalog(h)
    pool, (image, text) = pool_with_vectors(cat.raw_pool.dir, cat.pool_embeddings.connect())
    truth = pl.read_parquet(cat.demo_dir / "truth.parquet").select("uid", "kind", "duplicate_of")
    return pool.join(truth, on="uid", how="left", maintain_order="left"), image, text


def dedup_rows(h: Path, rules: list[str]) -> list[dict]:
    pool, image, text = load(h)
    tiny = dedup.tiny_image_vectors(pool["tiny"].to_list())
    rows = []
    for rule in rules:
        t0 = time.perf_counter()
        out = dedup.deduplicate(pool["sha256"].to_numpy(), pool["url"].to_numpy(), pool["caption"].to_list(),
                                pool["width"].to_numpy(), pool["height"].to_numpy(), image, text,
                                dedup.DedupParams(redundancy=rule), tiny_vec=tiny, progress=lambda m: None)
        f = dedup_figures(pool, out)
        q = out.layers[-1].extra
        cal = q.get("calibration") or {}
        rows.append({"rule": rule, "exact": f["exact_removed"], "near": f["near_removed"],
                     "clean": f["clean_false_removed"], "removed": 1 - f["kept"] / f["n"],
                     "taus": f"vis {q['tau_vis']:.3f} img {q['tau_img']:.2f} sem {q['tau_sem']:.3f}",
                     "est": cal.get("estimated_false_removal", float("nan")), "attainable": cal.get("attainable"),
                     "seconds": time.perf_counter() - t0})
    return rows


BASELINES = ("no_filter", "random", "clip_score", "semdedup", "dbp", "quality_only")


def criteria(name: str, cells: dict[str, tuple[float, float]], per_seed: dict[str, list[float]] | None = None,
             ) -> list[str]:
    """Issue 20's Table 1 criteria for one pool from {method: (mean, std)} over seeds: "beyond one std" is the
    difference of the means against the larger of the two stds over seeds (unpaired, the verdict). With
    `per_seed` ({method: one average per pool seed, in seed order}) each comparison also shows the paired
    differences: every method of a seed ran on the same pool, whose level they share (docs/results.md)."""
    def beyond(a: str, b: str) -> tuple[float, float, bool]:
        delta, one_std = cells[a][0] - cells[b][0], max(cells[a][1], cells[b][1])
        return delta, one_std, delta > one_std

    def paired(b: str) -> str:
        if not per_seed or len(per_seed.get(b, [])) < 2:
            return ""
        diffs = [t - x for t, x in zip(per_seed["tads"], per_seed[b])]
        mean, std = mean_std(diffs)
        return f"; paired per seed {' / '.join(f'{d:+.2f}' for d in diffs)}, {mean:+.2f} +- {std:.2f}"

    base = [b for b in BASELINES if b in cells]
    best = max(base, key=lambda b: cells[b][0])
    delta, one_std, _ = beyond("tads", best)
    lines = [f"TADS vs the best baseline ({best}): {delta:+.2f} (one std {one_std:.2f}) -> "
             + ("at least every baseline" if delta >= 0 else "within one std of the best" if -delta <= one_std
                else "BELOW the best baseline beyond one std") + paired(best)]
    must = ["random", "no_filter"] + (["clip_score", "quality_only"] if name == "task_minority" else [])
    for b in must:
        if b in cells:
            d, s, ok = beyond("tads", b)
            lines.append(f"TADS > {b} beyond one std: {'yes' if ok else 'NO'} ({d:+.2f}, one std {s:.2f}{paired(b)})")
    return lines


def rescore(h: Path, name: str, seed: int, n: int) -> None:
    """benchmark_scores again over the trained_clip checkpoints under `h` (a finished `--stage all` home)."""
    from tads_assets.local import materialize
    from tads_assets.train_eval import benchmark_scores

    if not (h / "reports" / "benchmark.json").exists():
        raise SystemExit(f"{h} has no finished run to rescore: run --stage all first")
    if not materialize([benchmark_scores], resources=home_resources(h, name, seed, n)[1]).success:
        raise SystemExit(f"{name} seed {seed}: benchmark_scores failed")


def reselect(h: Path, name: str, seed: int, n: int) -> list[str]:
    """`--stage select` on one finished home; returns the methods whose CLIP was trained again."""
    from dagster import DagsterInstance

    from tads_assets.local import RANGE_END, RANGE_START, materialize
    from tads_assets.select import baseline_partitions, baseline_subsets, final_subset, trained_dvn
    from tads_assets.train_eval import benchmark_scores, trained_clip, training_partitions

    if not (h / "reports" / "benchmark.json").exists():
        raise SystemExit(f"{h} has no finished run to select again: run --stage all first")
    paths, resources = home_resources(h, name, seed, n)
    cat = paths.catalog
    kw = {"resources": resources, "instance": DagsterInstance.from_config(str(h / "dagster"))}

    def subsets() -> dict[str, list[str] | None]:
        return {m: sorted(cat.subsets.of(m).uids()) if cat.subsets.of(m).exists() else None
                for m in training_partitions.get_partition_keys()}

    before = subsets()
    keys = baseline_partitions.get_partition_keys()
    for step, run in ((("trained_dvn, final_subset"), lambda: materialize([trained_dvn, final_subset], **kw)),
                      ("baseline_subsets", lambda: materialize([baseline_subsets], tags={RANGE_START: keys[0],
                                                                                         RANGE_END: keys[-1]}, **kw))):
        if not run().success:
            raise SystemExit(f"{name} seed {seed}: {step} failed")
    after = subsets()
    retrain = [m for m in after if after[m] != before[m] or not (cat.trained_clip.of(m) / "train_info.json").exists()]
    for m in retrain:
        if not materialize([trained_clip], partition_key=m, **kw).success:
            raise SystemExit(f"{name} seed {seed}: trained_clip[{m}] failed")
    if not materialize([benchmark_scores], **kw).success:
        raise SystemExit(f"{name} seed {seed}: benchmark_scores failed")
    return retrain


def retrain(h: Path, name: str, seed: int, n: int, repeats: int, methods: list[str]) -> None:
    """`--stage retrain` on one finished home: trained_clip for `methods` (a contiguous run of partitions, in one
    Dagster run as `tads run` trains them) with `repeats` training seeds, checkpoints of an unchanged subset and
    recipe kept; then benchmark_scores (each method's mean over its seeds)."""
    from dagster import DagsterInstance

    from tads_assets.local import RANGE_END, RANGE_START, materialize
    from tads_assets.train_eval import benchmark_scores, trained_clip

    if not (h / "reports" / "benchmark.json").exists():
        raise SystemExit(f"{h} has no finished run to train again: run --stage all first")
    kw = {"resources": home_resources(h, name, seed, n)[1], "instance": DagsterInstance.from_config(str(h / "dagster"))}
    config = {"ops": {"trained_clip": {"config": {"repeats": repeats}}}}
    if not materialize([trained_clip], tags={RANGE_START: methods[0], RANGE_END: methods[-1]}, run_config=config,
                       **kw).success:
        raise SystemExit(f"{name} seed {seed}: trained_clip failed")
    if not materialize([benchmark_scores], **kw).success:
        raise SystemExit(f"{name} seed {seed}: benchmark_scores failed")


def contiguous(methods: list[str] | None) -> list[str]:
    """`methods` in partition order (None: every partition); they must be a contiguous run of trained_clip's
    partitions (one range run)."""
    from tads_assets.train_eval import training_partitions

    keys = training_partitions.get_partition_keys()
    methods = methods or keys
    unknown = sorted(set(methods) - set(keys))
    if unknown:
        raise SystemExit(f"--methods: {', '.join(unknown)} not a trained_clip partition ({', '.join(keys)})")
    picked = sorted(set(methods), key=keys.index)
    if keys.index(picked[-1]) - keys.index(picked[0]) + 1 != len(picked):
        raise SystemExit(f"--methods must be a contiguous run of {', '.join(keys)}; got {', '.join(picked)}")
    return picked


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores `pos` above `neg` (Mann-Whitney, ties half)."""
    if not len(pos) or not len(neg):
        return float("nan")
    both = np.concatenate([pos, neg])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both[np.r_[False, np.diff(both[order]) == 0]] if len(both) > 1 else []):
        ranks[both == v] = ranks[both == v].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def graph_figures(h: Path) -> dict:
    """Per-stage truth figures of a finished `tads run` under `h`."""
    cat = Catalog(h)
    pool, _, _ = load(h)
    kept = set(cat.deduped_pool.read(["uid"])["uid"].to_list())
    f = dedup_figures(pool, SimpleNamespace(kept=np.array([u in kept for u in pool["uid"].to_list()])))
    q = pl.read_parquet(cat.quality_scores.path, columns=["uid", "quality"]).join(
        pool.select("uid", "kind"), on="uid")
    clean = q.filter(pl.col("kind") == "clean")["quality"].to_numpy()
    noisy = q.filter(pl.col("kind").is_in(NOISY))
    per_kind = {k: auc(clean, noisy.filter(pl.col("kind") == k)["quality"].to_numpy())
                for k in NOISY if noisy.filter(pl.col("kind") == k).height}
    subset = cat.final_subset.read(["uid"]).join(pool.select("uid", "kind"), on="uid")
    report = json.loads(cat.benchmark_scores.file("json").read_text())
    return {"exact": f["exact_removed"], "near": f["near_removed"], "clean_removed": f["clean_false_removed"],
            "dedup_removed": 1 - f["kept"] / f["n"], "q_auc": auc(clean, noisy["quality"].to_numpy()),
            "q_auc_min_kind": min(per_kind.items(), key=lambda kv: kv[1]) if per_kind else ("", float("nan")),
            "subset": subset.height, "subset_clean": float((subset["kind"] == "clean").mean()),
            "table1": {r["method"]: r["average"] for r in report["rows"]},
            "table1_sd": {r["method"]: r.get("average_sd") for r in report["rows"]},
            "columns": columns(report), "prior": prior_note(cat)}


def prior_note(cat: Catalog) -> str:
    """The static row trained_dvn's θ₀ started from, and (prior "auto") each candidate's target J on validation."""
    path = cat.trained_dvn.models / DVN_INFO
    if not path.exists():
        return "no trained_dvn"
    info = json.loads(path.read_text())
    trials = info.get("prior_trials") or []
    return f"{info.get('prior')}" + (" of " + ", ".join(f"{t['row']} {t['J target (validation)']:.4f}" for t in trials)
                                     + " (target J on validation)" if trials else "")


def columns(report: dict) -> list[str]:
    """The benchmark's metric columns, each classification column with its named classes' count."""
    tasks = report.get("metric_definitions", {}).get("tasks", {})
    named = {t: d["classes"] for t, d in tasks.items() if d.get("kind") == "classification"}
    cols = sorted(k for k in report["rows"][0] if "/" in k) if report["rows"] else []
    return [f"{c} ({named[c.split('/')[0]]} classes)" if c.split("/")[0] in named else c for c in cols]


def column_note(runs: list[dict], seeds: list[int]) -> list[str]:
    """Where the seeds' benchmarks average different metric columns (the naming rule names a class on one seed's
    pool and not another's), the mean over seeds mixes different averages: say so, and give TADS's per-seed
    differences, which compare like with like."""
    if len({tuple(r["columns"]) for r in runs}) == 1:
        return []
    lines = ["the seeds' averages are over different columns, so the mean over seeds mixes them: "
             + "; ".join(f"seed {s}: {', '.join(r['columns'])}" for s, r in zip(seeds, runs)),
             "TADS minus each method per seed (mean +- std of the differences):"]
    for m in runs[0]["table1"]:
        if m not in ("tads", "chance") and all(m in r["table1"] for r in runs):
            d = [r["table1"]["tads"] - r["table1"][m] for r in runs]
            a, sd = mean_std(d)
            lines.append(f"  tads - {m}: {a:+.2f} +- {sd:.2f} ({', '.join(f'{x:+.2f}' for x in d)})")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("dedup", "quality", "all", "select", "retrain", "rescore", "report"),
                   default="dedup")
    p.add_argument("--pools", nargs="*", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--rules", nargs="*", default=list(dedup.REDUNDANCY_MODES), choices=dedup.REDUNDANCY_MODES)
    p.add_argument("--root", default=None, help="where the pools' homes go (default $TADS_HOME/zoo)")
    p.add_argument("--reuse", action="store_true", help="dedup stage: keep pool stages already materialized")
    p.add_argument("--repeats", type=int, default=3, help="retrain stage: CLIPs trained per subset (training seeds)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="retrain stage: a contiguous run of trained_clip's partitions (default: all of them)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root).resolve() if args.root else home(None) / "zoo"
    t_all = time.perf_counter()
    methods = contiguous(args.methods) if args.stage == "retrain" else None
    results: dict[str, list[dict]] = {}
    for name in args.pools:
        for seed in args.seeds:
            h = pool_home(root, name, seed, args.samples)
            tag = f"{name}{' (held out)' if name in HELD_OUT else ''} seed {seed}"
            if args.stage == "dedup":
                reuse = args.reuse and (h / "lance").exists()
                seconds = 0.0 if reuse else pool_stages(h, name, seed, args.samples)
                print(f"\n{tag}: pool stages {seconds:.0f} s ({h})", flush=True)
                print(f"  {'rule':<15} {'exact':>6} {'near':>6} {'clean':>6} {'removed':>7}  {'est':>6}  thresholds")
                for r in dedup_rows(h, args.rules):
                    print(f"  {r['rule']:<15} {100 * r['exact']:6.1f} {100 * r['near']:6.1f} {100 * r['clean']:6.2f} "
                          f"{100 * r['removed']:7.1f}  {100 * r['est']:5.2f}%  {r['taus']}"
                          f"{'' if r['attainable'] else '  (1 % not attainable)'}", flush=True)
                continue
            if args.stage == "quality":
                seconds, weak_meta = quality_stages(h, name, seed, args.samples, args.reuse)
                f = quality_figures(h, weak_meta)
                print(f"\n{tag}: quality stages {seconds:.0f} s ({h}); {100 * f['clean_share']:.1f} % of the "
                      f"deduplicated pool clean; inverted LFs: {f['inverted'] or 'none'}")
                for col in ("quality", "y_weak"):
                    print(f"  ROC-AUC {col:<8} " + ", ".join(f"{k} {v:.3f}" for k, v in f[col].items()), flush=True)
                continue
            t0 = time.perf_counter()
            if args.stage == "rescore":
                rescore(h, name, seed, args.samples)
            elif args.stage == "retrain":
                retrain(h, name, seed, args.samples, args.repeats, methods)
            elif args.stage == "select":
                print(f"{tag}: trained_clip again for {', '.join(reselect(h, name, seed, args.samples)) or 'none'}",
                      flush=True)
            elif args.stage == "report":
                if not (h / "reports" / "benchmark.json").exists():
                    raise SystemExit(f"{h} has no finished run: run --stage all first")
            else:
                run = subprocess.run([str(Path(sys.executable).parent / "tads"), "run"],
                                     env=environment(h, name, seed, args.samples), capture_output=True, text=True)
                if run.returncode:
                    print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
                    raise SystemExit(f"{tag}: tads run failed (rc {run.returncode})")
            g = graph_figures(h)
            results.setdefault(name, []).append(g)
            kind, worst = g["q_auc_min_kind"]
            done = {"rescore": "rescored", "report": "read", "select": "selected again",
                    "retrain": f"trained again ({args.repeats} seeds)"}.get(args.stage, "tads run")
            print(f"\n{tag}: {done} {time.perf_counter() - t0:.0f} s ({h})\n"
                  f"  dedup: exact {100 * g['exact']:.1f} %, near {100 * g['near']:.1f} %, clean removed "
                  f"{100 * g['clean_removed']:.2f} %, removed {100 * g['dedup_removed']:.1f} % of the pool\n"
                  f"  q_phi ROC-AUC clean vs noisy {g['q_auc']:.3f} (weakest: {kind} {worst:.3f})\n"
                  f"  final subset {g['subset']} samples, {100 * g['subset_clean']:.1f} % clean; θ₀ row {g['prior']}\n"
                  "  Table 1 average: " + ", ".join(
                      f"{m} {v:.2f}" + (f" ({g['table1_sd'][m]:.2f})" if g["table1_sd"].get(m) is not None else "")
                      for m, v in sorted(g["table1"].items(), key=lambda kv: -kv[1]))
                  + (" (in brackets: std over training seeds)" if any(g["table1_sd"].values()) else ""), flush=True)
    if args.stage in ("all", "select", "retrain", "rescore", "report") and len(args.seeds) > 1:
        print(f"\nTable 1 average over seeds {', '.join(map(str, args.seeds))} (mean +- std)")
        for name, runs in results.items():
            methods = runs[0]["table1"]
            per_seed = {m: [r["table1"][m] for r in runs] for m in methods}
            cells = {m: mean_std(values) for m, values in per_seed.items()}
            print(f"  {name:<15} " + ", ".join(f"{m} {a:.2f} +- {s:.2f}" for m, (a, s) in
                                               sorted(cells.items(), key=lambda kv: -kv[1][0])))
            for line in criteria(name, cells, per_seed) + column_note(runs, args.seeds):
                print(f"    {line}")
    print(f"\nzoo: {time.perf_counter() - t_all:.0f} s in all")


if __name__ == "__main__":
    main()
