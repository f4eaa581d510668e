from types import SimpleNamespace

import numpy as np
import pytest

from tads_assets.core import metrics
from tads_assets.core.harness import benchmark as bm
from tads_assets.core.io import eval_sets
from tads_assets.core.demo.demo_pool import generate_demo_pool


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_an_encoder_that_maps_each_image_onto_its_caption_scores_exactly_100():
    rng = np.random.default_rng(0)
    emb = unit(rng.normal(size=(50, 16)))
    s = metrics.score_retrieval("r", emb, emb.copy())
    assert s.metrics == {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0}
    assert s.chance["i2t_r1"] == pytest.approx(1 / 50) and s.chance["t2i_r5"] == pytest.approx(5 / 50)


def test_an_encoder_that_maps_each_image_onto_its_class_prompts_scores_exactly_100():
    rng = np.random.default_rng(1)
    centres = unit(rng.normal(size=(10, 16)))
    labels = rng.integers(0, 10, 200)
    prompts = np.repeat(centres, 3, axis=0)  # 3 templates per class, class-major
    s = metrics.score_classification("c", centres[labels], labels, prompts, 10, 3)
    assert s.metrics == {"top1": 1.0, "top5": 1.0}
    assert s.chance == {"top1": 0.1, "top5": 0.5}


def test_top5_is_defined_only_with_more_than_5_classes():
    rng = np.random.default_rng(3)
    centres = unit(rng.normal(size=(5, 16)))
    labels = rng.integers(0, 5, 100)
    s = metrics.score_classification("coarse", centres[labels], labels, centres, 5, 1)
    assert set(s.metrics) == set(s.chance) == {"top1"} and s.info["classes"] == 5
    scores = [s, metrics.score_classification("fine", unit(rng.normal(size=(50, 16))), rng.integers(0, 10, 50),
                                              unit(rng.normal(size=(10, 16))), 10, 1)]
    row, chance = bm.headline(scores), bm.chance_row(scores)
    assert set(row) == set(chance) == {"coarse/top1", "fine/top1", "fine/top5", "average"}
    assert chance["average"] == pytest.approx((20.0 + 10.0 + 50.0) / 3)  # no 100 % top-5 of 5 classes inflating it
    assert bm.definitions(scores)["tasks"]["coarse"]["classes"] == 5


def test_retrieval_with_repeated_captions_counts_caption_identity_hits():
    rng = np.random.default_rng(4)
    templates = unit(rng.normal(size=(4, 16)))
    group = np.repeat(np.arange(4), 5)  # 20 product images, 4 distinct titles
    captions = [f"  Product  {g} " if i % 2 else f"product {g}" for i, g in enumerate(group)]  # case/space variants
    images = unit(templates[group] + 0.05 * rng.normal(size=(20, 16)))
    text = templates[group]  # each image's own caption embedding
    s = metrics.score_retrieval("products", images, text, captions)
    assert s.metrics["i2t_r1"] == 1.0 and s.metrics["t2i_r1"] == 1.0  # per image pair it would be ~1/5
    assert s.info["distinct_captions"] == 4 and s.info["t2i_queries"] == 4
    assert s.chance["i2t_r1"] == pytest.approx(1 / 4)
    # text→image chance: one of a caption's 5 images among a random top 1 of 20
    assert s.chance["t2i_r1"] == pytest.approx(5 / 20) and s.chance["t2i_r5"] == pytest.approx(
        1 - (15 * 14 * 13 * 12 * 11) / (20 * 19 * 18 * 17 * 16))
    # without caption identity the same embeddings miss most text→image queries
    assert metrics.recall_at_k(text, images, 1) < 0.5
    # all-distinct captions: the old per-pair definition, chance k/n
    d = metrics.score_retrieval("r", images, text, [f"c{i}" for i in range(20)])
    assert d.chance["t2i_r5"] == pytest.approx(5 / 20) and d.info["distinct_captions"] == 20
    with pytest.raises(ValueError, match="3 captions for 20 items"):
        metrics.score_retrieval("r", images, text, ["a", "b", "c"])


def test_random_embeddings_score_near_chance():
    rng = np.random.default_rng(2)
    n = 400
    s = metrics.score_retrieval("r", unit(rng.normal(size=(n, 32))), unit(rng.normal(size=(n, 32))))
    assert s.metrics["i2t_r5"] < 5 * 5 / n
    labels = rng.integers(0, 10, n)
    c = metrics.score_classification("c", unit(rng.normal(size=(n, 32))), labels, unit(rng.normal(size=(30, 32))), 10, 3)
    assert abs(c.metrics["top1"] - 0.1) < 0.06


def test_recall_counts_ties_and_rank_correctly():
    e = np.eye(3, dtype=np.float32)
    q = e  # query i's own item is gallery item i
    g = unit([e[0] + e[1], e[0], e[2]])  # q0: own 2nd best; q1: own ties with g2 behind g0; q2: own best
    assert metrics.recall_at_k(q, g, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(q, g, 2) == pytest.approx(1.0)


def test_demo_task_sets_read_back_with_labels_and_captions(tmp_path):
    import yaml

    from tests.conftest import SMALL_DEMO

    out = tmp_path / "demo"
    generate_demo_pool(out, SMALL_DEMO)
    tasks = {t["name"]: t for t in yaml.safe_load((out / "tasks.yaml").read_text())["tasks"]}
    fashion = eval_sets.read_eval_set(out / "test" / "fashion.tar", tasks["fashion"]["classes"])
    assert len(fashion.images) == SMALL_DEMO.fashion_test and (fashion.labels >= 0).all()
    assert set(fashion.labels.tolist()) <= set(range(10))
    captions = eval_sets.read_eval_set(out / "test" / "captions.tar")
    assert all(captions.captions) and len(captions.images) >= SMALL_DEMO.captions_test  # + rare-concept photos

    def perfect_images(images):  # an "encoder" that knows each test image's own caption
        return np.stack([np.eye(len(captions.images), dtype=np.float32)[captions.images.index(im)] for im in images])

    def perfect_texts(texts):
        return np.stack([np.eye(len(captions.images), dtype=np.float32)[captions.captions.index(t)] for t in texts])

    s = bm.evaluate_task(tasks["captions"], captions, perfect_images, perfect_texts)
    assert s.metrics["i2t_r1"] == 1.0 and s.metrics["t2i_r1"] == 1.0
    with pytest.raises(ValueError, match="unknown kind"):
        bm.evaluate_task({**tasks["captions"], "kind": "detection"}, captions, perfect_images, perfect_texts)


def test_classification_is_scored_over_the_classes_the_pool_names():
    """A model trained from scratch has no word for a class its pool never names: such classes (and their test items)
    are left out, the chance level follows the classes kept, and with fewer than 2 named classes the task has no
    zero-shot metric at all (so the average leaves it out)."""
    import tads_assets  # noqa: F401  (torchvision shim before open_clip)
    import open_clip
    from PIL import Image

    tokenize = open_clip.get_tokenizer("RN50")
    captions = ["Women's Sandals", "a red dress on white", "Bag | online shop"] * 10 + ["cappuccino, top view"]
    vocab = bm.Vocabulary.of_captions(captions, tokenize)
    assert vocab.counts[int(tokenize(["dress"])[0][1])] == 10 and vocab.n_captions == 31
    # trained on 93 samples drawn from these captions, "dress" is met 30 times (expected): named; "top" once: not
    assert vocab.unnamed(["dress", "bag", "footwear", "top", "sandal"], 93) == ["footwear", "top", "sandal"]  # "sandals" ≠ "sandal"
    assert vocab.unnamed(["sandals", "red dress"], 93) == [] and vocab.unnamed(["dress"], 92) == ["dress"]
    assert vocab.unnamed(["top"], 31 * 30) == []  # at 930 samples seen even the one "top view" is met 30 times

    classes = ["dress", "footwear", "bag"]
    rng = np.random.default_rng(0)
    centres = {c: unit(rng.normal(size=8)) for c in classes}
    labels = np.array([0, 1, 2] * 10)
    images = [Image.new("RGB", (4, 4), (int(k), 0, 0)) for k in labels]  # the red channel carries the label
    encode_images = lambda ims: np.stack([centres[classes[im.getpixel((0, 0))[0]]] for im in ims])  # noqa: E731
    encode_texts = lambda texts: np.stack([centres[next(c for c in classes if c in t)] for t in texts])  # noqa: E731
    es = eval_sets.EvalSet([str(i) for i in range(len(labels))], images, labels, [""] * len(labels))
    task = {"name": "cat", "kind": "classification", "classes": classes, "templates": ["a {}."]}
    every = bm.evaluate_task(task, es, encode_images, encode_texts)
    named = bm.evaluate_task(task, es, encode_images, encode_texts, vocab, samples_seen=93)
    assert every.chance["top1"] == pytest.approx(1 / 3) and every.n == 30
    assert named.metrics == {"top1": 1.0} and named.chance["top1"] == 0.5 and named.n == 20
    assert named.info["unnamed_classes"] == "footwear" and named.info["items_left_out"] == 10
    decided = bm.evaluate_task(task, es, encode_images, encode_texts, unnamed=["footwear"])  # decided beforehand
    assert (decided.metrics, decided.chance, decided.n) == (named.metrics, named.chance, named.n)
    tasks = [SimpleNamespace(name="cat", kind="classification", classes=classes),
             SimpleNamespace(name="products", kind="retrieval", classes=[])]
    assert bm.unnamed_classes(tasks, vocab, 93) == {"cat": ["footwear"]}  # retrieval has no classes to name
    none = bm.evaluate_task({**task, "name": "coarse", "classes": ["top", "footwear", "bottom"]}, es, encode_images,
                            lambda texts: np.stack([unit(np.ones(8))] * len(texts)), vocab, samples_seen=93)
    assert none.metrics == {} and "unnamed_classes" in none.info
    row = bm.headline([none, named])
    assert set(row) == {"cat/top1", "average"} and row["average"] == 100.0  # the undefined task adds no column


def test_several_training_seeds_give_each_columns_mean_and_the_averages_spread():
    runs = [{"a/top1": 40.0, "b/i2t_r1": 10.0, "average": 25.0}, {"a/top1": 50.0, "b/i2t_r1": 20.0, "average": 35.0}]
    row = bm.mean_over_runs(runs)
    assert row == {"a/top1": 45.0, "b/i2t_r1": 15.0, "average": 30.0, "repeats": 2,
                   "average_sd": pytest.approx(7.0710678), "average_runs": [25.0, 35.0]}
    assert bm.mean_over_runs(runs[:1])["average_sd"] is None
    with pytest.raises(ValueError, match="columns differ"):
        bm.mean_over_runs([runs[0], {"a/top1": 1.0, "average": 1.0}])


def test_algorithm1_leaves_out_the_classes_the_benchmark_leaves_out_and_warns_where_none_would_be_left():
    """trained_dvn's rule (`select._unnamed_classes`) is the benchmark's, over the pool's captions at the target's
    samples seen; a task that would keep fewer than two classes is scored over all of them, with a warning."""
    import polars as pl

    from tads_assets.select import TrainedDvnConfig, _classes_scored, _unnamed_classes

    captions = ["a red dress", "a black bag", "a dress, front view"] * 20 + ["leather boots"]
    pool = SimpleNamespace(scan=lambda: pl.LazyFrame({"caption": captions}))
    tasks = [SimpleNamespace(name="garment", kind="classification", classes=["top", "dress", "bag", "footwear"]),
             SimpleNamespace(name="shoes", kind="classification", classes=["boots", "sandal"]),
             SimpleNamespace(name="products", kind="retrieval", classes=[])]
    config = TrainedDvnConfig(target_budget_samples_seen=610)  # 10 x the 61 captions: "boots" met 10 times
    logs, warnings = [], []
    unnamed = _unnamed_classes(config, tasks, pool, logs.append, warnings.append)
    assert unnamed == {"garment": ["top", "footwear"]}
    assert len(logs) == 1 and "'garment': top, footwear left out" in logs[0]
    assert len(warnings) == 1 and "'shoes'" in warnings[0] and "scores it over all its classes" in warnings[0]
    text = _classes_scored(tasks, unnamed, 610)
    assert text.startswith("garment: 2 of 4 (top, footwear unnamed); shoes: 2 of 2 —") and "610 samples seen" in text
