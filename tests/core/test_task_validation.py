"""task_set validates what later stages rely on (relevance.support_texts, benchmark.evaluate_task, the proxy): one
test per rule, each failing if its rule were dropped. The hostile corpus runs the same rules end to end
(tests/core/test_hostile.py, benchmarks/hostile_inputs.py)."""

import time

import pytest
import yaml
from tads_assets.local import materialize

from resources import TadsPaths
from tads_assets.core.harness import benchmark
from tads_assets.core.io import eval_sets
from tads_assets.core.demo import hostile
from tads_assets.core.io import tasks
from tads_assets.core.io.tasks import Task, TaskSetError, load_task_set, parse_task_set, resolve_set, set_shards
from tests.assets.conftest import metadata_values
from tests.conftest import step_error_message


def _task(**kw) -> dict:
    return {"name": "shapes", "kind": "classification", "classes": ["circle", "square"],
            "templates": ["a photo of a {}."], "weight": 1, "validation": "webdataset:v.tar", "test": "webdataset:v.tar",
            **kw}


def _parse(tmp_path, *entries, text: str | None = None):
    if not (tmp_path / "v.tar").exists():
        (tmp_path / "v.tar").write_bytes(hostile._good_set())
    return parse_task_set(text if text is not None else yaml.safe_dump({"tasks": list(entries) or [_task()]}),
                          tmp_path, "tasks.yaml")


def _tar(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hostile.eval_tar(samples))
    return path


# ------------------------------------------------------------------------------------------- the task file


@pytest.mark.parametrize("template", ["a {} next to a {}", "a {place}", "a {0}", "a {!r}", "a {:>9}", "a {} }", "a {",
                                      "a {{}}", "no placeholder"])
def test_a_template_formats_exactly_one_positional_class_name(tmp_path, template):
    with pytest.raises(TaskSetError, match=r"^tasks\.yaml: task 'shapes'\.templates: ") as err:
        _parse(tmp_path, _task(templates=["a photo of a {}.", template]))
    assert repr(template) in str(err.value)
    ok = _parse(tmp_path, _task(templates=["{} with {{braces}}", "{}"]))[0]
    assert [t.format("circle") for t in ok.templates] == ["circle with {braces}", "circle"]


@pytest.mark.parametrize("weight", [".inf", "-.inf", ".nan", "true", "'1'", "9" * 400, "-1"])
def test_weights_are_finite_non_negative_numbers(tmp_path, weight):
    text = yaml.safe_dump({"tasks": [_task()]}).replace("weight: 1", f"weight: {weight}")
    with pytest.raises(TaskSetError, match=r"'shapes'\.weight: expected a finite number ≥ 0, got ") as err:
        _parse(tmp_path, text=text)
    assert len(str(err.value)) < 200


def test_at_least_one_task_has_a_positive_weight(tmp_path):
    with pytest.raises(TaskSetError, match=r"tasks\[\*\]\.weight: every task has weight 0"):
        _parse(tmp_path, _task(weight=0), _task(name="caps", kind="retrieval", weight=0.0))
    assert [t.weight for t in _parse(tmp_path, _task(weight=0), _task(name="caps", kind="retrieval"))] == [0.0, 1.0]


@pytest.mark.parametrize("classes, message", [
    ([None, ""], "non-empty strings, got [None, '']"), ([1, 2], "non-empty strings"),
    ([["circle"], "square"], "non-empty strings"), ([" ", "square"], "non-empty strings"),
    (["circle", " circle "], "repeat ('circle'"), (["circle"], "at least 2"),
])
def test_class_names_are_non_empty_unique_strings(tmp_path, classes, message):
    with pytest.raises(TaskSetError, match=r"'shapes'\.classes: ") as err:
        _parse(tmp_path, _task(classes=classes))
    assert message in str(err.value)


def test_a_retrieval_tasks_classes_are_a_list_too(tmp_path):
    with pytest.raises(TaskSetError, match=r"'caps'\.classes: expected a list of class names, got str"):
        _parse(tmp_path, _task(), _task(name="caps", kind="retrieval", classes="abc"))


def test_task_names_hold_no_comma(tmp_path):  # relevance_vectors stores the task order comma-separated
    with pytest.raises(TaskSetError, match=r"'a,b'\.name: a task name may not contain ','"):
        _parse(tmp_path, _task(name="a,b"))


@pytest.mark.parametrize("text, key, line", [
    ("tasks: []\ntasks: []\n", "tasks", 2),
    ("tasks:\n- name: s\n  kind: classification\n  kind: retrieval\n", "kind", 4),
    ("tasks:\n- name: s\n  extra:\n    deep: [{a: 1, a: 2}]\n", "a", 4),
])
def test_duplicate_keys_are_refused_at_any_depth_naming_key_and_line(tmp_path, text, key, line):
    with pytest.raises(TaskSetError, match=rf"duplicate key '{key}'.*line {line}"):
        _parse(tmp_path, text=text)


def test_anchors_and_aliases_are_refused_and_the_alias_bomb_is_not_expanded(tmp_path):
    bomb = next(text for case, text in hostile.task_file_cases(tmp_path / "c") if case.kind == "task_yaml_alias_bomb")
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    t0 = time.perf_counter()
    with pytest.raises(TaskSetError, match="anchors and aliases are not allowed") as err:
        load_task_set(path)
    assert time.perf_counter() - t0 < 1 and len(str(err.value)) < 500 and "bomb.yaml" in str(err.value)
    with pytest.raises(TaskSetError, match=r"aliases are not allowed .*found alias \*n"):
        _parse(tmp_path, text="n: 1\ntasks: [*n]\n")


def test_a_task_file_over_1_mib_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"tasks": [_task()]}) + "#" * tasks.MAX_TASK_FILE_BYTES)
    monkeypatch.setattr(tasks.yaml, "load", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(TaskSetError, match=r"big\.yaml: \d+ bytes; a task file is at most 1048576"):
        load_task_set(path)


@pytest.mark.parametrize("field, value", [("kind", "x" * 100_000), ("name", "x" * 100_000),
                                          ("templates", ["x" * 100_000]), ("validation", "webdataset:" + "x" * 100_000),
                                          ("classes", ["x" * 100_000, None])])
def test_error_messages_quote_at_most_a_few_hundred_characters(tmp_path, field, value):
    with pytest.raises(TaskSetError) as err:
        _parse(tmp_path, _task(**{field: value}, **({"kind": "detection"} if field == "name" else {})))
    assert len(str(err.value)) < 600, str(err.value)[:300]


def test_a_task_path_that_is_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(TaskSetError, match=r"is a directory: set TADS_TASKS to a task-set YAML file"):
        load_task_set(tmp_path)


# ------------------------------------------------------------------------------------------- the set specs


def test_a_set_is_a_file_a_shard_pattern_or_a_folder_of_shards(tmp_path):
    for name in ("p-0.tar", "p-1.tar", "p-2.tar", "d/b.tar", "d/a.tgz", "d/c.tar.gz", "d/notes.txt", "g/x1.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert set_shards(tmp_path / "p-{0..1}.tar") == [tmp_path / "p-0.tar", tmp_path / "p-1.tar"]
    assert set_shards(tmp_path / "p-{2,0}.tar") == [tmp_path / "p-2.tar", tmp_path / "p-0.tar"]
    assert set_shards(tmp_path / "p-*.tar") == [tmp_path / f"p-{i}.tar" for i in range(3)]
    assert set_shards(tmp_path / "{d,g}/*.tar") == [tmp_path / "d/b.tar", tmp_path / "g/x1.tar"]
    assert set_shards(tmp_path / "d") == [tmp_path / "d" / n for n in ("a.tgz", "b.tar", "c.tar.gz")]
    (tmp_path / "odd[1]").mkdir()
    (tmp_path / "odd[1]" / "s.tar").write_bytes(b"")
    assert set_shards(tmp_path / "odd[1]" / "s.tar") == [tmp_path / "odd[1]" / "s.tar"]  # a name, not a glob


def test_set_specs_resolve_against_the_task_file_and_round_trip(tmp_path):
    (tmp_path / "sets").mkdir()
    for i in range(2):
        _tar(tmp_path / "sets" / f"v-{i}.tar", [(f"k{i}", {"cls": b"0"})])
    text = yaml.safe_dump({"tasks": [_task(validation="webdataset:sets/v-{0..1}.tar", test="webdataset:sets")]})
    (tmp_path / "tasks.yaml").write_text(text)
    (t,) = load_task_set(tmp_path / "tasks.yaml")
    assert t.sets == {"validation": tmp_path / "sets/v-{0..1}.tar", "test": tmp_path / "sets"}
    assert Task.from_dict(t.as_dict()) == t
    assert len(resolve_set(t.sets["validation"], "x")) == 2


@pytest.mark.parametrize("spec, message", [("gone.tar", "does not exist"), ("none-{0..3}.tar", "matches no file"),
                                           ("empty", "folder .* holds no shard")])
def test_a_set_spec_matching_nothing_names_task_and_field(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskSetError, match=rf"^tasks\.yaml: task 'shapes'\.validation: .*{message}"):
        _parse(tmp_path, _task(validation=f"webdataset:{spec}"))


def test_a_brace_expansion_error_propagates_naming_task_and_field(tmp_path, monkeypatch):
    from tads_assets.core.io import formats

    def refuse(pattern, *a, **k):
        raise ValueError(f"pattern {pattern!r} expands to too many paths")

    monkeypatch.setattr(formats, "expand_braces", refuse)
    with pytest.raises(TaskSetError, match=r"'shapes'\.test: pattern .* expands to too many paths"):
        _parse(tmp_path, _task(test="webdataset:t-{0..9}.tar"))


# ------------------------------------------------------------------------------------------- the set contents


def test_every_shard_is_read_and_nested_keys_stay_whole(tmp_path):
    _tar(tmp_path / "s/0.tar", [(f"{d}/x{i}", {"cls": str(i % 2).encode()}) for d in "ab" for i in range(3)])
    _tar(tmp_path / "s/1.tar", [("c/x0", {"cls": b"square"})])
    es = eval_sets.read_eval_set(tmp_path / "s", ("circle", "square"))
    assert es.keys == ["a/x0", "a/x1", "a/x2", "b/x0", "b/x1", "b/x2", "c/x0"]
    assert es.labels.tolist() == [0, 1, 0, 0, 1, 0, 1] and len(es.images) == 7


def test_labels_come_from_cls_else_json(tmp_path):
    import json

    _tar(tmp_path / "j.tar", [("a", {"json": json.dumps({"label": 1}).encode()}),
                              ("b", {"json": json.dumps({"cls": "circle"}).encode()}),
                              ("c", {"cls": b" square \n", "json": json.dumps({"label": 0}).encode()})])
    assert eval_sets.read_eval_set(tmp_path / "j.tar", ("circle", "square")).labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("rec, message", [
    ({"cls": b"7"}, r"'k0': label 7 is out of range for 2 classes"),
    ({"cls": b"-1"}, r"'k0': label -1 is out of range"),
    ({"json": b'{"label": 99}'}, r"'k0': label 99 is out of range"),
    ({"cls": b"hexagon"}, r"'k0': label 'hexagon' is not one of the task's classes"),
    ({"cls": b"caf\xe9"}, r"'k0': k0\.cls is not UTF-8"),
    ({"cls": b"0", "txt": b"\xff\xfe"}, r"'k0': k0\.txt is not UTF-8"),
    ({"json": b"{not json"}, r"'k0': k0\.json is not valid JSON"),
    ({"json": b'{"label": 1.5}'}, r"'k0': label 1\.5 is neither a class index nor a class name"),
    ({"jpg": b"not an image", "cls": b"0"}, r"'k0': the image does not decode"),
])
def test_a_bad_sample_raises_naming_set_file_and_key(tmp_path, rec, message):
    path = _tar(tmp_path / "bad.tar", [("ok", {"cls": b"0"}), ("k0", rec)])
    with pytest.raises(ValueError, match=rf"bad\.tar: sample {message}"):
        eval_sets.read_eval_set(path, ("circle", "square"))


def test_a_sample_without_image_and_a_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "noimg.tar").write_bytes(hostile.tar_bytes([("k0.cls", b"0")]))
    with pytest.raises(ValueError, match=r"noimg\.tar: sample 'k0': no image member"):
        eval_sets.read_eval_set(tmp_path / "noimg.tar", ("circle", "square"))
    (tmp_path / "v.tar").write_text("just some text\n" * 100)
    with pytest.raises(ValueError, match=r"v\.tar: .*not tar headers"):
        eval_sets.read_eval_set(tmp_path / "v.tar", ("circle", "square"))


def test_classification_samples_need_labels_and_retrieval_samples_captions(tmp_path):
    _tar(tmp_path / "v.tar", [("a", {"cls": b"0"}), ("b", {"txt": b"a caption"})])
    cls_task, ret_task = _parse(tmp_path, _task(), _task(name="caps", kind="retrieval"))
    with pytest.raises(ValueError, match=r"1 sample\(s\) have no label .* e\.g\. 'b'"):
        eval_sets.check_eval_set(cls_task, "validation")
    with pytest.raises(ValueError, match=r"1 sample\(s\) have no caption \(KEY\.txt\), e\.g\. 'a'"):
        eval_sets.check_eval_set(ret_task, "validation")


def test_what_task_set_validated_is_all_scoring_and_relevance_need(tmp_path):
    """On a set check_eval_set passed, the support set and the scores build (prompts hold each class name)."""
    import numpy as np

    from tads_assets.core.method import relevance

    _tar(tmp_path / "v.tar", [(f"k{i}", {"cls": str(i % 2).encode(), "txt": f"a caption {{{i}}}".encode()})
                              for i in range(4)])
    cls_task, ret_task = _parse(tmp_path, _task(templates=["{} and {{x}}", "a {}"]),
                                  _task(name="caps", kind="retrieval", templates=["{}"]))
    texts = relevance.support_texts(cls_task.kind, cls_task.templates, cls_task.classes)
    assert texts == ["circle and {x}", "a circle", "square and {x}", "a square"]
    assert relevance.support_texts("retrieval", ret_task.templates, captions=eval_sets.check_eval_set(
        ret_task, "validation").captions)[0] == "a caption {0}"
    rng = np.random.default_rng(0)
    enc = lambda items: rng.normal(size=(len(items), 8)).astype(np.float32)  # noqa: E731
    for t in (cls_task, ret_task):
        s = benchmark.evaluate_task(t.as_dict(), eval_sets.check_eval_set(t, "test"), enc, enc)
        assert s.n == 4 and all(np.isfinite(v) for v in s.metrics.values())


# ------------------------------------------------------------------------------------------- the asset


def test_task_set_counts_both_sets_of_every_task_and_fails_naming_task_and_split(tmp_path):
    from tads_assets.characterize import task_set

    _tar(tmp_path / "v.tar", [(f"v{i}", {"cls": str(i % 2).encode(), "txt": f"caption {i}".encode()}) for i in range(5)])
    _tar(tmp_path / "t/0.tar", [("t0", {"cls": b"square", "txt": b"x"})])
    _tar(tmp_path / "t/1.tar", [("t1", {"cls": b"1", "txt": b"y"}), ("t2", {"cls": b"0", "txt": b"z"})])
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": [_task(test="webdataset:t"),
                                              _task(name="caps", kind="retrieval", test="webdataset:t/{0..1}.tar")]}))
    result = materialize([task_set], resources={"paths": TadsPaths(home=str(tmp_path / "home"), tasks=str(path))})
    meta = metadata_values(result, "task_set")
    assert meta["n_held_out_items"] == 5 + 3 + 5 + 3
    rows = [[r.data["task"], r.data["split"], r.data["items"]] for r in meta["held_out_sets"].records]
    assert rows == [["shapes", "validation", 5], ["shapes", "test", 3], ["caps", "validation", 5], ["caps", "test", 3]]
    hist = meta["label_histogram"]
    assert [c.name for c in hist.schema.columns] == ["task", "class", "validation", "test"]
    assert [list(r.data.values()) for r in hist.records] == [["shapes", "circle", 3, 1], ["shapes", "square", 2, 2]]

    _tar(tmp_path / "t/1.tar", [("t1", {"cls": b"7", "txt": b"y"})])  # the test set now has a label the task lacks
    result = materialize([task_set], resources={"paths": TadsPaths(home=str(tmp_path / "h2"), tasks=str(path))},
                         raise_on_error=False)
    assert not result.success
    message = step_error_message(result)
    assert f"{path}: task 'shapes'.test: " in message and "1.tar: sample 't1': label 7 is out of range" in message
