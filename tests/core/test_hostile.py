"""The hostile-input corpus (tads_assets.core.demo.hostile) through the readers and the ingestion: every case gets its
promised outcome, nothing leaves silently; property tests for the readers, path checks and the task parser."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tads_assets.core.io import formats, ingest

from tads_assets.core.demo import hostile
from tads_assets.core.io.ledger import Ledger
from tads_assets.core.io.tasks import Task, TaskSetError, load_task_set, parse_task_set
from tests.conftest import image_bytes, wds_sample, write_tar

BUILDERS = {"webdataset": hostile.build_webdataset, "img2dataset": hostile.build_img2dataset, "csv": hostile.build_csv,
            **hostile.ROUND2_SOURCES}


def ingest_source(tmp_path: Path, spec: str):
    ledger = Ledger(tmp_path / "ledger")
    result = ingest.ingest_pool(formats.list_shards(spec), tmp_path / "raw_pool", ledger, source=spec)
    return result, ingest.scan_raw_pool(tmp_path / "raw_pool").collect(), ledger.read("raw_pool")


@pytest.mark.parametrize("source", sorted(BUILDERS))
def test_every_hostile_sample_gets_its_promised_outcome(tmp_path, source):
    spec, cases = BUILDERS[source](tmp_path / "corpus")
    result, rows, drops = ingest_source(tmp_path, spec)
    kept = set(rows["uid"])
    reasons = drops.group_by("uid").agg(pl.col("reason")).to_dicts()
    reasons = {r["uid"]: set(r["reason"]) for r in reasons}
    for case in cases:
        if case.expect == "kept":
            assert case.uid in kept and case.uid not in reasons, case
        else:
            reason = case.expect.removeprefix("ledgered:")
            assert reason in reasons.get(case.uid, set()), (case, reasons.get(case.uid))
            row = drops.filter(pl.col("uid") == case.uid)
            assert row["detail"][0], case  # the detail says where the sample came from and what is wrong
    # nothing silent: every record read is kept or ledgered, and the rows are unique
    assert result.n_seen == rows.height + drops.height
    assert rows["uid"].n_unique() == rows.height


def test_duplicate_key_within_a_shard_is_not_merged_into_the_first(tmp_path):
    write_tar(tmp_path / "00000.tar", wds_sample("k1", caption="first") + wds_sample("k1", caption="second"))
    result, rows, drops = ingest_source(tmp_path, f"webdataset:{tmp_path}/00000.tar")
    assert rows["caption"].to_list() == ["first"]
    assert drops["reason"].to_list() == [formats.DUPLICATE_KEY] and result.n_seen == 2


def test_odd_images_are_decoded_upright_in_8bit_rgb():
    odd = {k: formats.decode_rgb(data) for k, (data, _) in hostile.odd_images().items()}
    assert all(im.mode == "RGB" for im in odd.values())
    # EXIF orientation 6: stored 80x40 with a white strip on the left, shown 40x80 with the strip on top
    exif = np.asarray(odd["exif_rotated_jpeg"], np.float32)
    assert exif.shape[:2] == (80, 40) and exif[:15].mean() > 200 > exif[-40:].mean()
    # 16-bit grey: a full-range ramp, not clipped to white
    grey = np.asarray(odd["grey_16bit_png"], np.float32)[..., 0]
    assert grey[0, 0] < 5 and grey[-1, -1] > 250 and 100 < grey.mean() < 155
    # transparency over white, first frame of an animation, CMYK back to roughly the original colours
    assert np.asarray(odd["animated_gif_as_png"])[5, 5].tolist() == [200, 0, 0]
    base = np.asarray(Image.open(io.BytesIO(hostile.good_image(3)[0])).convert("RGB"), np.float32)
    assert np.abs(np.asarray(odd["cmyk_jpeg"], np.float32) - base).mean() < 12
    inspected = formats.inspect_image(hostile.odd_images()["exif_rotated_jpeg"][0], formats.IngestLimits())
    assert inspected[:2] == (40, 80)


def test_csv_without_its_columns_fails_naming_the_file_and_the_fix(tmp_path):
    spec, case = hostile.build_csv_missing_columns(tmp_path)
    with pytest.raises(ValueError, match=case.expect.removeprefix("error:")) as err:
        ingest_source(tmp_path, spec)
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize("name", sorted(hostile.ROUND2_SOURCE_ERRORS))
def test_a_source_that_cannot_be_read_fails_naming_the_file_and_column(tmp_path, name):
    spec, case = hostile.ROUND2_SOURCE_ERRORS[name](tmp_path / "src")
    with pytest.raises(ValueError, match=case.expect.removeprefix("error:")):
        ingest_source(tmp_path, spec)


def test_every_source_byte_is_accounted_for_and_the_check_sees_a_gap(tmp_path):
    spec, _ = hostile.build_header_bitflip(tmp_path / "src")
    result, rows, drops = ingest_source(tmp_path, spec)
    manifest = ingest.read_manifest(tmp_path / "raw_pool")
    coverage, problems = ingest.source_coverage(manifest, set(drops["uid"]))
    assert problems == [] and coverage[0]["unreadable ranges"] == 1
    region_uid = manifest["shards"]["00000.tar"]["coverage"]["unreadable"][0]["uid"]
    _, problems = ingest.source_coverage(manifest, set(drops["uid"]) - {region_uid})
    assert len(problems) == 1 and "have no ledger row" in problems[0]
    manifest["shards"]["00000.tar"]["coverage"]["bytes_read"] -= 512
    _, problems = ingest.source_coverage(manifest, set(drops["uid"]))
    size = (tmp_path / "src" / "00000.tar").stat().st_size
    assert problems == [f"00000.tar: 512 of {size} bytes neither read nor in a ledgered unreadable range"]


@pytest.mark.parametrize("index", range(len(hostile.TASK_FILE_EDITS) + 1))
def test_each_wrong_task_file_field_is_named(tmp_path, index):
    case, text = hostile.task_file_cases(tmp_path)[index]
    with pytest.raises(TaskSetError, match=case.expect.removeprefix("error:")):
        parse_task_set(text, tmp_path, "tasks.yaml")


# ------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("name, ok", [
    ("000001", True), ("nested/dir/key", True), ("a..b", True), ("../x", False), ("a/../../x", False),
    ("/etc/passwd", False), ("C:/x", False), ("a\\..\\x", False), ("a\x00b", False), ("", False), ("..", False),
])
def test_unsafe_names_are_recognised(name, ok):
    assert (formats.unsafe_name(name) is None) is ok


@given(st.text(alphabet=st.sampled_from(list("ab./\\\x00:")), max_size=24))
def test_a_name_judged_safe_never_escapes_its_root(name):
    root = Path("/srv/pool-root")
    if formats.unsafe_name(name) is None:
        resolved = Path(os.path.normpath(root / name))
        assert resolved == root or root in resolved.parents


def test_a_path_traversal_tar_member_is_refused_and_never_written(tmp_path):
    write_tar(tmp_path / "00000.tar", wds_sample("000000001") + wds_sample("../../../tmp/evil"))
    _, rows, drops = ingest_source(tmp_path, f"webdataset:{tmp_path}/00000.tar")
    assert rows["uid"].to_list() == ["000000001"]
    assert drops["uid"].to_list() == ["../../../tmp/evil"] and drops["reason"].to_list() == [formats.UNSAFE_PATH]
    assert "'..' component" in drops["detail"][0]


def test_export_never_writes_outside_its_folder(tmp_path):
    from tads_assets.core.harness.clip_train import export_subset

    uids = ["nested/key", "plain", "we:ird key"]
    blob = image_bytes()
    out = tmp_path / "export"
    export_subset(uids, [blob] * 3, ["jpeg"] * 3, ["a", "b", "c"], out)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(out in p.parents for p in files)
    assert len(list((out / "images").iterdir())) == 3
    with tarfile.open(out / "shards" / "00000.tar") as tar:
        assert "nested/key.jpg" in tar.getnames()  # a nested WebDataset key stays a key


# ------------------------------------------------------------------------------------------ properties

_member_names = st.builds(lambda k, e: f"{k}.{e}", st.sampled_from(["a", "b", "c", "d/e", "../f", "/g"]),
                          st.sampled_from(["jpg", "png", "txt", "json", "cls"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(_member_names, st.sampled_from([b"", b"caption", image_bytes(), b"\xff\xd8junk"])),
                        max_size=12),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_webdataset_reader_never_raises_and_accounts_for_every_sample(tmp_path_factory, members, cut):
    tmp = tmp_path_factory.mktemp("wds")
    data = write_tar(tmp / "full.tar", members).read_bytes()
    (tmp / "00000.tar").write_bytes(data if cut is None else data[: int(len(data) * cut)])
    records = list(formats.read_shard(formats.Shard("webdataset", str(tmp / "00000.tar"), "00000.tar")))
    # one record per run of same-key members (a repeated extension starts a new one), or the breakage record
    assert all(r.uid and (r.problem is None) == (r.detail is None) for r in records)
    groups = 0
    prev, exts = None, set()
    for name, _ in members:
        key, ext = formats.split_member(name)
        if key != prev or ext in exts:
            groups, exts = groups + 1, set()
        prev = key
        exts.add(ext)
    if cut is None:
        assert len(records) == groups
    ledger = Ledger(tmp / "ledger")
    try:
        result = ingest.ingest_pool([formats.Shard("webdataset", str(tmp / "00000.tar"), "00000.tar")], tmp / "raw",
                                    ledger, source="prop")
        assert result.n_seen == result.n_kept + ledger.read("raw_pool").height
    except ingest.AllSamplesFailed:
        assert ledger.read("raw_pool").height == len(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.text(max_size=30), st.text(max_size=40)), max_size=8))
def test_csv_reader_gives_one_record_per_row_and_keeps_inside_its_folder(tmp_path_factory, rows):
    import csv

    tmp = tmp_path_factory.mktemp("csv")
    (tmp / "ok.jpg").write_bytes(image_bytes())
    with open(tmp / "pool.csv", "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "caption"])
        writer.writerows(rows)
    records = list(formats.read_shard(formats.Shard("csv", str(tmp / "pool.csv"), "pool.csv")))
    assert len(records) == len(rows)
    for rec in records:
        if rec.image is not None:
            assert Path(rec.ref).resolve().parent == tmp.resolve()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_inspect_image_never_raises_on_arbitrary_bytes(data):
    out = formats.inspect_image(data, formats.IngestLimits())
    assert isinstance(out, formats.Rejection) or (out[0] > 0 and out[1] > 0 and len(out[3]) == 64)


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["webdataset:v.tar", "classification", "retrieval", "{}", "a {}"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["tasks", "name", "kind", "classes", "templates", "weight", "validation", "test"]), inner,
        max_size=7), max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_yaml_values)
def test_task_parser_returns_tasks_or_names_the_problem(tmp_path, doc):
    (tmp_path / "v.tar").write_bytes(b"")
    for text in (yaml.safe_dump(doc), yaml.safe_dump({"tasks": [doc]})):
        try:
            tasks = parse_task_set(text, tmp_path, "tasks.yaml")
        except TaskSetError as exc:
            assert str(exc).startswith("tasks.yaml")
        else:
            assert tasks and all(isinstance(t, Task) and t.sets for t in tasks)


@given(st.text(max_size=200))
def test_task_parser_on_arbitrary_text(text):
    try:
        parse_task_set(text, "/nonexistent", "tasks.yaml")
    except TaskSetError as exc:
        assert str(exc).startswith("tasks.yaml")


def test_tads_explain_never_prints_terminal_escapes(tmp_path, capsys):
    from tads_assets import cli

    spec, cases = hostile.build_csv_round2(tmp_path / "src")
    ledger = Ledger(tmp_path / "home" / "ledger")
    ingest.ingest_pool(formats.list_shards(spec), tmp_path / "home" / "parquet" / "raw_pool", ledger, source=spec)
    uid = next(c.uid for c in cases if c.kind == "csv_image_path_terminal_escapes")
    assert "\x1b" in Path(spec.removeprefix("csv:")).read_bytes().decode("latin-1")
    capsys.readouterr()
    assert cli.main(["explain", uid, "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert "missing_file" in out and "\\x1b[2J" in out and "\x1b" not in out
    assert cli.main(["explain", "evil\x1b]0;title\x07", "--home", str(tmp_path / "home")]) == 1
    assert "\x1b" not in capsys.readouterr().out


def _task_set_outcome(path):
    """What the task_set asset does with a task file: parse it, then open and check every held-out set."""
    from tads_assets.core.io.eval_sets import check_eval_set

    tasks = load_task_set(path)
    for t in tasks:
        for split in ("validation", "test"):
            try:
                check_eval_set(t, split)
            except ValueError as exc:
                raise TaskSetError(f"{path}: task {t.name!r}.{split}: {exc}") from None
    return tasks


@pytest.mark.parametrize("index", range(len(hostile.TASK_FILE_EDITS) + 1, len(hostile.TASK_FILE_EDITS) + 12))
def test_task_set_checks_the_sets_and_the_yaml_it_will_rely_on(tmp_path, index):
    import re
    import time

    case, text = hostile.task_file_cases(tmp_path)[index]
    path = tmp_path / f"{case.kind}.yaml"
    if text is not None:
        path.write_text(text)
    t0 = time.perf_counter()
    if case.expect == "kept":
        tasks = _task_set_outcome(path)
        assert tasks[0].name == "shapes"
    else:
        with pytest.raises(TaskSetError) as err:
            _task_set_outcome(path)
        assert re.search(case.expect.removeprefix("error:"), str(err.value)), str(err.value)
        assert f"{case.kind}.yaml" in str(err.value) and len(str(err.value)) < 2000
    assert time.perf_counter() - t0 < 5  # the alias bomb is refused, not expanded


def test_nested_eval_keys_stay_whole_and_labels_come_from_json(tmp_path):
    from tads_assets.core.io.eval_sets import read_eval_set

    nested = hostile.eval_tar([(f"{d}/x{i}", {"cls": str(i % 2).encode()}) for d in "ab" for i in range(3)])
    (tmp_path / "n.tar").write_bytes(nested)
    es = read_eval_set(tmp_path / "n.tar", ("circle", "square"))
    assert es.keys == ["a/x0", "a/x1", "a/x2", "b/x0", "b/x1", "b/x2"] and es.labels.tolist() == [0, 1, 0, 0, 1, 0]
    (tmp_path / "j.tar").write_bytes(hostile.eval_tar([("j0", {"json": b'{"label": "square"}'})]))
    assert read_eval_set(tmp_path / "j.tar", ("circle", "square")).labels.tolist() == [1]
