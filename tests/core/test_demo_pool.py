import io
import json
import tarfile

import polars as pl
import pytest
import yaml

from tads_assets.core.demo import demo_pool as dp
from tests.conftest import SMALL_DEMO


def _members(path):
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def truth(demo_dir):
    return pl.read_parquet(demo_dir / "truth.parquet")


@pytest.fixture(scope="module")
def pool_members(demo_dir):
    out = {}
    for shard in sorted((demo_dir / "pool").glob("*.tar")):
        out.update(_members(shard))
    return out


def test_truth_counts_match_configured_rates_exactly(truth, demo_dir):
    expected = SMALL_DEMO.kind_counts()
    got = dict(truth.group_by("kind").len().iter_rows())
    assert {k: v for k, v in expected.items() if v} == got
    assert sum(expected.values()) == truth.height == SMALL_DEMO.n_samples
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    assert manifest["kind_counts"] == got
    # every noise kind is present at this size, so every later stage has something to find
    assert set(dp.NOISE_KINDS) <= set(got)


def test_kind_counts_round_each_rate():
    cfg = dp.DemoConfig(n_samples=1000, rates={"misaligned": 0.0125, "vague": 0.1})
    counts = cfg.kind_counts()
    assert counts["misaligned"] == 12 and counts["vague"] == 100 and counts["blurred"] == 0
    assert counts["clean"] == 1000 - 112


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="unknown noise kinds"):
        dp.DemoConfig(rates={"sparkly": 0.1})
    with pytest.raises(ValueError, match="more than the pool"):
        dp.DemoConfig(n_samples=10, rates={"vague": 0.7, "blurred": 0.7})


def test_every_sample_is_in_a_shard_with_its_caption_and_url(truth, pool_members):
    assert set(pool_members) == set(truth["uid"])
    for row in truth.iter_rows(named=True):
        m = pool_members[row["uid"]]
        assert m["txt"].decode() == row["caption"]
        assert json.loads(m["json"])["url"] == row["url"]


def test_exact_duplicates_share_bytes_url_and_caption_with_a_clean_original(truth, pool_members):
    kinds = dict(zip(truth["uid"], truth["kind"]))
    dups = truth.filter(pl.col("kind") == "exact_duplicate")
    assert dups.height > 0
    for row in dups.iter_rows(named=True):
        orig = row["duplicate_of"]
        assert kinds[orig] == "clean"
        a, b = pool_members[row["uid"]], pool_members[orig]
        img = lambda m: m.get("jpg") or m.get("png")  # noqa: E731
        assert img(a) == img(b) and a["json"] == b["json"] and a["txt"] == b["txt"]


def test_near_duplicates_repost_a_clean_sample_with_new_bytes_and_caption(truth, pool_members):
    by_uid = {r["uid"]: r for r in truth.iter_rows(named=True)}
    near = truth.filter(pl.col("kind") == "near_duplicate")
    assert near.height > 0
    for row in near.iter_rows(named=True):
        orig = by_uid[row["duplicate_of"]]
        assert orig["kind"] == "clean"
        assert (row["source"], row["source_index"], row["label"], row["color"]) == (
            orig["source"], orig["source_index"], orig["label"], orig["color"])
        a, b = pool_members[row["uid"]], pool_members[orig["uid"]]
        assert (a.get("jpg") or a.get("png")) != (b.get("jpg") or b.get("png"))
        assert row["caption"] != orig["caption"] and row["url"] != orig["url"]


UNAMBIGUOUS = {"trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag", "ankle boot"}


def test_misaligned_captions_do_not_name_the_pictured_garment(truth):
    rows = truth.filter((pl.col("kind") == "misaligned") & pl.col("label").is_in(list(UNAMBIGUOUS)))
    assert rows.height > 0
    for row in rows.iter_rows(named=True):
        words = dp.FASHION_SYNONYMS[row["label"]]
        assert not any(w.lower() in row["caption"].lower() for w in words), row


def test_clean_captions_name_label_and_colour(truth):
    rows = truth.filter((pl.col("kind") == "clean") & (pl.col("source") == "fashion"))
    for row in rows.iter_rows(named=True):
        cap = row["caption"].lower()
        assert row["color"] in cap
        assert any(w.lower() in cap for w in dp.FASHION_SYNONYMS[row["label"]])


def test_non_english_captions_use_a_foreign_phrasebook(truth):
    rows = truth.filter(pl.col("kind") == "non_english")
    assert rows.height > 0
    for row in rows.iter_rows(named=True):
        assert row["lang"] in dp.FOREIGN
        table = dp.FOREIGN[row["lang"]]
        if row["source"] == "fashion":
            assert table["things"][row["label"]] in row["caption"]
        assert table["colors"][row["color"]] in row["caption"]


def test_low_resolution_and_extreme_aspect_have_their_geometry(truth, pool_members):
    from PIL import Image

    for kind, ok in (("low_resolution", lambda w, h: max(w, h) < 25),
                     ("extreme_aspect", lambda w, h: max(w, h) / min(w, h) >= 6)):
        for uid in truth.filter(pl.col("kind") == kind)["uid"]:
            m = pool_members[uid]
            w, h = Image.open(io.BytesIO(m.get("jpg") or m.get("png"))).size
            assert ok(w, h), (kind, w, h)


def test_task_sets_are_held_out_from_the_pool(demo_dir, truth):
    tasks = yaml.safe_load((demo_dir / "tasks.yaml").read_text())["tasks"]
    assert [t["name"] for t in tasks] == ["fashion", "digits", "captions"]
    pool_digits = set(truth.filter(pl.col("source") == "digits")["source_index"].to_list())
    assert set(truth.filter(pl.col("source") == "fashion")["source_split"]) == {"train"}
    seen_digits: dict[str, set] = {}
    for t in tasks:
        assert all("{}" in tpl for tpl in t["templates"])
        for split in ("validation", "test"):
            path = demo_dir / t[split].removeprefix("webdataset:")
            members = _members(path)
            assert members, path
            for key, m in members.items():
                meta = json.loads(m["json"])
                if meta.get("source") == "fashion":
                    assert meta["split"] == "test"  # Fashion-MNIST test split, never in the pool
                if meta.get("source") == "digits":
                    assert meta["index"] not in pool_digits
                    seen_digits.setdefault(f"{t['name']}/{split}", set()).add(meta["index"])
                if t["kind"] == "classification":
                    assert t["classes"][int(m["cls"])] == meta["label"]
    # validation and test sets do not share digits
    assert not seen_digits["digits/validation"] & seen_digits["digits/test"]


def test_generation_is_deterministic(tmp_path):
    cfg = dp.DemoConfig(n_samples=60, seed=5, shard_size=30, fashion_val=5, fashion_test=5, digits_val=5,
                        digits_test=5, captions_val=5, captions_test=5)
    dp.generate_demo_pool(tmp_path / "a", cfg)
    dp.generate_demo_pool(tmp_path / "b", cfg)
    ta = pl.read_parquet(tmp_path / "a" / "truth.parquet")
    tb = pl.read_parquet(tmp_path / "b" / "truth.parquet")
    assert ta.equals(tb)
    assert (tmp_path / "a/pool/00000.tar").read_bytes() == (tmp_path / "b/pool/00000.tar").read_bytes()


def test_ensure_demo_pool_reuses_a_matching_pool(tmp_path):
    cfg = dp.DemoConfig(n_samples=30, seed=1, shard_size=30, fashion_val=5, fashion_test=5, digits_val=5,
                        digits_test=5, captions_val=5, captions_test=5)
    first = dp.ensure_demo_pool(tmp_path / "d", cfg)
    stamp = (tmp_path / "d" / "truth.parquet").stat().st_mtime_ns
    assert dp.ensure_demo_pool(tmp_path / "d", cfg) == first
    assert (tmp_path / "d" / "truth.parquet").stat().st_mtime_ns == stamp


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        dp.load_sources(tmp_path)


def test_two_processes_asking_for_the_demo_pool_at_once_get_one_pool(tmp_path):
    # raw_pool and task_set run at once on a fresh home (multiprocess executor): both call ensure_demo_pool
    import multiprocessing

    from tads_assets.core.demo.demo_pool import DemoConfig

    config = DemoConfig(n_samples=60, seed=1, shard_size=30, fashion_val=10, fashion_test=10, digits_val=10,
                        digits_test=10, captions_val=10, captions_test=10)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:  # a worker that dies leaves starmap waiting for ever: fail after 10 minutes instead
        manifests = pool.starmap_async(_ensure, [(str(tmp_path / "demo"), config)] * 2).get(timeout=600)
    assert manifests[0] == manifests[1]
    assert sorted(p.name for p in (tmp_path / "demo" / "pool").iterdir()) == ["00000.tar", "00001.tar"]


def _ensure(out_dir, config):
    from tads_assets.core.demo.demo_pool import ensure_demo_pool

    return ensure_demo_pool(out_dir, config)
