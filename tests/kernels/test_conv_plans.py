"""The conv driver keeps each call geometry's plan (regions, per-channel constants, work items) with the
first base's prepared weights and reuses it on later calls: one PreparedWeights called with many
geometries, thread counts, ISA paths and popcount methods, in turns and more of them than it keeps,
gives exactly what fresh weights (a plan built for that call alone) give, and a chain's plan
follows the other bases it was built with."""

from __future__ import annotations

import gc
import itertools
import threading

import numpy as np
import pytest
from packed_samples import random_weights

from seg_service import kernels

# (in_h, in_w, stride, padding, dilation): more geometries than a PreparedWeights keeps plans for (4),
# with paddings whose taps fall on the border differently (the per-region constants change with it)
GEOMETRIES = [
    (9, 8, 1, 1, 1),
    (9, 8, 1, 0, 1),
    (12, 10, 2, 1, 1),
    (9, 8, 1, 2, 2),
    (7, 13, 1, 3, 3),
    (9, 8, 1, 1, 1),
]


def _epilogue(rng: np.random.Generator, out_c: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(-0.1, 0.1, out_c).astype(np.float32), rng.standard_normal(out_c).astype(np.float32)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("channels", [32, 80, 130])  # paired taps, row-packed tails, plain words
def test_kept_plans_equal_fresh_ones(channels: int) -> None:
    rng = np.random.default_rng(channels)
    out_c = 24
    wt = random_weights(rng, out_c, 3, channels)
    prepared = kernels.prepare_weights(wt, channels)
    mul, bias = _epilogue(rng, out_c)
    previous_isa = kernels.isa()
    try:
        for rounds, isa in itertools.product(range(2), kernels.available_isas()):
            kernels.set_isa(isa)
            for popcount in kernels.available_popcounts() if isa == "avx2" else [None]:
                if popcount is not None:
                    kernels.set_popcount(popcount)
                for threads, (h, w, stride, padding, dilation) in itertools.product((1, 2), GEOMETRIES):
                    kernels.set_num_threads(threads)
                    x = rng.standard_normal((h, w, channels)).astype(np.float32)
                    a = kernels.pack_bits(x)
                    geometry = (stride, padding, dilation)
                    where = f"{isa} {popcount} threads={threads} {h}x{w} {geometry} round {rounds}"
                    np.testing.assert_array_equal(
                        kernels.bconv2d_int(a, prepared, channels, *geometry),
                        kernels.bconv2d_int(a, wt, channels, *geometry),
                        err_msg=where,
                    )
                    residual_shape = kernels.bconv2d_int(a, wt, channels, *geometry).shape
                    residual = rng.standard_normal(residual_shape).astype(np.float32)
                    args = (mul, bias, True, False, residual, True)
                    got, got_bits = kernels.bconv2d(a, prepared, channels, *geometry, *args)
                    want, want_bits = kernels.bconv2d(a, wt, channels, *geometry, *args)
                    np.testing.assert_array_equal(got, want, err_msg=where)
                    np.testing.assert_array_equal(got_bits, want_bits, err_msg=where)
                    np.testing.assert_array_equal(
                        kernels.bconv2d_float(x, prepared, *geometry, *args[:4]),
                        kernels.bconv2d_float(x, wt, *geometry, *args[:4]),
                        err_msg=where,
                    )
    finally:
        kernels.set_isa(previous_isa)
        kernels.set_popcount("auto")


@pytest.mark.usefixtures("threads")
def test_a_chain_plan_follows_its_other_bases() -> None:
    """A chain's plan is kept with its first base; the same first base chained with other weights
    (also weights made after the earlier ones were freed, which may take their address) gets a plan
    of its own: the results equal the bases run one by one."""
    rng = np.random.default_rng(11)
    channels, out_c, h, w = 96, 40, 10, 9
    first_wt = random_weights(rng, out_c, 3, channels)
    first = kernels.prepare_weights(first_wt, channels)
    a = kernels.pack_bits(rng.standard_normal((h, w, channels)).astype(np.float32))
    residual = rng.standard_normal((h, w, out_c)).astype(np.float32)
    for threads, turn in itertools.product((1, 2), range(4)):
        kernels.set_num_threads(threads)
        second_wt = random_weights(rng, out_c, 3, channels)
        # a fresh object each turn; the one of the previous turn is gone
        second = kernels.prepare_weights(second_wt, channels)
        gc.collect()
        (m0, b0), (m1, b1) = _epilogue(rng, out_c), _epilogue(rng, out_c)
        bases = [(first, m0, b0, False, False), (second, m1, b1, True, False)]
        got = kernels.bconv2d_chain(a, bases, channels, 1, 1, 1, residual)
        step = kernels.bconv2d(a, first_wt, channels, 1, 1, 1, m0, b0, False, False, residual)
        want = kernels.bconv2d(a, second_wt, channels, 1, 1, 1, m1, b1, True, False, step)
        np.testing.assert_array_equal(got, want, err_msg=f"threads={threads} turn {turn}")
        del second


@pytest.mark.usefixtures("threads")
def test_plans_shared_by_concurrent_callers() -> None:
    """Python threads calling one PreparedWeights at once (the kernels release the GIL), each with
    its own geometry, more geometries than are kept: plans are looked up, built and evicted
    concurrently, and every result is still the one fresh weights give."""
    rng = np.random.default_rng(13)
    channels, out_c = 96, 24
    wt = random_weights(rng, out_c, 3, channels)
    prepared = kernels.prepare_weights(wt, channels)
    kernels.set_num_threads(2)
    cases = []
    for h, w, stride, padding, dilation in GEOMETRIES[:5]:
        a = kernels.pack_bits(rng.standard_normal((h, w, channels)).astype(np.float32))
        geometry = (stride, padding, dilation)
        cases.append((a, geometry, kernels.bconv2d_int(a, wt, channels, *geometry)))
    failures: list[str] = []

    def call(case: int) -> None:
        a, geometry, want = cases[case]
        for _ in range(60):
            got = kernels.bconv2d_int(a, prepared, channels, *geometry)
            if not np.array_equal(got, want):
                failures.append(f"case {case} {geometry}")
                return

    workers = [threading.Thread(target=call, args=(i % len(cases),)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures
