"""Intrinsic quality on the demo pool against its truth labels (issue: quality).

    make demo                                   # materializes feature_table, weak_labels, quality_scores
    .venv/bin/python benchmarks/quality_quality.py [--home .tads]

Prints, over the deduplicated pool:
- ROC-AUC of q_φ for clean vs noisy (misaligned, text_heavy, blurred, non_english, vague, low_resolution),
  overall and per noise kind (clean vs that kind);
- the same for ŷ_weak alone and for every single labelling function (its vote as a score: good 1,
  abstain 0.5, bad 0), so the hybrid objective has to earn its place;
- fastText language-id accuracy on the `non_english` kind (truth: the generator's language).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_truth, home  # noqa: E402

from tads_assets.core.io.catalog import Catalog  # noqa: E402

NOISY = ("misaligned", "text_heavy", "blurred", "non_english", "vague", "low_resolution")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    args = p.parse_args()
    cat = Catalog(home(args.home))
    truth_path = demo_truth(cat)
    for f in (cat.quality_scores.path, cat.weak_labels.path, cat.feature_table.path, truth_path):
        if not f.exists():
            raise SystemExit(f"{f} missing: run `make demo` first (or pass --home)")
    truth = pl.read_parquet(truth_path).select("uid", "kind", "lang")
    frame = (cat.quality_scores.read().join(cat.weak_labels.read(), on="uid")
             .join(cat.feature_table.read().select("uid", pl.col("lang").alias("lang_pred")), on="uid")
             .join(truth, on="uid"))
    lf_cols = [c for c in frame.columns if c.startswith("lf_")]
    kinds = frame["kind"].to_numpy()
    scope = np.isin(kinds, ("clean", *NOISY))
    f = frame.filter(pl.Series(scope))
    clean = (f["kind"] == "clean").to_numpy().astype(int)

    def scores(col: str) -> np.ndarray:
        v = f[col].to_numpy().astype(float)
        return np.where(v == -1, 0.5, v) if col.startswith("lf_") else v

    rows = []
    for name in ["quality", "y_weak", *lf_cols]:
        s = scores(name)
        row = {"scorer": "q_phi" if name == "quality" else name, "overall": auc(clean, s)}
        for k in NOISY:
            m = (f["kind"] == "clean").to_numpy() | (f["kind"] == k).to_numpy()
            row[k] = auc(clean[m], s[m])
        rows.append(row)
    cols = ["scorer", "overall", *NOISY]
    print(f"deduplicated pool: {frame.height} samples; scored here: {f.height} "
          f"({int(clean.sum())} clean, {int((1 - clean).sum())} noisy)")
    print("ROC-AUC, clean vs noisy (overall) and clean vs each kind")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>14}" if isinstance(r[c], str) else f"{r[c]:>14.3f}" for c in cols))
    best_lf = max(rows[2:], key=lambda r: r["overall"])
    q, w = rows[0]["overall"], rows[1]["overall"]
    print(f"\nq_phi AUC {q:.3f} (target >= 0.90: {'met' if q >= 0.9 else 'NOT met'}); "
          f"y_weak alone {w:.3f}; best single LF {best_lf['scorer']} {best_lf['overall']:.3f}; "
          f"q_phi beats both: {'yes' if q > w and q > best_lf['overall'] else 'NO'}")
    ne = frame.filter(pl.col("kind") == "non_english")
    acc = float((ne["lang_pred"] == ne["lang"]).mean()) if ne.height else float("nan")
    print(f"fastText language id on non_english: {acc:.1%} of {ne.height} "
          f"(target >= 95 %: {'met' if acc >= 0.95 else 'NOT met'})")
    by_lang = ne.group_by("lang").agg((pl.col("lang_pred") == pl.col("lang")).mean().alias("accuracy"), pl.len())
    for r in by_lang.sort("lang").iter_rows(named=True):
        print(f"  {r['lang']}: {r['accuracy']:.1%} of {r['len']}")


if __name__ == "__main__":
    main()
