"""Shared loading for the benchmark scripts: a materialized TADS_HOME on the demo pool, read through its catalogue
(`tads_assets.core.io.catalog`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

import tads_assets  # noqa: F401  (first: the torchvision shim)
from tads_assets.core.harness import benchmark, clip_train
from tads_assets.core.io import eval_sets
from tads_assets.core.io.catalog import Catalog
from tads_assets.core.io.embeddings import load_signals, pool_with_vectors
from tads_assets.core.io.tasks import load_task_set
from tads_assets.core.method.dvn import DVN_INFO
from tads_assets.core.method.selection import Signals


def home(arg: str | None) -> Path:
    return Path(arg or os.environ.get("TADS_HOME", ".tads")).resolve()


def demo_truth(cat: Catalog) -> Path:
    """The demo generator's truth labels (uid, kind, duplicate_of, source, label, lang) of the demo pool."""
    return cat.demo_dir / "truth.parquet"


def load_demo_pool_with_vectors(tads_home: Path) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """raw_pool joined with its embeddings and the demo truth; fails with the command that makes them."""
    cat = Catalog(tads_home)
    truth_path = demo_truth(cat)
    if not truth_path.exists() or not cat.lance_dir.exists():
        raise SystemExit(f"{tads_home} holds no materialized demo pool with embeddings: run `make demo` first "
                         "(or pass --home)")
    pool, (image, text) = pool_with_vectors(cat.raw_pool.dir, cat.pool_embeddings.connect())
    truth = pl.read_parquet(truth_path).select("uid", "kind", "duplicate_of", "source", "label")
    pool = pool.join(truth, on="uid", how="left", maintain_order="left")
    return pool, image, text


def home_signals(cat: Catalog) -> Signals:
    """The deduplicated pool's per-sample signals (q_φ, relevance, diversity, alignment) of a finished home."""
    return load_signals(cat.quality_scores.path, cat.relevance_vectors.connect(), cat.cluster_diversity.path,
                        cat.pool_embeddings.connect())


def dvn_info(cat: Catalog) -> dict:
    """What trained_dvn recorded (dvn_info.json): θ₀'s row, its candidates' trials, the FDO budget rate, ..."""
    return json.loads((cat.trained_dvn.models / DVN_INFO).read_text())


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


class SubsetTrainer:
    """Trains a CLIP from scratch on a subset of the pool and scores it zero-shot on the tasks' test sets, the
    way trained_clip + benchmark_scores do, with the pool's images decoded and preprocessed once for all runs."""

    def __init__(self, tads_home: Path, model: str, budget: int, tasks_path: str | None = None, cache: bool = True):
        t0 = time.perf_counter()
        cat = Catalog(tads_home)
        self.model, self.budget = model, budget
        pool = cat.raw_pool.scan().select("uid", "caption", "bytes").collect()
        self.row_of = {u: i for i, u in enumerate(pool["uid"].to_list())}
        tasks_path = Path(tasks_path or cat.demo_dir / "tasks.yaml")
        self.tasks = load_task_set(tasks_path)
        # a run's row is a function of these (CPU training is deterministic for a given thread count), so
        # table1 and table2 share runs of equal subsets through TADS_HOME/reports/runs_cache.jsonl
        self._cache_path = reports_dir(tads_home) / "runs_cache.jsonl" if cache else None
        self._cache_key = {"model": model, "budget": budget, "threads": torch_threads(),
                           "metrics": benchmark.METRICS_VERSION,
                           "tasks_sha256": hashlib.sha256(tasks_path.read_bytes()).hexdigest(),
                           "raw_pool": sorted(p.name for p in cat.raw_pool.dir.glob("*.parquet"))}
        self.eval_sets = eval_sets.load_eval_sets(self.tasks, "test")
        _, preprocess, tokenizer = clip_train.create_model(model)
        self.images = clip_train.preprocess_images(pool["bytes"].to_list(), preprocess, progress=lambda m: None)
        self.tokens = tokenizer(pool["caption"].to_list())
        self.vocabulary = benchmark.Vocabulary.of_captions(pool["caption"].to_list(), tokenizer)  # as benchmark_scores
        self.chance = None
        self.prepare_seconds = time.perf_counter() - t0

    def _cached(self, key: dict) -> dict | None:
        """The last cached row of `key` (a later one may add the validation scores)."""
        if self._cache_path is None or not self._cache_path.exists():
            return None
        found = None
        for line in self._cache_path.read_text().splitlines():
            entry = json.loads(line)
            if entry["key"] == key:
                self.chance = self.chance or entry["chance"]
                found = entry["row"]
        return found

    def run(self, uids, seed: int, validate=None) -> dict:
        """Table columns (percent) of a CLIP trained with `seed` on the given uids (from the runs cache when
        this very subset was trained with this seed, model, budget, task set and thread count before).
        `validate(encoder) -> {task: Eval_k}`: also scores the model on the tasks' validation sets (Algorithm 1's
        scoring), kept in the row as "validation" (a cached row without it is trained again)."""
        key = {**self._cache_key, "seed": seed, "uids_sha256": uids_digest(uids)}
        row = self._cached(key)
        if row is not None and (validate is None or "validation" in row):
            return {**row, "cached": True}
        idx = torch.as_tensor([self.row_of[u] for u in uids])
        params = clip_train.TrainParams(model=self.model, budget_samples_seen=self.budget, seed=seed)
        torch.manual_seed(seed)
        model, preprocess, tokenizer = clip_train.create_model(self.model)
        res = clip_train.train_on_tensors(model, self.images[idx], self.tokens[idx], params, progress=lambda m: None)
        enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer)
        scores = benchmark.evaluate_model(self.tasks, self.eval_sets, enc.encode_images, enc.encode_texts,
                                          self.vocabulary, res.samples_seen)
        self.chance = self.chance or benchmark.chance_row(scores)
        row = {"samples": len(idx), "samples_seen": res.samples_seen, **benchmark.headline(scores)}
        if validate is not None:
            row["validation"] = validate(enc)
        if self._cache_path is not None:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self._cache_path.open("a") as f:
                f.write(json.dumps({"key": key, "row": row, "chance": self.chance}) + "\n")
        return row


def took(row: dict, t0: float) -> str:
    """'cached' for a row from the runs cache, else the seconds since t0."""
    return "cached" if row.get("cached") else f"{time.perf_counter() - t0:.0f}s"


def torch_threads() -> int:
    return torch.get_num_threads()


def summarise(results: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    """(markdown rows 'mean ± std', summary {method: {column: {mean, std}}}) of per-seed rows."""
    first = next(iter(results.values()))[0]
    columns = [c for c in first if c not in ("samples", "samples_seen", "cached", "validation")]
    table, summary = [], {}
    for method, rows in results.items():
        stats = {c: mean_std([r[c] for r in rows]) for c in columns}
        summary[method] = {"samples": rows[0]["samples"], "samples_seen": rows[0]["samples_seen"],
                           **{c: {"mean": m, "std": s} for c, (m, s) in stats.items()}}
        table.append({"method": method, "samples": rows[0]["samples"],
                      **{c: f"{m:.1f} ± {s:.1f}" for c, (m, s) in stats.items()}})
    return table, summary


def beats(summary: dict, a: str, b: str) -> dict:
    """Whether a's mean average exceeds b's by more than the larger of their stds across seeds."""
    x, y = summary[a]["average"], summary[b]["average"]
    delta, one_std = x["mean"] - y["mean"], max(x["std"], y["std"])
    return {"method": a, "versus": b, "delta": delta, "one_std": one_std, "beats": delta > one_std,
            "at_least": delta >= 0}


def reports_dir(tads_home: Path) -> Path:
    """Where the benchmark scripts write: TADS_HOME/reports, beside benchmark_scores' report."""
    return Catalog(tads_home).benchmark_scores.dir


def write_report(tads_home: Path, name: str, md: str, payload: dict, t_start: float) -> None:
    """Print the total time and write TADS_HOME/reports/<name>.md and .json (the JSON gets `minutes`)."""
    minutes = (time.perf_counter() - t_start) / 60
    print(f"\ntotal {minutes:.1f} min")
    reports = reports_dir(tads_home)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{name}.md").write_text(md + "\n")
    (reports / f"{name}.json").write_text(json.dumps({**payload, "minutes": minutes}, indent=2))


def uids_digest(uids) -> str:
    """A fingerprint of a subset (order-free), so a later script can tell it is looking at the same one."""
    return hashlib.sha256("\n".join(sorted(map(str, uids))).encode()).hexdigest()
