"""The kernels' thread pool hands each thread a contiguous share of a call's items and lets threads
that finish early take what is left of the others' (seg_service/kernels/threadpool.h): whatever the
thread count, every item runs once. Outputs must not depend on the count, including counts that
do not divide the items evenly and counts above the number of cores (helpers then start late and
their shares are taken over), nor on calls made from several Python threads at once."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seg_service import kernels

RNG = np.random.default_rng(11)
THREAD_COUNTS = [1, 2, 3, 5, 8]


def binary_conv(x: np.ndarray, w: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c_out = w.shape[0]
    mul = np.linspace(0.5, 1.5, c_out).astype(np.float32)
    bias = np.linspace(-1.0, 1.0, c_out).astype(np.float32)
    return kernels.bconv2d_float(x, w, 1, 1, 1, mul, bias, False, False, residual, pack_output=True)


def sample_calls() -> list:
    """Kernels that split their work over the pool: a binary conv with its packed output, the RGB
    stem's float conv, a lincomb group, an area resize and an upsampling (each large enough to run
    on several threads)."""
    x = RNG.standard_normal((61, 83, 32)).astype(np.float32)
    w = kernels.pack_bits(RNG.standard_normal((48, 9, 32)).astype(np.float32)).reshape(48, 3, 3, -1)
    residual = RNG.standard_normal((61, 83, 48)).astype(np.float32)
    image = RNG.standard_normal((131, 157, 3)).astype(np.float32)
    stem = RNG.standard_normal((32, 7, 7, 3)).astype(np.float32) * 0.1
    stem_bias = RNG.standard_normal(32).astype(np.float32)
    branches = [RNG.standard_normal((97, 101, 32)).astype(np.float32) for _ in range(2)]
    program = [[(0, 0.4), (1, 0.6)], [(0, 0.5), (2, 0.5)], [(1, 0.5), (2, 0.5)]]
    frame = RNG.integers(0, 256, (721, 1283, 3), dtype=np.uint8)
    logits = RNG.standard_normal((64, 80, 11)).astype(np.float32)
    return [
        lambda: binary_conv(x, w, residual),
        lambda: kernels.conv2d_direct(image, stem, stem_bias, 2, 3, 1, True),
        lambda: kernels.lincomb_group(branches, program, pack_outputs=[1, 2]),
        lambda: kernels.resize_area(frame, 240, 427),
        lambda: kernels.upsample_bilinear(logits, 256, 320),
    ]


def flatten(result) -> list[np.ndarray]:
    if isinstance(result, np.ndarray):
        return [result]
    return [part for item in result if item is not None for part in flatten(item)]


@pytest.mark.usefixtures("threads")
def test_outputs_do_not_depend_on_the_thread_count() -> None:
    calls = sample_calls()
    kernels.set_num_threads(1)
    expected = [flatten(call()) for call in calls]
    for count in THREAD_COUNTS[1:]:
        kernels.set_num_threads(count)
        for call, want in zip(calls, expected, strict=True):
            for got, ref in zip(flatten(call()), want, strict=True):
                np.testing.assert_array_equal(got, ref)


@pytest.mark.usefixtures("threads")
def test_calls_from_several_python_threads_at_once() -> None:
    """One call holds the pool while the others run on their own threads: all give the same outputs."""
    calls = sample_calls()
    kernels.set_num_threads(1)
    expected = [flatten(call()) for call in calls]
    kernels.set_num_threads(3)
    failures: list[str] = []

    def worker(index: int) -> None:
        for _ in range(3):
            for n, (call, want) in enumerate(zip(calls, expected, strict=True)):
                got = flatten(call())
                if not all(np.array_equal(g, r) for g, r in zip(got, want, strict=True)):
                    failures.append(f"python thread {index}, call {n}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not failures


def pool_helper_affinity(name: str) -> set[int] | None:
    """The CPUs the kernels' pool thread ``name`` (seg-pool-N) may run on, or None if there is none."""
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != name:
                continue
            status = (task / "status").read_text()
        except OSError:  # the thread ended while listing
            continue
        allowed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
        cpus: set[int] = set()
        for part in allowed.split(":", 1)[1].strip().split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
        return cpus
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread affinity from Linux /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="steering needs two CPUs to choose from")
@pytest.mark.usefixtures("threads")
def test_a_helper_woken_after_a_pause_is_kept_off_the_callers_cpu() -> None:
    """After a pause between frames the caller takes its current CPU out of the sleeping helper's
    affinity before waking it (a helper left to wait behind the caller there took part in half the
    calls of a paced frame). The rest of the caller's CPUs stay allowed: it is not pinning. And the
    outputs stay those of one thread."""
    call = sample_calls()[0]
    kernels.set_num_threads(1)
    expected = flatten(call())
    kernels.set_num_threads(2)
    caller_cpus = os.sched_getaffinity(0)
    allowed = None
    for _ in range(5):  # the helper sleeps once it has spun (well under a millisecond) with no call
        time.sleep(0.2)
        for got, ref in zip(flatten(call()), expected, strict=True):
            np.testing.assert_array_equal(got, ref)
        allowed = pool_helper_affinity("seg-pool-0")
        if allowed is not None and allowed != caller_cpus:
            break
    assert allowed is not None, "no kernel pool thread named seg-pool-0"
    assert allowed < caller_cpus and len(caller_cpus - allowed) == 1, (allowed, caller_cpus)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread affinity from Linux /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="steering needs two CPUs to choose from")
@pytest.mark.usefixtures("threads")
def test_a_caller_pinned_to_one_cpu_does_not_pin_its_helper_there() -> None:
    """A calling thread held to one CPU (os.sched_setaffinity in that thread only) leaves no CPU of
    its own mask to the helper: the helper then keeps the CPUs it was created with, less the
    caller's, instead of joining the caller on its one CPU (two threads would then run slower than
    one). The outputs stay those of one thread."""
    call = sample_calls()[0]
    kernels.set_num_threads(1)
    expected = flatten(call())
    kernels.set_num_threads(2)
    call()  # the helper exists, created with this (the main) thread's CPUs
    home = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def pinned_caller() -> None:
        cpu = min(home)
        os.sched_setaffinity(0, {cpu})  # this thread only
        for _ in range(5):
            time.sleep(0.2)
            seen["outputs_equal"] = all(
                np.array_equal(g, r) for g, r in zip(flatten(call()), expected, strict=True)
            )
            seen["allowed"] = pool_helper_affinity("seg-pool-0")
            if seen["allowed"] == home - {cpu}:
                break
        seen["cpu"] = cpu

    worker = threading.Thread(target=pinned_caller)
    worker.start()
    worker.join()
    assert seen["outputs_equal"] is True
    assert seen["allowed"] == home - {seen["cpu"]}, seen
