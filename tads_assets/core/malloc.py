"""Keep freed memory in the process instead of handing it back to the kernel after every tensor.

PyTorch on CPU allocates every tensor through the C library's malloc, with no cache of its own. glibc serves a
block of more than 128 KiB (raised adaptively, at most to 32 MiB) by a fresh `mmap` and returns it with `munmap`
when freed, and trims the top of its heap once more than twice that is free there. A loop that allocates the
same few-MiB tensors at every step — the head proxy's 22×256×256 logits, their softmaxes and gradients (5.8 MiB
each) — then pays a page fault on every 4 KiB page of every one of them, every step: measured on 2 cores,
`exp(L − lse)` over those logits took 5.7 ms instead of 1.1 ms, and one FDO meta-iteration's 22 adaptations
3.4 s instead of 2.4 s (`benchmarks/fdo_iteration.py`).

`keep_freed_memory` fixes both glibc thresholds (`mallopt`): blocks up to 32 MiB come from the heap, and the heap
is trimmed only when 1 GiB lies free at its top. The process then holds on to what it freed (its resident size
does not fall back between steps; its peak is unchanged). It runs once, when `tads_assets` is imported, on glibc
only; `TADS_MALLOC_TUNING=off` leaves the C library's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024
ENV = "TADS_MALLOC_TUNING"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process. Returns whether they
    are set: False with another C library, when `mallopt` refuses, or with TADS_MALLOC_TUNING=off."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "on").strip().lower() in ("0", "off", "false", "no"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc's own: musl and macOS lack it (and their malloc differs)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _applied:
        log.warning("mallopt refused TADS's malloc thresholds; tensors allocated every step will page-fault")
    return _applied
