"""core.memory.PeakRss: a work's own peak, not the process's earlier one.

The tests map anonymous memory directly (`mmap`): an allocation through malloc may be served from heap the process
already holds (`core/malloc.py` keeps freed heap), and then the resident size rightly does not move."""

import mmap
import sys
import threading
import time

import pytest

from tads_assets.core.memory import MIB, PeakRss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _mapped(mib: int) -> mmap.mmap:
    m = mmap.mmap(-1, mib * MIB)
    for off in range(0, mib * MIB, mmap.PAGESIZE):  # touch every page: resident
        m[off] = 1
    return m


def test_a_short_spike_is_measured_exactly_even_below_an_earlier_peak():
    _mapped(400).close()  # the process's lifetime peak is now at least 400 MiB above its base
    with PeakRss() as peak:
        _mapped(120).close()  # gone long before a 20 ms sample could see it
    r = peak.report
    assert r.how == "exact"
    assert 100 * MIB < r.peak_rss - r.rss_before < 300 * MIB  # this work's 120 MiB, not the earlier 400
    with PeakRss() as idle:
        pass
    assert idle.report.peak_rss - idle.report.rss_before < 20 * MIB


def test_an_overlapping_measurement_does_not_reset_the_first_ones_mark():
    with PeakRss() as outer:
        _mapped(200).close()
        with PeakRss() as inner:
            _mapped(50).close()
    assert outer.report.how == "exact" and outer.report.peak_rss - outer.report.rss_before > 180 * MIB
    assert inner.report.how in ("exact", "sampled")
    assert inner.report.peak_rss >= inner.report.rss_before


def test_a_measurement_beside_another_thread_samples_the_process():
    started, done = threading.Event(), threading.Event()

    def other():
        with PeakRss():
            started.set()
            done.wait(5)

    t = threading.Thread(target=other)
    t.start()
    started.wait(5)
    with PeakRss() as peak:
        m = _mapped(150)
        time.sleep(0.1)  # held long enough for the sampler
        m.close()
    done.set()
    t.join()
    assert peak.report.how in ("exact", "sampled")
    assert peak.report.peak_rss - peak.report.rss_before > 120 * MIB
    assert set(peak.report.metadata()) >= {"peak_rss_mib", "rss_before_mib", "peak_rss_measured"}
