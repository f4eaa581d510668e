import csv
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from tads_assets.core.harness import clip_train


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


def _trained(compact_vocabulary: bool, channels_last: bool, steps: int = 6):
    import torch

    blobs, caps = pairs()
    params = clip_train.TrainParams(budget_samples_seen=16 * steps, batch_size=16, warmup_steps=2, seed=3)
    torch.manual_seed(params.seed)
    model, preprocess, tokenizer = clip_train.create_model()
    initial = model.token_embedding.weight.detach().clone()
    tokens = tokenizer(caps)
    res = clip_train.train_on_tensors(model, clip_train.preprocess_images(blobs, preprocess, lambda m: None), tokens,
                                      params, progress=lambda m: None, compact_vocabulary=compact_vocabulary,
                                      channels_last=channels_last)
    return res, initial, torch.unique(tokens)


def test_the_compact_vocabulary_trains_the_same_weights_as_the_full_table():
    import torch

    dense, initial, used = _trained(compact_vocabulary=False, channels_last=False)
    compact, _, _ = _trained(compact_vocabulary=True, channels_last=False)
    assert compact.loss_per_step == dense.loss_per_step
    assert compact.model.token_embedding.weight.shape == initial.shape  # the full table is back in the model
    a, b = dense.model.state_dict(), compact.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "token_embedding.weight")
    emb_a, emb_b = a["token_embedding.weight"], b["token_embedding.weight"]
    assert torch.equal(emb_a[used], emb_b[used])  # the trained rows bit for bit
    unused = torch.ones(len(initial), dtype=torch.bool)
    unused[used] = False
    assert torch.allclose(emb_a[unused], emb_b[unused], rtol=1e-6, atol=0)  # the others decayed alike
    assert not torch.equal(emb_b[unused], initial[unused])  # ... and decayed at all


def test_channels_last_convolutions_train_the_same_model_to_float_rounding():
    import torch

    contiguous, _, _ = _trained(compact_vocabulary=True, channels_last=False)
    last, _, _ = _trained(compact_vocabulary=True, channels_last=True)
    # Adam amplifies rounding differences in its first steps (each update is about lr in size whatever the gradient)
    assert np.allclose(last.loss_per_step, contiguous.loss_per_step, rtol=2e-3)
    assert all(p.is_contiguous() for p in last.model.parameters())  # back to the default layout after training
    # Adam moves a weight whose gradient is near zero by about lr either way, so single weights may differ by a few lr;
    # what the two models compute agrees
    blobs, caps = pairs(8, seed=5)
    _, preprocess, tokenizer = clip_train.create_model()
    with torch.no_grad():
        images = clip_train.preprocess_images(blobs, preprocess, lambda m: None)
        for encode, x in (("encode_image", images), ("encode_text", tokenizer(caps))):
            cos = (getattr(contiguous.model, encode)(x, normalize=True) * getattr(last.model, encode)(x, normalize=True)).sum(1)
            assert float(cos.min()) > 0.999, (encode, cos)


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
    # 8 captions per colour in a batch of 32 are identical, so ln 8 is the lowest loss there is
    floor = np.log(32 / 4)
    assert res.loss_per_step[0] > 1.3 * floor and np.mean(res.loss_per_step[-5:]) < 1.05 * floor
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


def test_samples_seen_is_the_budget_whatever_the_subset_size():
    blobs, caps = pairs(48)
    params = clip_train.TrainParams(budget_samples_seen=96, batch_size=16, warmup_steps=1)
    seen = {n: clip_train.train_clip(blobs[:n], caps[:n], params, progress=lambda m: None).samples_seen
            for n in (16, 30, 48)}
    assert set(seen.values()) == {96}


def test_a_saved_model_loads_back_to_the_same_embeddings(tmp_path):
    blobs, caps = pairs(16)
    params = clip_train.TrainParams(budget_samples_seen=32, batch_size=16, warmup_steps=1)
    res = clip_train.train_clip(blobs, caps, params, progress=lambda m: None)
    info = clip_train.save_trained(res, params, tmp_path / "m", {"method": "random"})
    assert info["samples_seen"] == 32 and (tmp_path / "m" / "model_config" / "TADS-Tiny-RN.json").exists()
    loaded, stored = clip_train.load_trained(tmp_path / "m")
    _, preprocess, tokenizer = clip_train.create_model()
    original = clip_train.ClipModelEncoder(res.model, preprocess, tokenizer)
    images = [Image.open(io.BytesIO(b)) for b in blobs[:4]]
    assert np.allclose(loaded.encode_images(images), original.encode_images(images), atol=1e-6)
    assert np.allclose(loaded.encode_texts(caps[:4]), original.encode_texts(caps[:4]), atol=1e-6)
    assert stored["method"] == "random" and stored["params"]["model"] == "TADS-Tiny-RN"
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.bin"))


def test_an_unknown_model_config_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown CLIP model config 'TADS-Huge'.*TADS-Tiny-RN"):
        clip_train.create_model("TADS-Huge")


def test_a_training_key_changes_with_the_subsets_content_order_recipe_and_threads():
    import torch

    base = clip_train.pairs_digest(["a", "b"], ["a cat", "a dog"], [b"\x01", b"\x02"])
    assert base != clip_train.pairs_digest(["b", "a"], ["a dog", "a cat"], [b"\x02", b"\x01"])  # the order seeds epochs
    assert base != clip_train.pairs_digest(["a", "b"], ["a cat", "a dog!"], [b"\x01", b"\x02"])
    assert base != clip_train.pairs_digest(["a", "b"], ["a cat", "a dog"], [b"\x01", b"\x03"])
    assert base != clip_train.pairs_digest(["a", "b"], ["a ca", "ta dog"], [b"\x01", b"\x02"])  # boundaries count
    with pytest.raises(ValueError):
        clip_train.pairs_digest(["a"], ["a cat", "a dog"], [b"\x01", b"\x02"])
    key = clip_train.training_key(base, "cpu", seed=0, budget_samples_seen=256)
    assert key == clip_train.training_key(base, "cpu", budget_samples_seen=256, seed=0)
    assert key != clip_train.training_key(base, "cpu", seed=1, budget_samples_seen=256)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # CPU training is deterministic for a thread count only
        assert key != clip_train.training_key(base, "cpu", seed=0, budget_samples_seen=256)
    finally:
        torch.set_num_threads(threads)


def test_a_checkpoint_is_kept_only_under_its_own_key(tmp_path):
    params = clip_train.TrainParams(budget_samples_seen=16, batch_size=8, warmup_steps=1)
    res = clip_train.train_clip(*pairs(8), params)
    clip_train.save_trained(res, params, tmp_path / "m", {"key": "k1"})
    assert clip_train.kept_checkpoint(tmp_path / "m", "k1")["key"] == "k1"
    assert clip_train.kept_checkpoint(tmp_path / "m", "k2") is None
    (tmp_path / "m" / clip_train.CHECKPOINT).unlink()
    assert clip_train.kept_checkpoint(tmp_path / "m", "k1") is None
    assert clip_train.kept_checkpoint(tmp_path / "nothing", "k1") is None
