"""Throughput of the builtin encoder's frozen towers (clip_encoder's per-sample work) on the demo pool.

    make demo            # or any materialized raw_pool
    .venv/bin/python benchmarks/frozen_features.py [--home .tads] [--n 2000] [--repeats 3] [--no-legacy]

Measures rows/s of one row's frozen features — the image and its mirror image through EfficientNet-Lite0 —
and of the text tower (MiniLM), as `embeddings.frozen_features_for_part` computes them: decoding included,
median over `--repeats`, on the first `--n` rows of raw_pool. Two configurations in the same process:

- current: the input side matched to the pool (`ClipEncoder.image_side`, TADS_IMAGE_SIDE to override), the
  runtime `ClipEncoder.tower_runtime` (auto: ONNX Runtime on CPU), image and mirror as one batch, batches of
  `ClipEncoder.tower_batch_size`;
- legacy (the setup before issue 19): 128 px, the image and its mirror decoded and resized twice, the eager
  forward (no TorchScript graph), batches of 16.

Prints the table, the speed-up of current over legacy, and peak RSS. Target (issue 19): >= 180 rows/s image + flip
on the default demo pool on 2 cores.

`--sides 64 96 128` instead measures what the input side costs in quality: per side, the detail loss that
`encoder.detail_matched_side` judges by (90th percentile over the sampled images) and the held-out R@1 of
projection heads trained on the first `--n` pairs' features at that side (`fit_builtin_encoder`, 10 % held out).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import home  # noqa: E402

from resources import ClipEncoder  # noqa: E402
from tads_assets.core.io.catalog import Catalog  # noqa: E402
from tads_assets.core.io.embeddings import decode_images  # noqa: E402
from tads_assets.core.method import encoder as enc  # noqa: E402
from tads_assets.core.method.encoder import FrozenTowers, _Pooled  # noqa: E402


def image_rate(towers: FrozenTowers, blobs: list[bytes], batch: int, one_pass: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for j in range(0, len(blobs), batch):
            images = decode_images(blobs[j : j + batch])
            if one_pass:
                towers.image_and_flip_features(images)
            else:
                towers.image_features(images)
                towers.image_features(images, flip=True)
        times.append(time.perf_counter() - t0)
    return len(blobs) / statistics.median(times)


def side_quality(blobs: list[bytes], captions: list[str], sides: list[int]) -> None:
    towers = FrozenTowers("cpu", sides[0])
    text = towers.text_features(captions)
    errors = enc.detail_errors(decode_images(blobs[:: max(1, len(blobs) // 256)][:256]), sides)
    print("\n| side px | detail loss p90 (RMS share) | images/s | held-out i2t R@1 | t2i R@1 | chance |\n|---:|---:|---:|---:|---:|---:|")
    for side in sides:
        towers = FrozenTowers("cpu", side)
        t0 = time.perf_counter()
        feats = [towers.image_features(decode_images(blobs[j : j + 16])) for j in range(0, len(blobs), 16)]
        rate = len(blobs) / (time.perf_counter() - t0)
        import numpy as np

        _, rep = enc.fit_builtin_encoder(np.concatenate(feats), text, enc.HeadsConfig(), 0.1, progress=lambda m: None)
        print(f"| {side} | {np.quantile(errors[side], enc.DETAIL_QUANTILE):.4f} | {rate:.0f} | {rep.val_i2t_r1:.3f} | "
              f"{rep.val_t2i_r1:.3f} | {rep.chance_r1:.4f} |")
    print(f"detail threshold: {enc.DETAIL_MAX_RMSE} (the smallest side within it is chosen)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None)
    p.add_argument("--n", type=int, default=2000, help="rows of raw_pool to encode")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-legacy", action="store_true", help="skip the legacy configuration")
    p.add_argument("--sides", type=int, nargs="*", help="measure quality per input side instead (e.g. 64 96 128)")
    args = p.parse_args()
    cat = Catalog(home(args.home))
    if not cat.raw_pool.dir.exists():
        raise SystemExit(f"{cat.raw_pool.dir} missing: run `make demo` first (or pass --home)")
    rows = cat.raw_pool.scan().select("bytes", "caption").head(args.n).collect()
    blobs, captions = rows["bytes"].to_list(), rows["caption"].to_list()
    if args.sides:
        side_quality(blobs, captions, args.sides)
        return
    encoder = ClipEncoder()
    side = encoder.image_side(cat.raw_pool)
    print(f"{len(blobs)} rows of {cat.raw_pool.dir}; torch threads {torch.get_num_threads()}; matched side {side} px")
    current = FrozenTowers("cpu", side, runtime=encoder.tower_runtime)
    configs = [("current", current, encoder.tower_batch_size, True)]
    if not args.no_legacy:
        legacy = FrozenTowers("cpu", 128)
        legacy._compiled = _Pooled(legacy.image_model)  # the eager forward
        configs.append(("legacy (128 px, eager, two decodes, batch 16)", legacy, 16, False))
    for _, towers, batch, one_pass in configs:  # warm-up: model load, first allocations
        image_rate(towers, blobs[:64], batch, one_pass, 1)
    rates = {name: image_rate(towers, blobs, batch, one_pass, args.repeats) for name, towers, batch, one_pass in configs}
    current.text_features(captions[:64])  # model load
    t0 = time.perf_counter()
    current.text_features(captions)
    text_rate = len(captions) / (time.perf_counter() - t0)
    print("\n| configuration | side px | image + flip rows/s |\n|---|---:|---:|")
    for name, towers, _, _ in configs:
        print(f"| {name} | {towers.image_size} | {rates[name]:.1f} |")
    print(f"current runtime: {current.runtime_used}")
    print(f"\ntext tower (MiniLM): {text_rate:.1f} captions/s")
    both = 1 / (1 / rates["current"] + 1 / text_rate)
    print(f"a whole row (image + flip + caption), current: {both:.1f} rows/s")
    if len(rates) > 1:
        legacy = rates[configs[1][0]]
        print(f"speed-up of image + flip over legacy: {rates['current'] / legacy:.1f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"target: >= 180 rows/s image + flip (current {rates['current']:.1f})")


if __name__ == "__main__":
    main()
