"""The row-parallel float ops give the same results on any thread count.

The size thresholds are lowered so that even tiny inputs are split; odd shapes put rows not
divisible by the thread count, single-row outputs and more threads than rows through the split.
Element-wise ops must be bit-identical; conv2d goes through BLAS, whose summation order may depend
on the matrix's row count, so it is compared to float rounding.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from seg_service import kernels
from seg_service.kernels import reference
from seg_service.runtime import ops

RNG = np.random.default_rng(4321)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def split_everything(monkeypatch):
    """Split every op however small; yields a function running ``fn`` on ``n`` threads."""
    monkeypatch.setattr(ops, "_MIN_MACS_PER_THREAD", 1)
    monkeypatch.setattr(ops, "_IM2COL_CHUNK_ELEMS", 1)  # im2col units of one output row
    before = kernels.get_num_threads()

    def on_threads(n, fn, *args, **kwargs):
        kernels.set_num_threads(n)
        return fn(*args, **kwargs)

    yield on_threads
    kernels.set_num_threads(before)


THREADS = [2, 3]  # 3 > the 2 cores here: a split that is never even on these shapes


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(
    "h, w, cin, cout, k, stride, padding, dilation",
    [
        (13, 17, 3, 8, 7, 2, 3, 1),  # stem-like, channel-major columns, 7 output rows
        (1, 9, 3, 4, 1, 1, 0, 1),  # 1x1 conv on a single row
        (7, 5, 20, 6, 1, 1, 0, 1),  # 1x1 projection, 7 rows
        (9, 11, 20, 7, 3, 1, 2, 2),  # channel-last columns
        (3, 8, 5, 4, 3, 2, 1, 1),  # 2 output rows
        (1, 6, 17, 3, 1, 2, 0, 1),  # strided 1x1, 1 output row
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_threads_agree(split_everything, threads, h, w, cin, cout, k, stride, padding, dilation, relu):
    x, weight, bias = rand(h, w, cin), rand(cout, k, k, cin), rand(cout)
    one = split_everything(1, ops.conv2d, x, weight, bias, stride, padding, dilation, relu)
    many = split_everything(threads, ops.conv2d, x, weight, bias, stride, padding, dilation, relu)
    assert many.shape == one.shape and many.dtype == np.float32
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", THREADS)
def test_conv2d_small_im2col_chunks_with_threads(split_everything, monkeypatch, threads):
    x, weight = rand(23, 19, 8), rand(5, 3, 3, 8)
    one = split_everything(1, ops.conv2d, x, weight, None, 1, 1, 1)
    monkeypatch.setattr(ops, "_IM2COL_CHUNK_ELEMS", 19 * 9 * 8 * 2)  # two output rows per chunk
    np.testing.assert_allclose(
        split_everything(threads, ops.conv2d, x, weight, None, 1, 1, 1), one, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(
    "h, w, c, k, stride, padding",
    [(9, 11, 5, 3, 2, 1), (1, 7, 3, 1, 1, 0), (2, 5, 4, 2, 2, 1), (7, 7, 3, 3, 1, 1), (10, 6, 2, 3, 3, 0)],
)
def test_maxpool2d_threads_bit_identical(split_everything, threads, h, w, c, k, stride, padding):
    x = rand(h, w, c)
    one = split_everything(1, ops.maxpool2d, x, k, stride, padding)
    np.testing.assert_array_equal(split_everything(threads, ops.maxpool2d, x, k, stride, padding), one)
    np.testing.assert_array_equal(one, reference.maxpool2d(x, k, stride, padding))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(
    "h, w, c, oh, ow",
    [(4, 5, 3, 13, 17), (3, 3, 2, 1, 7), (5, 4, 21, 7, 9), (64, 64, 21, 512, 512), (37, 41, 5, 300, 11)],
)
def test_upsample_bilinear_threads_bit_identical(split_everything, threads, h, w, c, oh, ow):
    x = rand(h, w, c)
    one = split_everything(1, ops.upsample_bilinear, x, oh, ow)
    np.testing.assert_array_equal(split_everything(threads, ops.upsample_bilinear, x, oh, ow), one)
    np.testing.assert_array_equal(one, reference.upsample_bilinear(x, oh, ow))


def _lincomb_one_by_one(inputs, coeffs):
    """The sum the runtime computed before it was blocked and threaded."""
    out = inputs[0] * np.float32(coeffs[0])
    for x, c in zip(inputs[1:], coeffs[1:], strict=True):
        out += np.float32(c) * x
    return out


@pytest.mark.parametrize("threads", [1, *THREADS])
@pytest.mark.parametrize(
    "shape, count", [((7, 5, 3), 5), ((1, 1, 9), 2), ((1, 3, 1), 1), ((5, 1, 11), 3), ((65, 33, 497), 5)]
)
def test_lincomb_threads_bit_identical(split_everything, threads, shape, count):
    inputs, coeffs = [rand(*shape) for _ in range(count)], [float(c) for c in RNG.standard_normal(count)]
    got = split_everything(threads, ops.lincomb, inputs, coeffs)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _lincomb_one_by_one(inputs, coeffs))


def test_lincomb_non_contiguous_inputs(split_everything):
    inputs = [rand(6, 8, 4)[:, ::2], rand(6, 4, 4)]
    got = split_everything(2, ops.lincomb, inputs, [1.5, -0.5])
    np.testing.assert_array_equal(got, _lincomb_one_by_one(inputs, [1.5, -0.5]))


def test_lincomb_broadcast_map_goes_through_numpy():
    inputs = [rand(6, 4, 4), rand(1, 1, 4)]
    np.testing.assert_array_equal(ops.lincomb(inputs, [0.5, 2.0]), _lincomb_one_by_one(inputs, [0.5, 2.0]))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n_rows, unit_rows", [(1, 1), (7, 2), (7, 3), (64, 5), (5, 10), (6, 0)])
def test_row_units_cover_every_row_once(threads, n_rows, unit_rows):
    lock, seen = threading.Lock(), []

    def part(r0, r1):
        with lock:
            seen.append((r0, r1))

    ops._run_row_parts(part, n_rows, threads, unit_rows)
    covered = sorted(seen)
    assert covered[0][0] == 0 and covered[-1][1] == n_rows
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(covered, covered[1:]))


def test_thread_count_follows_the_setting_and_the_work():
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(2)
        assert ops._thread_count(100, 10**9, 1) == 2
        assert ops._thread_count(1, 10**9, 1) == 1  # one row: nothing to split
        assert ops._thread_count(100, 10, 1000) == 1  # small work stays on the caller
        kernels.set_num_threads(1)
        assert ops._thread_count(100, 10**9, 1) == 1
    finally:
        kernels.set_num_threads(before)


def test_pool_follows_thread_count_changes(split_everything):
    x, weight = rand(9, 4, 20), rand(3, 3, 3, 20)  # 9 output rows, units of one row
    split_everything(3, ops.conv2d, x, weight, None, 1, 1)
    assert ops._pool_workers == 2
    split_everything(2, ops.conv2d, x, weight, None, 1, 1)
    assert ops._pool_workers == 1


def test_helper_errors_reach_the_caller(split_everything):
    kernels.set_num_threads(2)
    ran = []

    def part(r0, r1):
        ran.append((r0, r1))
        if r0 > 0:
            raise RuntimeError("helper failed")

    with pytest.raises(RuntimeError, match="helper failed"):
        ops._run_row_parts(part, 4, 2, 1)
    assert (0, 1) in ran  # the first unit always runs; later ones stop once one has failed


def test_concurrent_callers_share_the_pool(split_everything):
    # Several application threads running ops at once (a server): each still gets its own result.
    from concurrent.futures import ThreadPoolExecutor

    kernels.set_num_threads(2)
    inputs, weight = [rand(9, 7, 20) for _ in range(6)], rand(4, 3, 3, 20)
    expected = [split_everything(2, ops.conv2d, x, weight, None, 2, 1) for x in inputs]
    kernels.set_num_threads(2)
    with ThreadPoolExecutor(max_workers=3) as callers:
        got = list(callers.map(lambda x: ops.conv2d(x, weight, None, 2, 1), inputs * 5))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, expected[i % len(inputs)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("with_constant", [False, True])
def test_conv1x1_of_concat_equals_conv_of_the_concat(threads, with_constant):
    """The projection of an ASPP head's parts equals the 1x1 conv of their concat (1x1 parts broadcast)."""
    rng = np.random.default_rng(11)
    h, w = 19, 23
    parts = [rng.standard_normal((h, w, c)).astype(np.float32) for c in (16, 7, 32)]
    if with_constant:
        parts.insert(1, rng.standard_normal((1, 1, 9)).astype(np.float32))
    c_in = sum(p.shape[2] for p in parts)
    weight = rng.standard_normal((12, 1, 1, c_in)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    full = np.concatenate([np.broadcast_to(p, (h, w, p.shape[2])) for p in parts], axis=2)
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(threads)
        for relu in (False, True):
            got = ops.conv1x1_of_concat(parts, weight, bias, relu)
            want = ops.conv2d(full, weight, bias, relu=relu)
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    finally:
        kernels.set_num_threads(before)


def test_conv1x1_of_concat_of_1x1_parts_is_a_1x1_map():
    """An input no larger than the network's stride leaves an ASPP head with 1x1 branches: the
    concat is a 1x1 map and its projection the conv of it (it used to raise, and predict failed on
    images of at most 32x32 pixels)."""
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((1, 1, c)).astype(np.float32) for c in (8, 3, 5)]
    weight = rng.standard_normal((6, 1, 1, 16)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    for relu in (False, True):
        got = ops.conv1x1_of_concat(parts, weight, bias, relu)
        want = ops.conv2d(np.concatenate(parts, axis=2), weight, bias, relu=relu)
        assert got.shape == (1, 1, 6) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv1x1_of_concat_rejects_bad_parts():
    x = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="channels"):
        ops.conv1x1_of_concat([x], np.zeros((2, 1, 1, 4), np.float32), None)
    with pytest.raises(ValueError, match="different sizes"):
        ops.conv1x1_of_concat([x, x[:2]], np.zeros((2, 1, 1, 6), np.float32), None)
