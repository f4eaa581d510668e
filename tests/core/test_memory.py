"""core.memory.PeakRss: a work's own peak, not the process's earlier one."""

import sys
import threading
import time

import numpy as np
import pytest

from tads_assets.core.memory import MIB, PeakRss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _allocate(mib: int) -> None:
    a = np.ones(mib * MIB // 8)
    a[::512] += 1  # touch it
    del a


def test_a_short_spike_is_measured_exactly_even_below_an_earlier_peak():
    _allocate(400)  # the process's lifetime peak is now at least 400 MiB above its base
    with PeakRss() as peak:
        _allocate(120)  # shorter than the 20 ms sampling interval
    r = peak.report
    assert r.how == "exact"
    assert 100 * MIB < r.peak_rss - r.rss_before < 300 * MIB  # this work's 120 MiB, not the earlier 400
    with PeakRss() as idle:
        pass
    assert idle.report.peak_rss - idle.report.rss_before < 20 * MIB


def test_an_overlapping_measurement_does_not_reset_the_first_ones_mark():
    with PeakRss() as outer:
        _allocate(200)
        with PeakRss() as inner:
            _allocate(50)
    assert outer.report.how == "exact" and outer.report.peak_rss - outer.report.rss_before > 180 * MIB
    assert inner.report.how in ("exact", "sampled")


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
        a = np.ones(150 * MIB // 8)
        time.sleep(0.1)  # held long enough for the sampler
        del a
    done.set()
    t.join()
    assert peak.report.how in ("exact", "sampled")
    assert peak.report.peak_rss - peak.report.rss_before > 120 * MIB
    assert set(peak.report.metadata()) >= {"peak_rss_mib", "rss_before_mib", "peak_rss_measured"}
