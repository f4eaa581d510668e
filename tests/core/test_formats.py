import csv

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tads_assets.core.io import formats, ingest
from tads_assets.core.demo.hostile import bomb_png
from tads_assets.core.io.ledger import Ledger
from tests.conftest import image_bytes, wds_sample, write_tar


def run_ingest(tmp_path, spec, **kw):
    ledger = Ledger(tmp_path / "ledger")
    result = ingest.ingest_pool(formats.list_shards(spec), tmp_path / "raw_pool", ledger, source=spec, **kw)
    rows = ingest.scan_raw_pool(tmp_path / "raw_pool").collect()
    drops = ledger.read("raw_pool")
    return result, rows, drops


def test_parse_pool_spec_and_errors():
    assert formats.parse_pool_spec("demo").kind == "demo"
    assert formats.parse_pool_spec("csv:/a/b.csv") == formats.PoolSpec("csv", "/a/b.csv")
    with pytest.raises(ValueError, match="not a pool source"):
        formats.parse_pool_spec("s3://bucket/x")
    with pytest.raises(ValueError, match="not a pool source"):
        formats.parse_pool_spec("webdataset:")


def test_expand_braces():
    assert formats.expand_braces("/p/{00000..00002}.tar") == ["/p/00000.tar", "/p/00001.tar", "/p/00002.tar"]
    assert formats.expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert formats.expand_braces("plain.tar") == ["plain.tar"]


# ------------------------------------------------------------------------------------- round trips


def test_webdataset_round_trips_the_demo_pool(tmp_path, demo_dir, demo_spec):
    truth = pl.read_parquet(demo_dir / "truth.parquet")
    result, rows, drops = run_ingest(tmp_path, demo_spec)
    broken = truth.filter(pl.col("kind").is_in(["corrupt_image", "empty_caption"]))
    assert result.n_seen == truth.height
    assert rows.height == truth.height - broken.height
    assert set(drops["uid"]) == set(broken["uid"])
    joined = rows.join(truth, on="uid", suffix="_truth")
    assert (joined["caption"] == joined["caption_truth"].str.strip_chars()).all()
    assert (joined["url"] == joined["url_truth"]).all()
    # exact duplicates keep identical bytes through ingestion
    dup = joined.filter(pl.col("kind") == "exact_duplicate").row(0, named=True)
    orig = joined.filter(pl.col("uid") == dup["duplicate_of"]).row(0, named=True)
    assert dup["sha256"] == orig["sha256"] and dup["bytes"] == orig["bytes"]
    assert rows["width"].min() > 0 and set(rows["format"]) <= {"jpeg", "png"}


def _small_pool(tmp_path, n=6):
    """n (key, caption, url, image bytes) samples with distinct images."""
    return [(f"{i:09d}", f"a square of shade {i}", f"https://example.com/{i}.png",
             image_bytes((40 * i % 255, 10, 200), fmt="PNG")) for i in range(n)]


def test_csv_round_trip(tmp_path):
    samples = _small_pool(tmp_path)
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "pool.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "caption", "url"])
        for key, cap, url, img in samples:
            (tmp_path / "imgs" / f"{key}.png").write_bytes(img)
            w.writerow([f"imgs/{key}.png", cap, url])
    _, rows, drops = run_ingest(tmp_path, f"csv:{tmp_path / 'pool.csv'}")
    assert drops.is_empty()
    assert rows["caption"].to_list() == [s[1] for s in samples]
    assert rows["url"].to_list() == [s[2] for s in samples]
    assert rows["sha256"].to_list() == [formats.sha256(s[3]) for s in samples]


def test_csv_without_required_columns_fails_naming_them(tmp_path):
    (tmp_path / "bad.csv").write_text("path,text\nx.png,hello\n")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['image_path', 'caption'\]"):
        run_ingest(tmp_path, f"csv:{tmp_path / 'bad.csv'}")


def _img2dataset(tmp_path, samples, layout: str):
    root = tmp_path / "i2d"
    root.mkdir()
    table = {"key": [], "url": [], "caption": [], "status": [], "error_message": []}
    members = []
    for key, cap, url, img in samples:
        for col, v in zip(table, (key, url, cap, "success", None)):
            table[col].append(v)
        members.append((f"{key}.png", img))
        members.append((f"{key}.txt", cap.encode()))
    # one failed download and one "success" whose file is missing
    for col, v in zip(table, ("900000000", "https://dead.example.com/x.jpg", "gone", "failed_to_download", "HTTP 404")):
        table[col].append(v)
    for col, v in zip(table, ("900000001", "https://example.com/lost.jpg", "lost file", "success", None)):
        table[col].append(v)
    pl.DataFrame(table).write_parquet(root / "00000.parquet")
    if layout == "tar":
        write_tar(root / "00000.tar", members)
    else:
        (root / "00000").mkdir()
        for name, data in members:
            (root / "00000" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("layout", ["tar", "files"])
def test_img2dataset_round_trip_with_failed_and_missing(tmp_path, layout):
    samples = _small_pool(tmp_path)
    root = _img2dataset(tmp_path, samples, layout)
    result, rows, drops = run_ingest(tmp_path, f"img2dataset:{root}")
    assert sorted(rows["uid"]) == [s[0] for s in samples]
    assert dict(zip(rows["uid"], rows["caption"])) == {s[0]: s[1] for s in samples}
    assert dict(zip(drops["uid"], drops["reason"])) == {"900000000": formats.DOWNLOAD_FAILED, "900000001": formats.MISSING_FILE}
    assert "HTTP 404" in drops.filter(pl.col("uid") == "900000000")["detail"][0]
    assert result.n_seen == len(samples) + 2


# --------------------------------------------------------------------------------- broken inputs


BROKEN_CASES = {
    "corrupt": (wds_sample("000000001", image=image_bytes()[:60]), formats.CORRUPT_IMAGE),
    "garbage": (wds_sample("000000002", image=b"<html>404 not found</html>" * 10), formats.CORRUPT_IMAGE),
    "zero_byte": (wds_sample("000000003", image=b""), formats.EMPTY_IMAGE),
    "bomb": (wds_sample("000000004", image=bomb_png(), ext="png"), formats.DECOMPRESSION_BOMB),
    "no_caption": (wds_sample("000000005", caption=None), formats.MISSING_CAPTION),
    "blank_caption": (wds_sample("000000006", caption=" \t\n "), formats.EMPTY_CAPTION),
    "non_utf8": (wds_sample("000000007", caption=b"caf\xe9 au lait"), formats.NON_UTF8_CAPTION),
    "no_image": (wds_sample("000000008", image=False), formats.MISSING_IMAGE),
    "huge_caption": (wds_sample("000000009", caption="word " * 2000), formats.CAPTION_TOO_LONG),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_each_broken_sample_is_ledgered_with_its_reason(tmp_path, case):
    members, reason = BROKEN_CASES[case]
    good = wds_sample("000000000")
    write_tar(tmp_path / "00000.tar", good + members)
    result, rows, drops = run_ingest(tmp_path, f"webdataset:{tmp_path}/00000.tar")
    assert rows["uid"].to_list() == ["000000000"]
    assert drops.height == 1 and drops["reason"][0] == reason, drops
    assert drops["uid"][0] == members[0][0].split(".")[0]
    assert result.n_seen == rows.height + drops.height


def test_duplicate_keys_within_and_across_shards(tmp_path):
    write_tar(tmp_path / "00000.tar", wds_sample("000000001") + wds_sample("000000002") + wds_sample("000000001", caption="again"))
    write_tar(tmp_path / "00001.tar", wds_sample("000000002", caption="other shard") + wds_sample("000000003"))
    result, rows, drops = run_ingest(tmp_path, f"webdataset:{tmp_path}/{{00000..00001}}.tar")
    assert sorted(rows["uid"]) == ["000000001", "000000002", "000000003"]
    assert drops["reason"].to_list() == [formats.DUPLICATE_KEY] * 2
    assert sorted(drops["uid"]) == ["000000001", "000000002"]
    # the first occurrence wins
    assert rows.filter(pl.col("uid") == "000000001")["caption"][0] == "a red square"


@pytest.mark.parametrize("cut", [0.31, 0.55, 0.62, 0.7])
def test_truncated_tar_keeps_complete_samples_and_ledgers_the_rest(tmp_path, cut):
    members = [m for i in range(5) for m in wds_sample(f"{i:09d}", image=image_bytes(size=(64, 64), fmt="PNG"), ext="png")]
    full = write_tar(tmp_path / "full.tar", members).read_bytes()
    cut_at = int(len(full) * cut) // 512 * 512 if cut == 0.55 else int(len(full) * cut)  # 0.55: a block boundary
    (tmp_path / "00000.tar").write_bytes(full[:cut_at])
    write_tar(tmp_path / "00001.tar", wds_sample("100000000"))
    result, rows, drops = run_ingest(tmp_path, f"webdataset:{tmp_path}/{{00000..00001}}.tar")
    assert "100000000" in set(rows["uid"])
    assert rows.height >= 2  # samples before the cut survive
    assert all(u in {f"{i:09d}" for i in range(5)} | {"100000000"} for u in rows["uid"])
    assert drops["reason"].to_list() == [formats.TRUNCATED_TAR]
    assert result.n_seen == rows.height + drops.height


def test_unreadable_and_missing_shards_are_ledgered(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"this is not a tar archive at all" * 40)
    write_tar(tmp_path / "00001.tar", wds_sample("000000001"))
    # 00002.tar is listed by the brace pattern but does not exist
    _, rows, drops = run_ingest(tmp_path, f"webdataset:{tmp_path}/{{00000..00002}}.tar")
    assert rows["uid"].to_list() == ["000000001"]
    assert drops["reason"].to_list() == [formats.UNREADABLE_SHARD, formats.UNREADABLE_SHARD]
    assert any("does not exist" in d for d in drops["detail"])


def test_source_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        formats.list_shards(f"webdataset:{tmp_path}/{{00000..00001}}.tar")


def test_all_samples_failing_raises_after_ledgering(tmp_path):
    write_tar(tmp_path / "00000.tar", wds_sample("000000001", image=b"") + wds_sample("000000002", caption=""))
    with pytest.raises(ingest.AllSamplesFailed, match="empty_image"):
        run_ingest(tmp_path, f"webdataset:{tmp_path}/00000.tar")
    assert Ledger(tmp_path / "ledger").read("raw_pool").height == 2
    assert not (tmp_path / "raw_pool").exists()


def test_pixel_limit_is_configurable(tmp_path):
    write_tar(tmp_path / "00000.tar", wds_sample("000000001", image=image_bytes(size=(200, 100))) + wds_sample("000000002"))
    _, rows, drops = run_ingest(tmp_path, f"webdataset:{tmp_path}/00000.tar",
                                limits=formats.IngestLimits(max_image_pixels=10_000))
    assert rows["uid"].to_list() == ["000000002"]
    assert drops["reason"].to_list() == [formats.DECOMPRESSION_BOMB] and drops["value"][0] == 20_000


@given(st.binary(max_size=200))
def test_clean_caption_never_returns_control_characters_or_blank(raw):
    out = formats.clean_caption(raw, formats.IngestLimits())
    if isinstance(out, str):
        assert out.strip() == out and out
        assert not any(ord(c) < 32 or ord(c) == 127 for c in out)
    else:
        assert out.reason in {formats.NON_UTF8_CAPTION, formats.EMPTY_CAPTION, formats.CAPTION_TOO_LONG}
