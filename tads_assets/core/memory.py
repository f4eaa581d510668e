"""Peak resident memory of a stretch of work in this process, for the metadata every asset records.

The kernel keeps one high-water mark of the resident size per process (VmHWM). With Dagster's in-process executor
several steps share a process, so the mark alone would report an earlier step's peak for a later, smaller one.
On Linux the mark can be reset to the current size (`/proc/self/clear_refs`, "5"), and `PeakRss` does that when
the work starts and reads it when it ends: the work's exact peak, however short the spike. Measurements that
overlap (partitions trained in threads beside each other) must not reset each other's mark, so only a measurement
that starts while no other runs resets it; one that starts beside another takes the maximum of the resident size
sampled every 20 ms in a thread ("sampled": a spike shorter than that can be missed), or the mark where the work
raised it. Without /proc (macOS) only the process's lifetime mark is there: reported as an upper bound.

Child processes (Tesseract) are not counted: the kernel's mark for them (`RUSAGE_CHILDREN`) is useless here, as a
child started by fork and exec keeps the resident size it inherited from this process as its peak.

`malloc.keep_freed_memory` keeps freed heap in the process, so the resident size at a step's start includes what
earlier steps of the same process freed; `rss_before_mib` is recorded beside the peak for that reason.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from dataclasses import dataclass

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_lock = threading.Lock()
_active = 0  # measurements running in this process


def _maxrss_bytes(who: int) -> int:
    """A kernel high-water mark from getrusage: kilobytes on Linux, bytes on macOS."""
    value = resource.getrusage(who).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def current_rss() -> int | None:
    """This process's resident size in bytes now, or None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def high_water_mark() -> int | None:
    """VmHWM in bytes (the peak resident size since the process started or the mark was last reset), or None."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_high_water_mark() -> bool:
    """Set VmHWM to the current resident size (Linux ≥ 4.0); whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReport:
    peak_rss: int  # bytes: the process's resident size at its highest while the work ran
    rss_before: int | None  # bytes, at the start (None without /proc)
    how: str  # "exact" (the reset high-water mark), "sampled", or "upper_bound" (the process's lifetime mark)

    def metadata(self) -> dict:
        """Plain values for an asset's metadata."""
        out: dict = {"peak_rss_mib": round(self.peak_rss / MIB, 1)}
        if self.rss_before is not None:
            out["rss_before_mib"] = round(self.rss_before / MIB, 1)
        out["peak_rss_measured"] = self.how
        return out

    def line(self) -> str:
        parts = [f"peak RSS {self.peak_rss / MIB:.0f} MiB ({self.how})"]
        if self.rss_before is not None:
            parts.append(f"{self.rss_before / MIB:.0f} MiB at the start")
        return ", ".join(parts)


class PeakRss:
    """Context manager: `with PeakRss() as peak: work()`, then `peak.report` (a MemoryReport). The figure is the
    whole process's, so work running in other threads at the same time is included."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self.report: MemoryReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max = 0
        self._reset = False

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss()
            if rss is not None and rss > self._max:
                self._max = rss

    def __enter__(self) -> PeakRss:
        global _active
        with _lock:
            self._reset = _active == 0 and reset_high_water_mark() and high_water_mark() is not None
            _active += 1
        self._self_mark = _maxrss_bytes(resource.RUSAGE_SELF)
        self._before = current_rss()
        self._max = self._before or 0
        if not self._reset and self._before is not None:
            self._thread = threading.Thread(target=self._sample, name="tads-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        mark = _maxrss_bytes(resource.RUSAGE_SELF)
        hwm = high_water_mark() if self._reset else None
        now = current_rss() or 0
        # the kernel updates its mark lazily (when pages are unmapped), and mapped file pages the kernel reclaims
        # leave the resident size without passing it: never report less than what was seen at the start or now
        if hwm is not None:
            peak, how = max(hwm, self._before or 0, now), "exact"
        elif mark > self._self_mark:  # the work raised the process's lifetime mark: that is its peak
            peak, how = max(mark, self._before or 0, now), "exact"
        elif self._before is not None:
            peak, how = max(self._max, now), "sampled"
        else:
            peak, how = mark, "upper_bound"
        self.report = MemoryReport(peak, self._before, how)
        with _lock:
            _active -= 1
