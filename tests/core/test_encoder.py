import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import tads_assets  # noqa: F401
from tads_assets.core.method import encoder as enc

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_parse_encoder_spec():
    assert enc.parse_encoder_spec("builtin") == ("builtin", "", "")
    assert enc.parse_encoder_spec("open_clip:ViT-B-16:/m/w.bin") == ("open_clip", "ViT-B-16", "/m/w.bin")
    for bad in ("clip", "open_clip:ViT-B-16", "hf:foo:bar"):
        with pytest.raises(ValueError, match="TADS_ENCODER"):
            enc.parse_encoder_spec(bad)


def test_info_nce_is_low_for_aligned_pairs_and_high_for_shuffled():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    scale = torch.tensor(np.log(100.0))
    aligned = enc.info_nce(z, z, scale)
    shuffled = enc.info_nce(z, z[torch.randperm(16, generator=torch.Generator().manual_seed(0))], scale)
    assert aligned < 0.5 < shuffled


def test_retrieval_recall_is_exact_on_a_known_case():
    z = np.eye(5, dtype=np.float32)
    assert enc.retrieval_recall_at(z, z, 1) == (1.0, 1.0)
    assert enc.retrieval_recall_at(z, z[::-1], 1) == (0.2, 0.2)  # only the middle pair matches


def test_heads_learn_a_hidden_pairing_and_generalise():
    rng = np.random.default_rng(0)
    concept = rng.normal(size=(1200, 16)).astype(np.float32)
    img = concept @ rng.normal(size=(16, 64)).astype(np.float32) + 0.05 * rng.normal(size=(1200, 64)).astype(np.float32)
    txt = concept @ rng.normal(size=(16, 24)).astype(np.float32) + 0.05 * rng.normal(size=(1200, 24)).astype(np.float32)
    heads, report = enc.fit_builtin_encoder(img, txt, enc.HeadsConfig(embed_dim=16, hidden_dim=0, epochs=30, lr=1e-2),
                                            val_fraction=0.1)
    assert report.n_val == 120 and report.loss_per_epoch[-1] < report.loss_per_epoch[0]
    assert report.val_i2t_r1 > 0.8 and report.val_t2i_r1 > 0.8  # chance is 1/120


def test_heads_round_trip_through_safetensors(tmp_path):
    heads = enc.ProjectionHeads(enc.HeadsConfig(embed_dim=8, hidden_dim=16))
    path = enc.save_heads(heads, tmp_path / "heads.safetensors")
    again = enc.load_heads(path)
    x = torch.randn(3, enc.IMAGE_FEATURE_DIM)
    assert torch.allclose(heads.embed_images(x), again.embed_images(x))
    assert json.loads(path.with_suffix(".json").read_text())["hidden_dim"] == 16


def test_encoder_info_id_changes_with_the_weights(tmp_path):
    heads = enc.ProjectionHeads(enc.HeadsConfig(embed_dim=8, hidden_dim=0))
    enc.save_heads(heads, tmp_path / "heads.safetensors")
    first = enc.write_encoder_info(tmp_path, {"kind": "builtin", "heads": "heads.safetensors"})
    torch.nn.init.zeros_(heads.image[1].weight)
    enc.save_heads(heads, tmp_path / "heads.safetensors")
    second = enc.write_encoder_info(tmp_path, {"kind": "builtin", "heads": "heads.safetensors"})
    assert first["encoder_id"] != second["encoder_id"] == enc.read_encoder_info(tmp_path)["encoder_id"]


def test_open_clip_weights_load_from_a_local_file(tmp_path):
    import open_clip

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tads-tiny-vit.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "cfg")
    model = open_clip.create_model("tads-tiny-vit", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    loaded = enc.OpenClipEncoder("tads-tiny-vit", str(tmp_path / "tiny.pt"))
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]
    zi = loaded.encode_images(images)
    zt = loaded.encode_texts(["a red square", "a blue square"])
    assert zi.shape == zt.shape == (2, 32)
    assert np.allclose(np.linalg.norm(zi, axis=1), 1, atol=1e-5)
    # the same weights give the same vectors as the model we saved
    with torch.no_grad():
        ref = model.eval().encode_text(open_clip.get_tokenizer("tads-tiny-vit")(["a red square"])).numpy()
    assert np.allclose(enc.l2_normalize(ref)[0], zt[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        enc.OpenClipEncoder("tads-tiny-vit", str(tmp_path / "missing.pt"))


class _RunsCode:
    """Unpickling this would create the marker file: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_bearing_checkpoint_is_refused_without_running_it(tmp_path):
    import open_clip

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tads-tiny-vit.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "cfg")
    state = open_clip.create_model("tads-tiny-vit", pretrained=None).state_dict()
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": state, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt hold pickled Python objects.*refuses.*safetensors"):
        enc.OpenClipEncoder("tads-tiny-vit", str(tmp_path / "evil.pt"))
    assert not marker.exists()
    # the same weights as safetensors load
    from safetensors.torch import save_file

    save_file(state, tmp_path / "tiny.safetensors")
    zt = enc.OpenClipEncoder("tads-tiny-vit", str(tmp_path / "tiny.safetensors")).encode_texts(["a red square"])
    assert zt.shape == (1, 32)


def test_the_image_tower_side_follows_the_pool_and_is_part_of_the_cache_fingerprint():
    small = np.full(100, 28), np.full(100, 64)
    assert enc.matched_image_side(*small) == 64  # the demo: ≤ 64 px images are not upsampled to 128 or 224
    assert enc.matched_image_side(np.full(100, 90), np.full(100, 70)) == 96  # rounded up to the stride
    photos = np.r_[np.full(95, 640), np.full(5, 32)], np.r_[np.full(95, 480), np.full(5, 32)]
    assert enc.matched_image_side(*photos) == enc.TOWER_NATIVE_SIDE  # capped at the tower's own resolution
    assert enc.matched_image_side(np.zeros(0), np.zeros(0)) == enc.TOWER_NATIVE_SIDE
    assert enc.FrozenTowers(image_size=64).fingerprint != enc.FrozenTowers(image_size=96).fingerprint
    with pytest.raises(ValueError, match="input side"):
        enc.FrozenTowers(image_size=8)


def test_one_pass_image_and_mirror_features_equal_two_passes():
    towers = enc.FrozenTowers(image_size=64)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    image, flipped = towers.image_and_flip_features(images)
    np.testing.assert_allclose(image, towers.image_features(images), atol=1e-4)
    np.testing.assert_allclose(flipped, towers.image_features(images, flip=True), atol=1e-4)
    mirrored = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
    np.testing.assert_allclose(flipped, towers.image_features(mirrored), atol=2e-2)  # mirror, then resize
    assert not np.allclose(image, flipped, atol=1e-3)


def test_repeated_captions_are_encoded_once_and_map_back_in_order():
    towers = enc.FrozenTowers()
    texts = ["a red shirt", "a blue bag", "a red shirt", "", "a blue bag"]
    feats = towers.text_features(texts)
    assert feats.shape == (5, enc.TEXT_FEATURE_DIM)
    np.testing.assert_array_equal(feats[0], feats[2])
    np.testing.assert_allclose(feats[1], towers.text_features(["a blue bag"])[0], atol=1e-5)
    assert not np.allclose(feats[0], feats[1])


def test_the_detail_matched_side_is_small_for_upscaled_thumbnails_and_native_for_detailed_images():
    rng = np.random.default_rng(0)
    thumbs = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).resize((160, 160), Image.BILINEAR)
              for _ in range(8)]  # 28 px of content shown at 160 px
    detailed = [Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) for _ in range(4)]
    assert enc.detail_matched_side(thumbs) <= 128  # 28 px of noise: the harshest content a thumbnail can hold
    assert enc.detail_matched_side(detailed) == enc.TOWER_NATIVE_SIDE
    errors = enc.detail_errors(thumbs[:2])
    assert (errors[64] > errors[128]).all() and (errors[224] < 1e-6).all()


def test_every_tower_runtime_gives_the_eager_features_and_auto_runs_on_onnxruntime_on_cpu():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(5)]
    feats = {}
    for runtime in enc.TOWER_RUNTIMES:
        towers = enc.FrozenTowers(image_size=64, runtime=runtime)
        feats[runtime] = towers.image_features(images)
        assert towers.runtime_used == ("onnxruntime" if runtime == "auto" else runtime)
    for runtime, f in feats.items():
        np.testing.assert_allclose(f, feats["eager"], atol=1e-4, err_msg=runtime)
    # the export left the shared tower in eval mode: a second eager pass (batch norms on running statistics)
    # gives the same features for a batch of one as for the batch
    again = enc.FrozenTowers(image_size=64, runtime="eager")
    np.testing.assert_allclose(again.image_features(images[:1])[0], feats["eager"][0], atol=1e-4)
    with pytest.raises(ValueError, match="runtime"):
        enc.FrozenTowers(runtime="tensorrt")


def _concept_pairs(n: int, noise_share: float, seed: int = 0, noise: float = 1.0):
    """Pairs whose image and text features share a hidden concept; the first `noise_share` of them get another
    pair's caption (misaligned). Returns image features, text features and the misaligned mask."""
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(n, 12)).astype(np.float32)
    img = concept @ rng.normal(size=(12, 48)).astype(np.float32) + noise * rng.normal(size=(n, 48)).astype(np.float32)
    txt = concept @ rng.normal(size=(12, 20)).astype(np.float32) + noise * rng.normal(size=(n, 20)).astype(np.float32)
    bad = np.zeros(n, bool)
    bad[: int(noise_share * n)] = True
    txt[bad] = txt[bad][rng.permutation(int(bad.sum()))]
    return img, txt, bad


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_cleaned_heldout_heads_separate_a_noise_majority_better_and_never_train_on_their_own_fold(monkeypatch):
    """Where most pairs are misaligned, heads trained on every pair score the clean minority less sharply; the
    cleaning round trains them again on the pairs that beat random pairings. Head f still never trains on fold f."""
    img, txt, bad = _concept_pairs(1600, 0.8)
    folds = enc.fold_of([f"u{i}" for i in range(len(img))])
    config = enc.HeadsConfig(embed_dim=16, hidden_dim=0, epochs=12, lr=1e-2)
    trained_on = []
    real = enc.train_projection_heads

    def recording(image_feats, text_feats, *args, **kwargs):
        trained_on.append({img.tobytes().find(row.tobytes()) // row.nbytes for row in image_feats})
        return real(image_feats, text_feats, *args, **kwargs)

    monkeypatch.setattr(enc, "train_projection_heads", recording)
    plain, none = enc.fit_heldout_heads(img, txt, folds, config, cleaning=enc.HeldoutCleaning(rounds=0))
    cleaned, report = enc.fit_heldout_heads(img, txt, folds, config)
    assert none == [] and len(report) == 1 and report[0]["applied"]
    assert report[0]["kept"] < 0.4 * len(img)  # most misaligned pairs are left out of the second fit
    # 2 plain fits, then 2 + 2 for the cleaned run: each head's rows lie outside its own fold
    for f, rows in zip([0, 1, 0, 1, 0, 1], trained_on):
        assert rows and not any(folds[r] == f for r in rows)
    assert len(trained_on[4]) < len(trained_on[2])
    before = enc.heldout_pair_cosine(img, txt, folds, plain)
    after = enc.heldout_pair_cosine(img, txt, folds, cleaned)
    auc_before, auc_after = _auc(before[~bad], before[bad]), _auc(after[~bad], after[bad])
    assert auc_after > auc_before + 0.03, (auc_before, auc_after)  # measured 0.911 -> 0.979


def test_cleaning_that_would_leave_a_fold_without_pairs_keeps_the_first_heads(monkeypatch):
    """Where no pair beats random pairings (every p-value 1), the cleaning round is reported as not applied and the
    first heads are returned as they are."""
    from tads_assets.core.method import operators

    img, txt, _ = _concept_pairs(40, 0.0)
    folds = enc.fold_of([f"u{i}" for i in range(len(img))])
    config = enc.HeadsConfig(embed_dim=4, hidden_dim=0, epochs=1)
    first, _ = enc.fit_heldout_heads(img, txt, folds, config, cleaning=enc.HeldoutCleaning(rounds=0))
    monkeypatch.setattr(operators, "match_p_values", lambda i, t, g, *a, **k: (np.ones(len(i)), np.ones(len(i))))
    heads, report = enc.fit_heldout_heads(img, txt, folds, config)
    assert report == [{"round": 1, "caption_p_cut": 0.05, "image_p_cut": 0.05, "pairs": 40, "kept": 0,
                       "kept_share": 0.0, "applied": False}]
    assert np.array_equal(enc.heldout_pair_cosine(img, txt, folds, heads), enc.heldout_pair_cosine(img, txt, folds, first))


def test_the_encoder_id_changes_with_the_heldout_heads(tmp_path):
    info = {"kind": "builtin", "heads": "heads.safetensors", "heldout_heads": ["h0.safetensors"]}
    enc.save_heads(enc.ProjectionHeads(enc.HeadsConfig(embed_dim=8, hidden_dim=0)), tmp_path / "heads.safetensors")
    heldout = enc.ProjectionHeads(enc.HeadsConfig(embed_dim=8, hidden_dim=0))
    enc.save_heads(heldout, tmp_path / "h0.safetensors")
    first = enc.write_encoder_info(tmp_path, info)["encoder_id"]
    torch.nn.init.zeros_(heldout.text[1].weight)
    enc.save_heads(heldout, tmp_path / "h0.safetensors")
    assert enc.write_encoder_info(tmp_path, info)["encoder_id"] != first
