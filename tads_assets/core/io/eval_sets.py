"""The tasks' held-out sets: a WebDataset tar (or shards, or a folder of shards) per split, read by the
byte-accounting tar reader (members KEY.jpg|png, KEY.cls or KEY.json 'label', KEY.txt)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tads_assets.core.io import tarscan
from tads_assets.core.io.formats import decode_rgb, split_member
from tads_assets.core.sanitize import one_line
from tads_assets.core.io.tasks import set_shards


@dataclass
class EvalSet:
    keys: list[str]
    images: list[Image.Image]
    labels: np.ndarray  # class index per image (-1 where the set has no label)
    captions: list[str]


EVAL_MEMBER_LIMIT = 32 << 20  # bytes of one member of a held-out set read at most


def _eval_tar_groups(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of the samples of one held-out shard, read by the byte-accounting tar reader: keys keep
    their folders (`a/x0` and `b/x0` are two samples); any unreadable byte, link or special member, undecodable
    name or member over EVAL_MEMBER_LIMIT is an error naming the file (a test set is small and must be whole)."""
    key, group = None, {}
    for ev in tarscan.scan_tar(str(path), lambda name: EVAL_MEMBER_LIMIT):
        if isinstance(ev, tarscan.Region | tarscan.BadHeader):
            what = ev.detail if isinstance(ev, tarscan.Region) else ev.problem
            raise ValueError(f"{path}: {one_line(what)} (a held-out set must be a whole tar)")
        if ev.kind == "directory":
            continue
        if ev.name_error or not ev.regular or ev.data is None:
            why = ev.name_error or ev.skipped or ev.kind
            raise ValueError(f"{path}: member {one_line(ev.name, 120)!r}: {why}")
        k, ext = split_member(ev.name)
        if key is not None and (k != key or ext in group):
            yield key, group
            group = {}
        key = k
        group[ext] = ev.data
    if key is not None:
        yield key, group


def _text(blob: bytes, path: Path, key: str, ext: str) -> str:
    try:
        return blob.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: sample {one_line(key, 120)!r}: {key}.{ext} is not UTF-8 (byte {exc.start})") from None


def _label(rec: dict[str, bytes], classes: Sequence[str], path: Path, key: str) -> int:
    """The class index of a sample from KEY.cls (index or class name), else KEY.json's `label` (or `cls`); -1
    when the sample has none. Out-of-range indices and unknown names are errors naming file and key."""
    where = f"{path}: sample {one_line(key, 120)!r}"
    if "cls" in rec:
        value: object = _text(rec["cls"], path, key, "cls")
    elif "json" in rec:
        try:
            meta = json.loads(_text(rec["json"], path, key, "json"))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{where}: {key}.json is not valid JSON ({one_line(exc, 120)})") from None
        value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else None
        if value is None:
            return -1
    else:
        return -1
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if value == "":
        return -1
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: label {one_line(repr(value), 60)} is neither a class index nor a class name")
    if isinstance(value, str):
        names = [c.strip() for c in classes]  # the task file's names compared as KEY.cls is read: stripped
        if value.strip() not in names:
            raise ValueError(f"{where}: label {one_line(repr(value), 60)} is not one of the task's classes")
        return names.index(value.strip())
    if classes and not 0 <= value < len(classes):
        raise ValueError(f"{where}: label {value} is out of range for {len(classes)} classes (0..{len(classes) - 1})")
    return value


def read_eval_set(path: str | Path, classes: Sequence[str] = ()) -> EvalSet:
    """A task's held-out set: one tar, a shard pattern or a folder of shards (`tasks.set_shards`) of KEY.jpg|png
    with KEY.cls (class index or name) or KEY.json (`label`), and/or KEY.txt. Raises naming the file and the key
    for anything it cannot use."""
    shards = set_shards(path)
    if not shards:
        raise ValueError(f"{path} names no shard file")
    keys, images, labels, captions = [], [], [], []
    seen: set[str] = set()
    for shard in shards:
        for key, rec in _eval_tar_groups(shard):
            where = f"{shard}: sample {one_line(key, 120)!r}"
            if key in seen:
                raise ValueError(f"{where}: key used by more than one sample of the set")
            seen.add(key)
            blob = next((rec[e] for e in ("jpg", "jpeg", "png", "webp") if e in rec), None)
            if blob is None:
                raise ValueError(f"{where}: no image member (found: {sorted(rec)})")
            try:
                images.append(decode_rgb(blob))
            except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad bytes
                raise ValueError(f"{where}: the image does not decode ({type(exc).__name__}: {one_line(exc, 120)})") from None
            labels.append(_label(rec, classes, shard, key) if classes else -1)  # retrieval sets: labels unused
            captions.append(_text(rec["txt"], shard, key, "txt") if "txt" in rec else "")
            keys.append(key)
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable") if keys else np.zeros(0, int)
    return EvalSet([keys[i] for i in order], [images[i] for i in order], np.asarray(labels, np.int64)[order],
                   [captions[i] for i in order])


def check_eval_set(task, split: str) -> EvalSet:
    """Read a task's set as every later stage will, and check what they rely on: classification samples all
    labelled, retrieval samples all captioned, at least one sample. Raises naming the set and the problem."""
    es = read_eval_set(task.sets[split], task.classes)
    if not es.keys:
        raise ValueError(f"{task.sets[split]}: the set holds no sample")
    if task.kind == "classification" and (es.labels < 0).any():
        missing = [k for k, lab in zip(es.keys, es.labels) if lab < 0]
        raise ValueError(f"{len(missing)} sample(s) have no label (KEY.cls or KEY.json 'label'), e.g. "
                         f"{one_line(missing[0], 120)!r}")
    if task.kind == "retrieval" and not all(es.captions):
        missing = [k for k, c in zip(es.keys, es.captions) if not c]
        raise ValueError(f"{len(missing)} sample(s) have no caption (KEY.txt), e.g. {one_line(missing[0], 120)!r}")
    return es


def load_eval_sets(tasks: Sequence, split: str) -> dict[str, EvalSet]:
    """Each task's held-out set of one split ("validation" or "test"), read once."""
    return {t.name: read_eval_set(t.sets[split], t.classes) for t in tasks}
