"""The zoo of pools differs from the demo along the axes it claims: templated captions, a small task-relevant
minority, a noise majority; each with its own task set."""

import pytest
import polars as pl
import yaml

from tads_assets.core.demo import zoo
from tads_assets.core.demo.demo_pool import DemoConfig, generate_demo_pool

SMALL = dict(shard_size=1_500, fashion_val=20, fashion_test=20, digits_val=20, digits_test=20, captions_val=20,
             captions_test=40)


def _make(tmp_path, name, n=1_500):
    out = tmp_path / name
    generate_demo_pool(out, zoo.zoo_config(name, n, 0, **SMALL))
    return pl.read_parquet(out / "truth.parquet"), yaml.safe_load((out / "tasks.yaml").read_text())["tasks"]


def test_the_catalog_pool_has_templated_titles_over_distinct_images_and_coarse_tasks(tmp_path):
    truth, tasks = _make(tmp_path, "catalog")
    clean = truth.filter(pl.col("kind") == "clean")
    assert clean.height > 500
    assert clean["caption"].n_unique() <= 100  # a handful of templates over hundreds of distinct products
    assert clean.select("source_split", "source_index").n_unique() > 0.95 * clean.height
    names = {t["name"]: t for t in tasks}
    assert set(names) == {"garment_category", "products"}
    assert names["garment_category"]["classes"] == ["top", "bottom", "dress", "footwear", "bag"]
    # most class names never occur in the pool's captions (only Fashion-MNIST's own "Bag" and "Dress" do): the
    # proxy must score them from the text tower's semantics
    assert not any(c in cap.lower().split() for cap in clean["caption"] for c in ("top", "bottom", "footwear"))


def test_task_minority_and_noise_majority_pools_have_the_shares_they_claim(tmp_path):
    truth, tasks = _make(tmp_path, "task_minority")
    names = {t["name"]: t for t in tasks}
    assert set(names) == {"footwear", "footwear_captions"}
    assert names["footwear"]["classes"] == ["sandal", "sneaker", "ankle boot"]
    footwear = truth["label"].is_in(["sandal", "sneaker", "ankle boot"])
    assert 0.08 < footwear.mean() <= 0.15  # a minority of the pool, where Fashion-MNIST's own balance gives 3 of 10
    assert (truth["source"] == "digits").mean() > 0.05  # other concepts: garments, digits, textures
    # every held-out set is about footwear, from Fashion-MNIST's test split (never in the pool)
    import tarfile

    for split in ("val", "test"):
        for name in ("footwear", "captions"):
            with tarfile.open(tmp_path / "task_minority" / split / f"{name}.tar") as tar:
                labels = [__import__("json").load(tar.extractfile(m))["label"] for m in tar if m.name.endswith(".json")]
            assert labels and set(labels) <= {"sandal", "sneaker", "ankle boot"}, (split, name)
    truth, _ = _make(tmp_path, "noise_majority")
    assert (truth["kind"] != "clean").mean() >= 0.5


def test_a_footwear_share_without_room_for_it_is_refused():
    with pytest.raises(ValueError, match="task_class_share"):
        DemoConfig(task_profile="footwear", task_class_share=0.95)


def test_zoo_configs_are_named_and_the_heldout_pool_has_a_seed_of_its_own():
    assert zoo.zoo_config("demo", 1000, 3) == DemoConfig(n_samples=1000, seed=3)
    assert zoo.zoo_config("heldout", 1000, 3).seed == 1003 and zoo.HELD_OUT == ("heldout",)
    with pytest.raises(ValueError, match="unknown zoo pool 'forest'"):
        zoo.zoo_config("forest")
