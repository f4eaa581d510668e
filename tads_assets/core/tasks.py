"""The downstream task set (DESIGN.md "Configuration", `TADS_TASKS`): parsing and validation.

A bad file fails with a message naming the task and the field. Set paths (`webdataset:PATH`) are
resolved against the task file's folder when relative.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KINDS = ("classification", "retrieval")
SPLITS = ("validation", "test")


class TaskSetError(ValueError):
    """A task file that cannot be used, with the task and field at fault in the message."""


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    templates: tuple[str, ...]
    weight: float
    sets: dict[str, Path] = field(default_factory=dict)  # split -> WebDataset tar
    classes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes), "templates": list(self.templates),
                "weight": self.weight, **{s: str(p) for s, p in self.sets.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        """The inverse of `as_dict` (paths already resolved)."""
        return cls(d["name"], d["kind"], tuple(d["templates"]), float(d["weight"]),
                   {s: Path(d[s]) for s in SPLITS if s in d}, tuple(d.get("classes", ())))


def _set_path(value: object, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.startswith("webdataset:"):
        raise TaskSetError(f"{where}: expected 'webdataset:PATH' (a tar of KEY.jpg|png with KEY.cls or KEY.txt), got {value!r}")
    path = Path(value.removeprefix("webdataset:")).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise TaskSetError(f"{where}: {path} does not exist or is not a file")
    return path


def parse_task_set(text: str, base_dir: str | Path, source: str = "task file") -> list[Task]:
    """Tasks of a task-set YAML document (schema in DESIGN.md)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaskSetError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise TaskSetError(f"{source}: expected a mapping with a non-empty list under 'tasks'")
    base, tasks, names = Path(base_dir), [], set()
    for i, entry in enumerate(doc["tasks"]):
        where = f"{source}: tasks[{i}]"
        if not isinstance(entry, dict):
            raise TaskSetError(f"{where}: expected a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TaskSetError(f"{where}.name: missing or empty")
        where = f"{source}: task {name!r}"
        if name in names:
            raise TaskSetError(f"{where}.name: used by more than one task")
        names.add(name)
        kind = entry.get("kind")
        if kind not in KINDS:
            raise TaskSetError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        templates = entry.get("templates", ["{}"] if kind == "retrieval" else None)
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise TaskSetError(f"{where}.templates: expected a non-empty list of strings")
        for t in templates:
            if "{}" not in t:
                raise TaskSetError(f"{where}.templates: {t!r} has no '{{}}' placeholder for the class name")
        classes = entry.get("classes", [])
        if kind == "classification":
            if not isinstance(classes, list) or len(classes) < 2:
                raise TaskSetError(f"{where}.classes: a classification task needs a list of at least 2 class names")
            classes = [str(c) for c in classes]
            if len(set(classes)) != len(classes):
                raise TaskSetError(f"{where}.classes: class names repeat")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise TaskSetError(f"{where}.weight: expected a number ≥ 0, got {weight!r}")
        sets = {}
        for split in SPLITS:
            if split not in entry:
                raise TaskSetError(f"{where}.{split}: missing (webdataset:PATH of the {split} set)")
            sets[split] = _set_path(entry[split], f"{where}.{split}", base)
        tasks.append(Task(name, kind, tuple(templates), float(weight), sets, tuple(classes)))
    return tasks


def load_task_set(path: str | Path) -> list[Task]:
    path = Path(path)
    if not path.is_file():
        raise TaskSetError(f"task file {path} does not exist (set TADS_TASKS to a task-set YAML)")
    return parse_task_set(path.read_text(), path.parent, str(path))


def task_set_hash(path: str | Path) -> str:
    """The data version of a task set: sha256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
