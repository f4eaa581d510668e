"""Deduplication quality on the demo pool against its truth labels (issue: encoder + dedup).

    make demo                                   # materializes raw_pool, clip_encoder, pool_embeddings
    .venv/bin/python benchmarks/dedup_quality.py [--home .tads]

Prints, for the default DedupParams:
- exact duplicates removed: share of exact_duplicate samples that were dropped or are the only survivor
  of their group (the original plus everything duplicating it);
- near duplicates removed: the same for near_duplicate samples;
- clean unique samples wrongly removed: clean samples that no other sample duplicates, yet were removed;
- per-layer removal counts, and every noise kind's removal share (dedup should not target them);
- the builtin encoder's image->text / text->image R@1 on the retrieval task's test set, beside chance.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home, load_demo_pool_with_vectors  # noqa: E402

from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.method import dedup  # noqa: E402
from tads_assets.core.method.encoder import BuiltinEncoder, load_heads, retrieval_recall_at  # noqa: E402


def dedup_figures(pool: pl.DataFrame, outcome: dedup.DedupOutcome) -> dict:
    kept = dict(zip(pool["uid"].to_list(), outcome.kept.tolist()))
    kinds = pool["kind"].to_numpy()
    removed = ~outcome.kept

    # a duplicate's group: its original plus every sample that duplicates that original
    # (an exact duplicate's group holds only exact copies; a near duplicate's group holds every copy)
    groups: dict[tuple[str, str], list[str]] = {}
    for u, o, k in zip(pool["uid"].to_list(), pool["duplicate_of"].to_list(), pool["kind"].to_list()):
        if o is not None:
            groups.setdefault(("near_duplicate", o), [o]).append(u)
            if k == "exact_duplicate":
                groups.setdefault(("exact_duplicate", o), [o]).append(u)

    def pair_rate(kind: str) -> tuple[float, int]:
        """A duplicate counts as removed when it was dropped, or when it is its group's only survivor."""
        rows = pool.filter(pl.col("kind") == kind)
        hits = []
        for u, o in zip(rows["uid"], rows["duplicate_of"]):
            if u not in kept:
                continue
            others = [m for m in groups[(kind, o)] if m != u and kept.get(m, False)]
            hits.append((not kept[u]) or not others)
        return (float(np.mean(hits)) if hits else float("nan")), len(hits)

    originals = set(pool["duplicate_of"].drop_nulls().to_list())
    unique_clean = (kinds == "clean") & ~np.isin(pool["uid"].to_numpy(), list(originals))
    exact, n_exact = pair_rate("exact_duplicate")
    near, n_near = pair_rate("near_duplicate")
    return {"exact_removed": exact, "n_exact": n_exact, "near_removed": near, "n_near": n_near,
            "clean_false_removed": float(removed[unique_clean].mean()), "n_clean_unique": int(unique_clean.sum()),
            "kept": int(outcome.kept.sum()), "n": len(kinds),
            "by_kind": {k: float(removed[kinds == k].mean()) for k in sorted(set(kinds.tolist()))}}


def retrieval_figures(tads_home: Path) -> tuple[float, float, float, int]:
    cat = Catalog(tads_home)
    info = cat.clip_encoder.info()
    if info["kind"] != "builtin":
        raise SystemExit("retrieval figure is for the builtin encoder")
    enc = BuiltinEncoder(load_heads(cat.clip_encoder.file(info["heads"])))
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(cat.demo_dir / "test" / "captions.tar") as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    keys = sorted(members)
    images = [Image.open(io.BytesIO(members[k]["jpg"])) for k in keys]
    captions = [members[k]["txt"].decode() for k in keys]
    i2t, t2i = retrieval_recall_at(enc.encode_images(images), enc.encode_texts(captions), 1)
    return i2t, t2i, 1.0 / len(keys), len(keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None, help="TADS_HOME with a materialized demo (default $TADS_HOME or .tads)")
    p.add_argument("--skip-retrieval", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tads_home = home(args.home)
    pool, image, text = load_demo_pool_with_vectors(tads_home)
    tiny = dedup.tiny_image_vectors(pool["tiny"].to_list())
    params = dedup.DedupParams()
    t0 = time.perf_counter()
    outcome = dedup.deduplicate(pool["sha256"].to_numpy(), pool["url"].to_numpy(), pool["caption"].to_list(),
                                pool["width"].to_numpy(), pool["height"].to_numpy(), image, text, params, tiny_vec=tiny,
                                progress=lambda m: None)
    seconds = time.perf_counter() - t0
    f = dedup_figures(pool, outcome)
    print(f"deduplication of {f['n']} samples -> {f['kept']} kept in {seconds:.1f} s; params {params}")
    for layer in outcome.layers:
        print(f"  {layer.name:<20} removed {int(layer.removed.sum()):>5}  {layer.extra}")
    print(f"exact duplicates removed:          {100 * f['exact_removed']:6.2f} %  (of {f['n_exact']}; target 100 %)")
    print(f"near duplicates removed:           {100 * f['near_removed']:6.2f} %  (of {f['n_near']}; target >= 90 %)")
    print(f"clean unique samples removed:      {100 * f['clean_false_removed']:6.2f} %  (of {f['n_clean_unique']}; target <= 1 %)")
    print("removal share by truth kind: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in f["by_kind"].items()))
    if not args.skip_retrieval:
        i2t, t2i, chance, n = retrieval_figures(tads_home)
        print(f"builtin encoder, retrieval task test set ({n} pairs): image->text R@1 {100 * i2t:.1f} %, "
              f"text->image R@1 {100 * t2i:.1f} %, chance {100 * chance:.2f} %")


if __name__ == "__main__":
    main()
