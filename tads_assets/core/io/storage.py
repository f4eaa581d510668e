"""Stage outputs: a folder replaced whole (`staged_dir`, `replace_dir`), kept rows + ledger rows written together
(`write_stage_output`), and one writer per output: a lock per stage output under TADS_HOME/locks (`output_lock`),
so two runs never write the same output at once. Single files are written by `tads_assets.core.atomic`."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from tads_assets.core.atomic import write_json_atomic, write_parquet_atomic
from tads_assets.core.io.ledger import new_run_id

log = logging.getLogger(__name__)


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written staging directory into place of `target` (old contents removed).

    Safe when two writers swap the same target at once (outputs are locked, so this is a second line of
    defence): each moves the current target aside under its own uuid'd `.old-` name; a target that vanished in
    between (the other writer moved it) is fine, and one that reappeared between the two renames (the other
    writer's folder, which a rename cannot replace) is moved aside again. The last writer's folder wins whole."""
    staging, target = Path(staging), Path(target)
    for _ in range(100):
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(target, old)
        except FileNotFoundError:
            old = None
        try:
            os.replace(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not staging.exists():
                raise
            continue  # another writer's folder landed on `target` between our two renames
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return
    raise RuntimeError(f"could not swap {staging} into {target}: other writers kept replacing it")


def staging_dir(target: str | os.PathLike, tag: str | None = None) -> Path:
    """A staging folder beside `target` that belongs to one writer only: `.<name>.staging-<tag>` (`tag` a run id,
    random when not given), emptied first."""
    target = Path(target)
    tag = tag or uuid.uuid4().hex[:12]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag) or tag.startswith("."):
        raise ValueError(f"invalid staging tag {tag!r}")
    staging = target.with_name(f".{target.name}.staging-{tag}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


@contextmanager
def staged_dir(target: str | os.PathLike, tag: str | None = None) -> Iterator[Path]:
    """Write a folder's new contents into a staging folder of this writer's own (`staging_dir`), swapped in for
    `target` when the block ends without an exception, removed otherwise (never shared, never left behind)."""
    staging = staging_dir(target, tag)
    try:
        staging.mkdir(parents=True)
        yield staging
        replace_dir(staging, Path(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_stage_output(out_dir: str | os.PathLike, ledger, stage: str, kept: pl.DataFrame, drops: pl.DataFrame,
                       file_name: str | None = None, extra: dict | None = None) -> dict:
    """A filtering stage's result: kept rows as Parquet (`<stage>.parquet` unless `file_name`), drops as one
    ledger run, and a manifest tying the two together (`n_seen` = kept + dropped; `extra` adds the settings a check
    needs, e.g. the size bound), all replaced atomically. Staged in `.<out>.staging-<run_id>`, this run's own."""

    out_dir = Path(out_dir)
    run_id = new_run_id()
    ledger.write_run(stage, run_id, drops)
    with staged_dir(out_dir, run_id) as staging:
        write_parquet_atomic(kept, staging / (file_name or f"{stage}.parquet"))
        manifest = {"stage": stage, "run_id": run_id, "n_seen": kept.height + drops.height, "n_kept": kept.height,
                    "n_dropped": drops.height,
                    "reasons": dict(drops.group_by("reason").len().iter_rows()) if drops.height else {},
                    **(extra or {})}
        write_json_atomic(manifest, staging / "_manifest.json")
    return manifest


# ------------------------------------------------------------------------------------------ one writer per output

LOCKS_DIR = "locks"
# a lock name is one file name: an asset, optionally `[partition]`; no path separator, no dot-file, no `..`
_LOCK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@\[\]-]{0,199}")
_held: dict[str, list] = {}  # lock file -> [holder, depth]: the locks this process holds, for re-entry
_held_guard = threading.Lock()


class OutputLockTimeout(TimeoutError):
    """An output stayed locked by another run longer than the caller would wait."""


def lock_path(home: str | os.PathLike, name: str) -> Path:
    """`TADS_HOME/locks/<name>.lock`, after checking `name` is a plain file name."""
    if not isinstance(name, str) or not _LOCK_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid output lock name {name!r}: letters, digits and _ . , = + @ [ ] - only, not "
                         "starting with a dot, no path separators")
    return Path(home) / LOCKS_DIR / f"{name}.lock"


def _read_holder(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):  # missing, or being written this instant
        return None
    return info if isinstance(info, dict) else None


def lock_holder(home: str | os.PathLike, name: str) -> dict | None:
    """Who holds output lock `name` now (run_id, pid, host, since), or None when it is free. A holder that was
    killed holds nothing: the kernel released its lock with its last file descriptor."""
    path = lock_path(home, name)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"run_id": "?", "pid": "?", "host": "?", "since": "?"}
    finally:
        os.close(fd)
    return None


def describe_holder(name: str, info: dict | None) -> str:
    if not info:
        return f"{name} is being written by another run"
    return (f"{name} is being written by run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on "
            f"{info.get('host', '?')}) since {info.get('since', '?')}")


@contextmanager
def output_lock(home: str | os.PathLike, name: str, holder: str, log: Callable[[str], None] = log.info,
                timeout_s: float | None = None, report_every_s: float = 30.0, poll_s: float = 0.1) -> Iterator[Path]:
    """Hold the exclusive lock of stage output `name` under `home` (`TADS_HOME/locks/<name>.lock`) while the block
    writes that output. One writer per output; the policy:

    - A second run that wants the output WAITS for the first to finish: it logs once at the start, then every
      `report_every_s` (30 s), "<name> is being written by run X (pid N on HOST) since T; waiting", and goes on
      when the first run ends, however it ends.
    - `timeout_s` (default None: wait as long as it takes) bounds the wait: past it, `OutputLockTimeout` names
      the holder.
    - The lock is `fcntl.flock` on the lock file, so the kernel releases it when the holder's process dies (a
      SIGKILL, an OOM kill): there are no stale locks to clear by hand. Child processes forked while the lock
      is held share it until they exit. The file holds the current holder's run id (`holder`), pid, host and
      start time, for the waiting message and `lock_holder`; it is emptied on release and never deleted (so
      no two runs can lock two different files of one name). flock is per host: a TADS_HOME on a network file
      system shared by several machines is protected only if that file system implements flock across them
      (NFSv4 on Linux does, as a byte-range lock).
    - Re-entrant for the same `holder` within one process (an asset that takes its lock around a function that
      takes it again); a different holder in the same process waits like any other run.
    """
    path = lock_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _held_guard:
        mine = _held.get(key)
        reenter = mine is not None and mine[0] == holder
        if reenter:
            mine[1] += 1
    if reenter:
        try:
            yield path
        finally:
            with _held_guard:
                mine[1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        t0 = time.monotonic()
        next_report, reported = t0, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            now = time.monotonic()
            info = _read_holder(path)
            # a holder that just took the lock may not have written its name yet: give it a moment
            if now >= next_report and (info or now - t0 > 2.0):
                waited = f" ({now - t0:.0f} s so far)" if reported else ""
                log(f"{describe_holder(name, info)}; waiting{waited}")
                next_report, reported = now + report_every_s, True
            if timeout_s is not None and now - t0 >= timeout_s:
                raise OutputLockTimeout(f"{describe_holder(name, info)}; gave up waiting after {timeout_s:g} s")
            time.sleep(poll_s)
        me = {"run_id": holder, "pid": os.getpid(), "host": socket.gethostname(),
              "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        if reported:
            log(f"{name}: lock acquired after waiting {time.monotonic() - t0:.1f} s")
        with _held_guard:
            _held[key] = [holder, 0]
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
