import csv
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from tads_assets.core import clip_train


def pairs(n=48, seed=0):
    """Coloured squares named by their colour: a pairing a CLIP can learn."""
    rng = np.random.default_rng(seed)
    names = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
    blobs, caps = [], []
    for i in range(n):
        name = list(names)[i % 4]
        img = Image.new("RGB", (48, 40), (240, 240, 240))
        x, y = rng.integers(0, 20, 2)
        img.paste(names[name], (int(x), int(y), int(x) + 24, int(y) + 20))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        blobs.append(buf.getvalue())
        caps.append(f"a {name} square")
    return blobs, caps


def test_training_is_deterministic_on_cpu_and_honours_the_budget():
    blobs, caps = pairs()
    params = clip_train.TrainParams(budget_samples_seen=96, batch_size=16, warmup_steps=2, seed=3)
    a = clip_train.train_clip(blobs, caps, params, progress=lambda m: None)
    b = clip_train.train_clip(blobs, caps, params, progress=lambda m: None)
    assert a.steps == 6 and a.epochs == pytest.approx(2.0)
    assert a.loss_per_step == b.loss_per_step and all(np.isfinite(a.loss_per_step))
    other = clip_train.train_clip(blobs, caps, clip_train.TrainParams(budget_samples_seen=96, batch_size=16,
                                                                      warmup_steps=2, seed=4), progress=lambda m: None)
    assert other.loss_per_step != a.loss_per_step


def test_a_smaller_subset_gets_more_epochs_for_the_same_budget():
    blobs, caps = pairs()
    params = clip_train.TrainParams(budget_samples_seen=64, batch_size=16, warmup_steps=1)
    full = clip_train.train_clip(blobs, caps, params, progress=lambda m: None)
    half = clip_train.train_clip(blobs[:24], caps[:24], params, progress=lambda m: None)
    assert full.steps == half.steps == 4 and half.epochs == pytest.approx(2 * full.epochs)


def test_training_learns_the_pairing():
    blobs, caps = pairs(64)
    params = clip_train.TrainParams(budget_samples_seen=64 * 40, batch_size=32, lr=2e-3, warmup_steps=5)
    res = clip_train.train_clip(blobs, caps, params, progress=lambda m: None)
    assert np.mean(res.loss_per_step[-5:]) < 0.7 * np.mean(res.loss_per_step[:5])
    model, preprocess, tokenizer = clip_train.create_model()
    enc = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer)
    images = [Image.open(io.BytesIO(b)) for b in blobs[:8]]
    sims = enc.encode_images(images) @ enc.encode_texts(["a red square", "a green square", "a blue square",
                                                        "a yellow square"]).T
    assert (sims.argmax(axis=1) == np.arange(8) % 4).mean() >= 0.75


def test_export_writes_webdataset_shards_and_an_open_clip_csv(tmp_path):
    blobs, caps = pairs(5)
    uids = [f"{i:09d}" for i in range(5)]
    out = clip_train.export_subset(uids, blobs, ["png"] * 5, caps, tmp_path / "subset", shard_size=2)
    assert out["samples"] == 5 and out["shards"] == 3
    with tarfile.open(tmp_path / "subset" / "shards" / "00000.tar") as tar:
        assert tar.getnames() == ["000000000.png", "000000000.txt", "000000001.png", "000000001.txt"]
    with open(tmp_path / "subset" / "subset.csv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["title"] for r in rows] == caps
    assert all(open(r["filepath"], "rb").read() == b for r, b in zip(rows, blobs))
