"""The avx2 path's "lut" microkernel (tiles of 4 pixels x 8 channels, bconv_avx2.cpp) and its
row-packed tails (3x3 convs whose input's last word holds at most 21 channels, e.g. 80 = one full
word + 16: the last words of a kernel row's three taps share one word, dispatch.cpp step 0), on the
shapes of the shipped person model and around them: every avx2 popcount method, 1 and 2 threads,
against the numpy reference bit for bit (raw dots; float outputs with the fused multiply-add of the
epilogue emulated exactly), and against the avx512 path where this CPU has it."""

from __future__ import annotations

import numpy as np
import pytest
from packed_samples import random_bits, random_weights

from seg_service import kernels
from seg_service.format import conv_output_size
from seg_service.kernels import reference

HAS_AVX2 = "avx2" in kernels.available_isas()
HAS_AVX512 = "avx512" in kernels.available_isas()
pytestmark = pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 (+FMA, POPCNT)")
METHODS = ["lut", "mix1", "mix2"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest):
    """The avx2 path with one popcount method forced; ISA, method and threads restored after."""
    previous_isa, previous_threads = kernels.isa(), kernels.get_num_threads()
    kernels.set_isa("avx2")
    kernels.set_popcount(request.param)
    yield request.param
    kernels.set_popcount("auto")
    kernels.set_isa(previous_isa)
    kernels.set_num_threads(previous_threads)


def fma_epilogue(
    dots: np.ndarray,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool,
    relu_after: bool,
    residual: np.ndarray | None,
) -> np.ndarray:
    """reference.epilogue with mul * pre + bias rounded once (the kernels' fused multiply-add): the
    product of two floats is exact in long double and the sum's one rounding to float32 is the
    FMA's (double rounding through the 64-bit mantissa could only differ on an exact float32
    midpoint, which these random values do not hit)."""
    pre = dots.astype(np.float32)
    if relu_before:
        pre = np.maximum(pre, np.float32(0))
    ld = np.longdouble
    y = (mul.astype(ld) * pre.astype(ld) + bias.astype(ld)).astype(np.float32)
    if residual is not None:
        y = y + residual
    if relu_after:
        y = np.maximum(y, np.float32(0))
    return y.astype(np.float32)


# (H, W, in_channels, out_channels, stride, padding, dilation). Person's shapes (256x320 input):
# layer1 64x80x32 -> 32 (paired taps) and its stride-2 successor, layer2-4, the decoder's 80-channel
# conv (row-packed tails: 12 steps instead of 18); around them: 65-85 and 129-149 channels (row-packed
# tails of 1-21 bits behind 1-2 full words), 86 and 150 (22 bits: not packed), 1-21 channels (one
# word: row-packed instead of paired), dilations 1-4 (packed) and 5 (per-region taps), padding 0,
# same and wider, strides 1 and 2, out_channels with a last block of 1-8 and 9-15 channels, pixel
# counts that leave 1-3 pixels after the last 4-pixel tile, and over 31 steps (270 channels: 4 full
# words + 14 bits = 39 steps, the byte counters flushed).
CASES = [
    (64, 80, 32, 32, 1, 1, 1),
    (64, 80, 32, 64, 2, 1, 1),
    (32, 40, 64, 64, 1, 1, 1),
    (16, 20, 128, 128, 1, 1, 1),
    (8, 10, 256, 256, 1, 2, 2),
    (64, 80, 80, 32, 1, 1, 1),
    (9, 11, 80, 32, 1, 1, 1),
    (7, 9, 65, 17, 1, 1, 1),
    (7, 9, 70, 9, 2, 1, 1),
    (10, 7, 85, 24, 1, 2, 2),
    (11, 12, 86, 16, 1, 1, 1),
    (12, 13, 80, 40, 1, 3, 3),
    (13, 15, 80, 8, 1, 4, 4),
    (13, 15, 80, 31, 1, 5, 5),
    (6, 5, 80, 33, 1, 0, 1),
    (9, 6, 80, 15, 2, 0, 2),
    (5, 7, 129, 21, 1, 1, 1),
    (6, 5, 149, 16, 2, 1, 1),
    (5, 6, 150, 16, 1, 1, 1),
    (3, 3, 270, 19, 1, 1, 1),
    (1, 1, 80, 16, 1, 1, 1),
    (2, 3, 80, 1, 1, 1, 1),
    (9, 9, 21, 16, 1, 1, 1),
    (9, 9, 16, 24, 2, 1, 1),
    (11, 8, 1, 7, 1, 2, 2),
    (10, 10, 5, 48, 1, 0, 3),
    (9, 9, 22, 16, 1, 1, 1),
    (3, 1, 64, 12, 1, 1, 1),
    (1, 7, 64, 3, 1, 1, 1),
]


def _ids(case: tuple[int, ...]) -> str:
    return "x".join(map(str, case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_int_matches_reference(method: str, case: tuple[int, ...], n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    h, w, c, o, stride, pad, dil = case
    rng = np.random.default_rng(sum(case) * 7 + 1)
    a = random_bits(rng, (h, w), c)
    wt = random_weights(rng, o, 3, c)
    expected = reference.bconv2d_int(a, wt, c, stride, pad, dil)
    np.testing.assert_array_equal(kernels.bconv2d_int(a, wt, c, stride, pad, dil), expected)
    prepared = kernels.prepare_weights(wt, c)  # the row-packed arrangement is cached: twice
    for _ in range(2):
        np.testing.assert_array_equal(kernels.bconv2d_int(a, prepared, c, stride, pad, dil), expected)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_float_epilogue_chain_and_bits(method: str, case: tuple[int, ...], n_threads: int) -> None:
    """Float input packed inside the call; every combination of ReLU before / after, with and without
    a residual; packed output bits; a 2-base chain equal to its bases one by one: all bit for bit."""
    kernels.set_num_threads(n_threads)
    h, w, c, o, stride, pad, dil = case
    rng = np.random.default_rng(sum(case) * 7 + 2)
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    a = kernels.pack_bits(x)
    out_shape = (conv_output_size(h, 3, stride, pad, dil), conv_output_size(w, 3, stride, pad, dil), o)
    residual = rng.standard_normal(out_shape).astype(np.float32)
    raw = [random_weights(rng, o, 3, c) for _ in range(2)]
    prepared = [kernels.prepare_weights(wt, c) for wt in raw]
    mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
    bias = (rng.standard_normal(o) * 0.1).astype(np.float32)
    dots = reference.bconv2d_int(a, raw[0], c, stride, pad, dil)
    for relu_before in (False, True):
        for relu_after in (False, True):
            for res in (None, residual):
                expected = fma_epilogue(dots, mul, bias, relu_before, relu_after, res)
                epilogue = (mul, bias, relu_before, relu_after, res)
                out, bits = kernels.bconv2d_float(
                    x, prepared[0], stride, pad, dil, *epilogue, pack_output=True
                )
                np.testing.assert_array_equal(out, expected)
                np.testing.assert_array_equal(bits, reference.pack_bits(expected))
                got = kernels.bconv2d(a, raw[0], c, stride, pad, dil, *epilogue)
                np.testing.assert_array_equal(got, expected)
    bases = [(prepared[j], mul * (j + 1), bias - j, j == 1, j == 0) for j in range(2)]
    one_by_one = kernels.bconv2d(a, prepared[0], c, stride, pad, dil, *bases[0][1:], residual)
    one_by_one = kernels.bconv2d(a, prepared[1], c, stride, pad, dil, *bases[1][1:], one_by_one)
    got, got_bits = kernels.bconv2d_chain(a, bases, c, stride, pad, dil, residual=residual, pack_output=True)
    np.testing.assert_array_equal(got, one_by_one)
    np.testing.assert_array_equal(got_bits, reference.pack_bits(one_by_one))


@pytest.mark.skipif(not HAS_AVX512, reason="this CPU has no AVX-512 path to compare with")
@pytest.mark.parametrize("case", CASES[:6], ids=_ids)
def test_avx2_equals_avx512(case: tuple[int, ...], threads: None) -> None:
    """The two vector paths give the same floats and bits on person's shapes (both fuse mul and bias)."""
    h, w, c, o, stride, pad, dil = case
    rng = np.random.default_rng(sum(case))
    a = random_bits(rng, (h, w), c)
    out_shape = (conv_output_size(h, 3, stride, pad, dil), conv_output_size(w, 3, stride, pad, dil), o)
    residual = rng.standard_normal(out_shape).astype(np.float32)
    wt = random_weights(rng, o, 3, c)
    mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    previous = kernels.isa()
    results = {}
    try:
        for isa in ("avx2", "avx512"):
            kernels.set_isa(isa)
            kernels.set_num_threads(2)
            results[isa] = kernels.bconv2d(a, wt, c, stride, pad, dil, mul, bias, True, False, residual, True)
    finally:
        kernels.set_isa(previous)
    np.testing.assert_array_equal(results["avx2"][0], results["avx512"][0])
    np.testing.assert_array_equal(results["avx2"][1], results["avx512"][1])


@pytest.mark.parametrize("channels", [16, 21, 80, 85])
def test_row_packed_tails_extremes(method: str, channels: int) -> None:
    """All-equal bits give +n everywhere with padding 0; all-opposite give -n inside and the +1
    padding's share of the border taps at the corner (a packed row word mixes padded and real taps)."""
    n = 9 * channels
    ones = kernels.pack_bits(np.ones((5, 6, channels), np.float32))
    minus = kernels.pack_bits(-np.ones((5, 6, channels), np.float32))
    w_plus = kernels.pack_bits(np.ones((16, 9, channels), np.float32)).reshape(16, 3, 3, -1)
    assert np.all(kernels.bconv2d_int(ones, w_plus, channels, 1, 0, 1) == n)
    out = kernels.bconv2d_int(minus, w_plus, channels, 1, 1, 1)
    assert np.all(out[1:-1, 1:-1] == -n)
    assert np.all(out[0, 0] == -n + 2 * 5 * channels)
    assert np.all(out[0, 1] == -n + 2 * 3 * channels)
