"""Binary convolution vs the numpy reference, torch, and itself across threads."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from packed_samples import random_bits, random_weights

from seg_service import kernels
from seg_service.format import conv_output_size
from seg_service.kernels import reference

# (H, W, in_channels, out_channels, kernel, stride, padding, dilation)
CASES = [
    (1, 1, 1, 1, 3, 1, 1, 1),
    (1, 1, 3, 5, 1, 1, 0, 1),
    (2, 3, 63, 7, 3, 1, 1, 1),
    (2, 3, 65, 33, 3, 2, 1, 1),
    (5, 4, 64, 31, 3, 1, 0, 1),
    (9, 7, 130, 40, 3, 1, 1, 1),
    (9, 7, 130, 40, 3, 2, 2, 2),
    (16, 13, 64, 70, 1, 2, 0, 1),
    (11, 12, 65, 64, 1, 1, 0, 1),
    (12, 12, 3, 9, 3, 1, 0, 2),
    (23, 21, 32, 16, 3, 1, 5, 5),
    (24, 25, 96, 24, 3, 1, 10, 10),
    (24, 25, 96, 24, 3, 2, 10, 10),
    (21, 21, 63, 17, 3, 1, 7, 7),
    (6, 6, 20, 12, 3, 1, 9, 9),  # dilation larger than the map: most taps are padding
    (64, 64, 64, 32, 3, 1, 1, 1),
    (64, 64, 130, 40, 3, 2, 2, 2),
    (64, 64, 65, 8, 1, 2, 0, 1),
    (13, 11, 70, 10, 5, 1, 2, 1),  # larger odd kernel
    (10, 9, 40, 6, 5, 2, 4, 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_bconv2d_int_matches_reference(isa: str, case: tuple[int, ...]) -> None:
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(sum(case))
    a = random_bits(rng, (h, w), c)
    wt = random_weights(rng, o, k, c)
    got = kernels.bconv2d_int(a, wt, c, stride, pad, dil)
    expected = reference.bconv2d_int(a, wt, c, stride, pad, dil)
    assert got.dtype == np.int32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("channels", "stride", "dilation", "pad_same"),
    list(itertools.product([1, 3, 63, 64, 65, 130], [1, 2], [1, 2, 3, 4, 6, 10], [False, True]))[::5],
)
def test_bconv2d_int_grid(isa: str, channels: int, stride: int, dilation: int, pad_same: bool) -> None:
    """A spread over channels x stride x dilation x padding on a mid-sized map."""
    rng = np.random.default_rng(channels * 100 + dilation)
    size = 2 * dilation + 6
    a = random_bits(rng, (size, size + 1), channels)
    wt = random_weights(rng, 37, 3, channels)
    pad = dilation if pad_same else 0
    got = kernels.bconv2d_int(a, wt, channels, stride, pad, dilation)
    np.testing.assert_array_equal(got, reference.bconv2d_int(a, wt, channels, stride, pad, dilation))


@pytest.mark.parametrize("c", [130, 512])  # 512: 72 steps, past the AVX2 byte-counter flush
def test_dot_range_extremes(isa: str, c: int) -> None:
    """All-equal bits give +n, all-opposite give -n (every tap counts, padding included)."""
    k = 3
    ones = kernels.pack_bits(np.ones((4, 5, c), np.float32))
    minus = kernels.pack_bits(-np.ones((4, 5, c), np.float32))
    w_plus = kernels.pack_bits(np.ones((3, k * k, c), np.float32)).reshape(3, k, k, -1)
    n = k * k * c
    assert np.all(kernels.bconv2d_int(ones, w_plus, c, 1, 1, 1) == n)
    # -1 input against +1 weights: interior pixels see only -1 taps, border taps see +1 padding
    out = kernels.bconv2d_int(minus, w_plus, c, 1, 1, 1)
    assert np.all(out[1:-1, 1:-1] == -n)
    assert out[0, 0, 0] == -n + 2 * 5 * c  # 5 of 9 taps are padding at a corner


@pytest.mark.slow
def test_matches_torch_conv_with_plus_one_padding(isa: str) -> None:
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(7)
    for c, o, k, stride, pad, dil in [(65, 20, 3, 1, 1, 1), (130, 9, 3, 2, 3, 3), (3, 4, 1, 2, 0, 1)]:
        x = np.where(rng.random((13, 11, c)) < 0.5, -1.0, 1.0).astype(np.float32)
        w = np.where(rng.random((o, k, k, c)) < 0.5, -1.0, 1.0).astype(np.float32)
        xt = torch.from_numpy(x).permute(2, 0, 1)[None].double()
        wt = torch.from_numpy(w).permute(0, 3, 1, 2).double()
        xt = functional.pad(xt, (pad, pad, pad, pad), value=1.0)
        expected = functional.conv2d(xt, wt, stride=stride, dilation=dil)[0].permute(1, 2, 0).numpy()
        packed_w = kernels.pack_bits(w.reshape(o, k * k, c)).reshape(o, k, k, -1)
        got = kernels.bconv2d_int(kernels.pack_bits(x), packed_w, c, stride, pad, dil)
        np.testing.assert_array_equal(got, expected.astype(np.int32))


@pytest.mark.parametrize(("relu_before", "relu_after"), list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("with_residual", [False, True])
def test_float_epilogue(isa: str, relu_before: bool, relu_after: bool, with_residual: bool) -> None:
    rng = np.random.default_rng(3)
    h, w, c, o = 9, 10, 100, 45
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    a = kernels.pack_bits(x)
    wt = random_weights(rng, o, 3, c)
    mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    ho, wo = (h + 2 * 2 - 2 * 2 - 1) // 1 + 1, (w + 2 * 2 - 2 * 2 - 1) // 1 + 1
    residual = rng.standard_normal((ho, wo, o)).astype(np.float32) if with_residual else None
    args = (c, 1, 2, 2, mul, bias, relu_before, relu_after, residual)
    expected = reference.bconv2d(a, wt, *args)
    got = kernels.bconv2d(a, wt, *args)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if relu_after:
        assert got.min() >= 0
    fused = kernels.bconv2d_float(x, wt, 1, 2, 2, mul, bias, relu_before, relu_after, residual)
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_packed_output_bits_equal_pack_bits(isa: str, case: tuple[int, ...], n_threads: int) -> None:
    """pack_output: the epilogue's sign bits equal pack_bits of the float output, on every channel count
    (partial channel blocks and words included) and with the ReLU variants."""
    kernels.set_num_threads(n_threads)
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    wt = kernels.prepare_weights(random_weights(rng, o, k, c), c)
    mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32) * 0.1
    for relu_before, relu_after in [(False, False), (True, False), (False, True)]:
        args = (stride, pad, dil, mul, bias, relu_before, relu_after)
        out, bits = kernels.bconv2d_float(x, wt, *args, pack_output=True)
        np.testing.assert_array_equal(out, kernels.bconv2d_float(x, wt, *args))
        assert bits.dtype == np.uint64 and bits.shape == (*out.shape[:2], -(-o // 64))
        np.testing.assert_array_equal(bits, reference.pack_bits(out))
        if relu_after:
            assert not bits.any()
        out2, bits2 = kernels.bconv2d(kernels.pack_bits(x), wt, c, *args, residual=out, pack_output=True)
        np.testing.assert_array_equal(bits2, reference.pack_bits(out2))


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize(
    "case", [c for c in CASES if c[4] > 1 or c[0] > 8], ids=lambda c: "x".join(map(str, c))
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_chain_equals_bases_one_by_one(isa: str, case: tuple[int, ...], n_threads: int) -> None:
    """bconv2d_chain (a layer-wise decomposition's bases adding up in cache) equals running the bases
    one after another with the previous output as residual, bit for bit, bits included."""
    kernels.set_num_threads(n_threads)
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(sum(case) + 1)
    a = kernels.pack_bits(rng.standard_normal((h, w, c)).astype(np.float32))
    bases = []
    for j in range(4):
        weights = kernels.prepare_weights(random_weights(rng, o, k, c), c)
        mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
        bias = rng.standard_normal(o).astype(np.float32) * 0.1
        bases.append((weights, mul, bias, j == 1, j == 3))  # some ReLUs before and after
    out_h = conv_output_size(h, k, stride, pad, dil)
    out_w = conv_output_size(w, k, stride, pad, dil)
    for residual in (None, rng.standard_normal((out_h, out_w, o)).astype(np.float32)):
        want = residual
        for weights, mul, bias, relu_before, relu_after in bases:
            want = kernels.bconv2d(a, weights, c, stride, pad, dil, mul, bias, relu_before, relu_after, want)
        got, bits = kernels.bconv2d_chain(a, bases, c, stride, pad, dil, residual=residual, pack_output=True)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(bits, reference.pack_bits(want))
    one = kernels.bconv2d_chain(a, bases[:1], c, stride, pad, dil)
    np.testing.assert_array_equal(one, kernels.bconv2d(a, bases[0][0], c, stride, pad, dil, *bases[0][1:]))


def test_chain_rejects_mismatched_bases() -> None:
    rng = np.random.default_rng(0)
    a = kernels.pack_bits(rng.standard_normal((5, 5, 64)).astype(np.float32))
    ones = np.ones(8, np.float32)
    base = (random_weights(rng, 8, 3, 64), ones, ones, False, False)
    other = (random_weights(rng, 4, 3, 64), ones[:4], ones[:4], False, False)
    with pytest.raises(ValueError, match="same output channels"):
        kernels.bconv2d_chain(a, [base, other], 64, 1, 1, 1)
    with pytest.raises(ValueError, match="at least one base"):
        kernels.bconv2d_chain(a, [], 64, 1, 1, 1)


def test_relu_before_clamps_negative_dots(isa: str) -> None:
    """relu_before zeroes negative dots, so those outputs are exactly the bias."""
    rng = np.random.default_rng(5)
    a = random_bits(rng, (6, 6), 64)
    wt = random_weights(rng, 8, 3, 64)
    mul = np.full(8, 2.0, np.float32)
    bias = np.arange(8, dtype=np.float32)
    dots = kernels.bconv2d_int(a, wt, 64, 1, 1, 1)
    out = kernels.bconv2d(a, wt, 64, 1, 1, 1, mul, bias, True, False)
    assert np.any(dots < 0)
    np.testing.assert_array_equal(out, np.where(dots < 0, 0, 2.0 * dots) + bias)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize(
    "case", [(64, 64, 96, 40, 3, 1, 2, 2), (7, 7, 512, 96, 3, 1, 1, 1), (5, 3, 65, 8, 1, 1, 0, 1)]
)
def test_thread_counts_agree(isa: str, case: tuple[int, ...]) -> None:
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(11)
    a = random_bits(rng, (h, w), c)
    wt = random_weights(rng, o, k, c)
    mul = rng.standard_normal(o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        kernels.set_num_threads(n)
        assert kernels.get_num_threads() == n
        results.append(
            (
                kernels.bconv2d_int(a, wt, c, stride, pad, dil),
                kernels.bconv2d(a, wt, c, stride, pad, dil, mul, bias, False, True),
            )
        )
    for ints, floats in results[1:]:
        np.testing.assert_array_equal(ints, results[0][0])
        np.testing.assert_array_equal(floats, results[0][1])


def test_concurrent_calls_from_python_threads() -> None:
    """The GIL is released during compute; concurrent calls must not interfere."""
    rng = np.random.default_rng(13)
    jobs = []
    for i in range(6):
        c = 64 + 17 * i
        jobs.append((random_bits(rng, (20, 18), c), random_weights(rng, 24 + i, 3, c), c))
    expected = [reference.bconv2d_int(a, w, c, 1, 1, 1) for a, w, c in jobs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda job: kernels.bconv2d_int(job[0], job[1], job[2], 1, 1, 1), jobs * 2))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, expected[i % len(jobs)])


def test_non_contiguous_inputs_are_accepted() -> None:
    rng = np.random.default_rng(17)
    a = random_bits(rng, (20, 20), 128)
    wt = random_weights(rng, 16, 3, 128)
    view = a[::2, ::2]
    np.testing.assert_array_equal(
        kernels.bconv2d_int(view, wt, 128, 1, 1, 1),
        reference.bconv2d_int(np.ascontiguousarray(view), wt, 128, 1, 1, 1),
    )


def _small_conv_in_child() -> bool:
    rng = np.random.default_rng(19)
    a = random_bits(rng, (30, 30), 70)
    wt = random_weights(rng, 40, 3, 70)
    got = kernels.bconv2d_int(a, wt, 70, 1, 1, 1)
    return bool(np.array_equal(got, reference.bconv2d_int(a, wt, 70, 1, 1, 1)))


@pytest.mark.usefixtures("threads")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_multithreaded_calls() -> None:
    """The thread pool's helpers do not exist in a forked child; calls there must still complete."""
    kernels.set_num_threads(2)
    assert _small_conv_in_child()  # starts the parent's helper threads
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_small_conv_in_child).get(timeout=60)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    channels=st.integers(1, 140),
    out_c=st.integers(1, 40),
    k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 4),
    pad=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_property(h, w, channels, out_c, k, stride, dilation, pad, seed) -> None:
    """Any valid shape gives the reference integers on every ISA path."""
    assume(conv_output_size(h, k, stride, pad, dilation) >= 1)
    assume(conv_output_size(w, k, stride, pad, dilation) >= 1)
    rng = np.random.default_rng(seed)
    a = random_bits(rng, (h, w), channels)
    wt = random_weights(rng, out_c, k, channels)
    expected = reference.bconv2d_int(a, wt, channels, stride, pad, dilation)
    previous = kernels.isa()
    try:
        for name in kernels.available_isas():
            kernels.set_isa(name)
            np.testing.assert_array_equal(
                kernels.bconv2d_int(a, wt, channels, stride, pad, dilation), expected
            )
    finally:
        kernels.set_isa(previous)
