"""The downstream task set (docs/architecture.md, `TADS_TASKS`): parsing and validation.

A bad file fails with a message naming the task and the field. Set paths (`webdataset:PATH`) are
resolved against the task file's folder when relative.
"""

from __future__ import annotations

import glob
import hashlib
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tads_assets.core.sanitize import one_line
from tads_assets.core.io import formats

KINDS = ("classification", "retrieval")
SPLITS = ("validation", "test")
MAX_TASK_FILE_BYTES = 1 << 20  # a task file is a few lines; a larger one is refused before parsing
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases (an alias bomb of a few hundred bytes expands to gigabytes) and with
    duplicate mapping keys refused (YAML lets the last one win silently)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            what = f"{'alias *' if isinstance(event, yaml.AliasEvent) else 'anchor &'}{one_line(event.anchor, 40)}"
            raise yaml.constructor.ConstructorError(
                None, None, f"anchors and aliases are not allowed in a task file (found {what})", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader's own construct_mapping refuses an unhashable key, with its line
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {one_line(key, 80)!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_template(t: str, where: str) -> None:
    """A template formats exactly one class name: one `{}` field, nothing else between braces."""
    try:
        specs = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t) if f is not None]
    except ValueError as exc:
        raise TaskSetError(f"{where}.templates: {one_line(t, 120)!r} is not a valid template ({exc}); write "
                           "literal braces as {{ and }}") from None
    if len(specs) != 1:
        raise TaskSetError(f"{where}.templates: {one_line(t, 120)!r} has {len(specs)} '{{}}' placeholders; each "
                           "template takes exactly one, for the class name")
    if specs[0] != ("", "", None):
        f, spec, conv = specs[0]
        field = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        raise TaskSetError(f"{where}.templates: {one_line(t, 120)!r} uses {one_line(field, 60)!r} (a named or "
                           "numbered field, conversion or format spec); write the class name's placeholder as a "
                           "plain '{}'")


def set_shards(spec: str | Path) -> list[Path]:
    """The shard files of a held-out set: a tar (or .tar.gz), a shard pattern (`{000..009}`, `{a,b}`, globs) or a
    directory of shards; [] when it names nothing."""
    text = str(spec)
    path = Path(text)
    if path.is_file():  # a file's own name wins over pattern characters in it (a folder named "data[1]")
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES) and p.is_file())
    if any(c in text for c in "{*?["):
        out = []
        for p in formats.expand_braces(text):
            out += [Path(q) for q in sorted(glob.glob(p))] if any(c in p for c in "*?[") else [Path(p)]
        return [p for p in out if p.is_file()]
    return []


def _set_path(value: object, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.startswith("webdataset:"):
        raise TaskSetError(f"{where}: expected 'webdataset:PATH' (a tar, a shard pattern or a folder of shards of "
                           f"KEY.jpg|png with KEY.cls, KEY.json or KEY.txt), got {one_line(value, 200)!r}")
    path = Path(value.removeprefix("webdataset:")).expanduser()
    path = path if path.is_absolute() else base / path
    resolve_set(path, where)
    return path


def resolve_set(spec: str | Path, where: str) -> list[Path]:
    """The shard files of a set spec (`set_shards`), or a TaskSetError naming `where` (task and field) when the
    spec matches nothing or cannot be expanded (a brace pattern over formats.MAX_BRACE_EXPANSION, a name too long
    for the file system)."""
    shown = one_line(spec, 200)
    try:
        shards = set_shards(spec)
    except (ValueError, OSError) as exc:
        raise TaskSetError(f"{where}: {one_line(exc, 300)}") from None
    if shards:
        return shards
    if Path(spec).is_dir():
        raise TaskSetError(f"{where}: folder {shown} holds no shard ({', '.join('*' + s for s in SHARD_SUFFIXES)})")
    if any(c in str(spec) for c in "{*?["):
        raise TaskSetError(f"{where}: shard pattern {shown} matches no file")
    raise TaskSetError(f"{where}: {shown} does not exist or is not a file, a shard pattern or a folder of shards")


def parse_task_set(text: str, base_dir: str | Path, source: str = "task file") -> list[Task]:
    """Tasks of a task-set YAML document (schema in docs/architecture.md)."""
    if len(text) > MAX_TASK_FILE_BYTES:
        raise TaskSetError(f"{source}: {len(text)} characters; a task file is at most {MAX_TASK_FILE_BYTES}")
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: an integer of over 4300 digits
        raise TaskSetError(f"{source}: not valid YAML: {one_line(e, 500)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise TaskSetError(f"{source}: expected a mapping with a non-empty list under 'tasks'")
    base, tasks, names = Path(base_dir), [], set()
    for i, entry in enumerate(doc["tasks"]):
        where = f"{source}: tasks[{i}]"
        if not isinstance(entry, dict):
            raise TaskSetError(f"{where}: expected a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "" if name is None or name == "" else f", got {one_line(repr(name), 60)}"
            raise TaskSetError(f"{where}.name: missing or empty (a non-empty string){got}")
        where = f"{source}: task {one_line(name, 120)!r}"
        if name in names:
            raise TaskSetError(f"{where}.name: used by more than one task")
        if "," in name:  # relevance_vectors stores the task order comma-separated; trained_dvn compares it
            raise TaskSetError(f"{where}.name: a task name may not contain ','")
        names.add(name)
        kind = entry.get("kind")
        if kind not in KINDS:
            raise TaskSetError(f"{where}.kind: {one_line(repr(kind), 120)} is not one of {', '.join(KINDS)}")
        templates = entry.get("templates", ["{}"] if kind == "retrieval" else None)
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise TaskSetError(f"{where}.templates: expected a non-empty list of strings")
        for t in templates:
            _check_template(t, where)
        classes = entry.get("classes", [])
        if kind == "classification" and (not isinstance(classes, list) or len(classes) < 2):
            raise TaskSetError(f"{where}.classes: a classification task needs a list of at least 2 class names")
        if not isinstance(classes, list):  # a retrieval task's (unused) classes: a list all the same
            raise TaskSetError(f"{where}.classes: expected a list of class names, got {type(classes).__name__}")
        bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
        if bad:
            raise TaskSetError(f"{where}.classes: class names must be non-empty strings, got {one_line(bad[:3], 120)}")
        stripped = [c.strip() for c in classes]  # a KEY.cls naming a class is read stripped
        if len(set(stripped)) != len(stripped):
            twice = next(c for c in stripped if stripped.count(c) > 1)
            raise TaskSetError(f"{where}.classes: class names repeat ({one_line(repr(twice), 120)}, compared without "
                               "surrounding spaces)")
        weight = entry.get("weight", 1.0)
        if not _finite_weight(weight):
            raise TaskSetError(f"{where}.weight: expected a finite number ≥ 0, got {one_line(repr(weight), 60)}")
        sets = {}
        for split in SPLITS:
            if split not in entry:
                raise TaskSetError(f"{where}.{split}: missing (webdataset:PATH of the {split} set)")
            sets[split] = _set_path(entry[split], f"{where}.{split}", base)
        tasks.append(Task(name, kind, tuple(templates), float(weight), sets, tuple(classes)))
    if not any(t.weight > 0 for t in tasks):  # J = Σ φ_k·Eval_k would be 0 for every selection
        raise TaskSetError(f"{source}: tasks[*].weight: every task has weight 0; at least one needs a weight > 0")
    return tasks


def _finite_weight(w: object) -> bool:
    if isinstance(w, bool) or not isinstance(w, int | float):
        return False
    try:
        return math.isfinite(float(w)) and w >= 0
    except OverflowError:  # an integer beyond float range
        return False


def load_task_set(path: str | Path) -> list[Task]:
    path = Path(path)
    if path.is_dir():
        raise TaskSetError(f"task file {path} is a directory: set TADS_TASKS to a task-set YAML file")
    if not path.is_file():
        raise TaskSetError(f"task file {path} does not exist or is not a regular file (set TADS_TASKS to a "
                           "task-set YAML)")
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise TaskSetError(f"{path}: {path.stat().st_size} bytes; a task file is at most {MAX_TASK_FILE_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskSetError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return parse_task_set(text, path.parent, str(path))


def task_set_hash(path: str | Path) -> str:
    """The data version of a task set: sha256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
