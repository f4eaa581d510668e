"""The task-set parser: a valid file parses (each wrong field in turn: tests/core/test_hostile.py)."""

import pytest
import yaml

from tads_assets.core.io.tasks import TaskSetError, load_task_set, parse_task_set, task_set_hash


def _doc(tmp_path):
    (tmp_path / "v.tar").write_bytes(b"")
    (tmp_path / "t.tar").write_bytes(b"")
    return {"tasks": [
        {"name": "shapes", "kind": "classification", "classes": ["circle", "square"], "templates": ["a photo of a {}."],
         "weight": 2, "validation": "webdataset:v.tar", "test": "webdataset:t.tar"},
        {"name": "caps", "kind": "retrieval", "validation": "webdataset:v.tar", "test": f"webdataset:{tmp_path / 't.tar'}"},
    ]}


def test_a_valid_file_parses_with_relative_paths_resolved(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(_doc(tmp_path)))
    shapes, caps = load_task_set(path)
    assert shapes.classes == ("circle", "square") and shapes.weight == 2.0
    assert shapes.sets["validation"] == tmp_path / "v.tar"
    assert caps.templates == ("{}",) and caps.kind == "retrieval"
    before = task_set_hash(path)
    path.write_text(path.read_text() + "\n# comment\n")
    assert task_set_hash(path) != before


def test_unreadable_yaml_and_missing_file(tmp_path):
    with pytest.raises(TaskSetError, match="not valid YAML"):
        parse_task_set("tasks: [", tmp_path)
    with pytest.raises(TaskSetError, match="TADS_TASKS"):
        load_task_set(tmp_path / "nope.yaml")
