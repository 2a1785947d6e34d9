"""kernels.cpu_round_trip_ns: the cache-line round trip between the caller's CPU and another one,
printed beside two-thread benchmark times (seg_service/kernels/cpu_probe.cpp)."""

from __future__ import annotations

import math
import os
import threading

import pytest

from seg_service import kernels

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="the round trip needs a second CPU this process may use (Linux affinity)",
)


@needs_two_cpus
def test_round_trip_is_a_positive_time_and_leaves_the_callers_cpus_as_they_were() -> None:
    before = os.sched_getaffinity(0)
    ns = kernels.cpu_round_trip_ns(2000, 3)
    assert math.isfinite(ns) and 1.0 < ns < 1e6, ns
    # the probe holds the caller to one CPU while it measures, then gives its mask back
    assert os.sched_getaffinity(0) == before


@needs_two_cpus
def test_round_trip_is_nan_for_a_thread_held_to_one_cpu() -> None:
    """A thread that may run on one CPU only has no second CPU to measure against (and must not be
    moved to one)."""
    result: list[float] = []
    mask: list[set[int]] = []

    def probe() -> None:
        # os.sched_setaffinity(0, ...) in a thread sets that thread's own mask (Linux)
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        result.append(kernels.cpu_round_trip_ns(100, 1))
        mask.append(os.sched_getaffinity(0))

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert math.isnan(result[0])
    assert len(mask[0]) == 1


def test_round_trip_refuses_bad_counts() -> None:
    with pytest.raises(ValueError, match="rounds"):
        kernels.cpu_round_trip_ns(0, 1)
    with pytest.raises(ValueError, match="batches"):
        kernels.cpu_round_trip_ns(10, 0)


def test_note_gives_both_figures_or_says_why_there_are_none() -> None:
    note = kernels.cpu_round_trip_note(141.6, 1520.2)
    assert note.startswith("CPU hand-off: 142 ns before the run, 1520 ns after")
    assert "not measured" in kernels.cpu_round_trip_note(float("nan"), 90.0)
