"""Narrow binary convs (<= 32 input channels, 3x3): the avx2 and avx512 paths run them over paired
taps (two 32-channel taps per 64-bit word, 5 steps per pixel instead of 9, dispatch.cpp "1a"); every
ISA path, every avx2 popcount method, 1 and 2 threads, against the numpy reference, bit for bit. Also
the packing of narrow float maps (the avx2 packer's whole 8-channel groups of a partial word)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from packed_samples import random_bits, random_weights

from seg_service import kernels
from seg_service.format import conv_output_size
from seg_service.kernels import reference

METHODS = ["lut", "mix1", "mix2"]


def _variants() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for isa in kernels.available_isas():
        if isa == "avx2":
            out += [("avx2", m) for m in METHODS]
        else:
            out.append((isa, None))
    return out


@pytest.fixture(params=_variants(), ids=lambda v: v[0] if v[1] is None else f"{v[0]}-{v[1]}")
def variant(request: pytest.FixtureRequest):
    """One ISA path (and on avx2 one popcount method) forced; ISA, method and threads restored after."""
    isa, method = request.param
    previous_isa, previous_threads = kernels.isa(), kernels.get_num_threads()
    kernels.set_isa(isa)
    if method is not None:
        kernels.set_popcount(method)
    yield request.param
    if method is not None:
        kernels.set_popcount("auto")
    kernels.set_isa(previous_isa)
    kernels.set_num_threads(previous_threads)


# (H, W, in_channels, out_channels, stride, padding, dilation): 32 and fewer channels (paired taps),
# 33 and 64 (not), odd sizes, partial channel blocks, padding 0 / same / wider, dilation up to past
# the paired path's limit (4), 1x1 maps, and maps large enough to run on two threads.
CASES = [
    (1, 1, 32, 16, 1, 1, 1),
    (1, 1, 1, 1, 1, 1, 1),
    (2, 3, 32, 17, 1, 1, 1),
    (3, 3, 32, 32, 1, 0, 1),
    (7, 5, 31, 40, 2, 1, 1),
    (9, 11, 17, 8, 1, 2, 2),
    (13, 10, 32, 24, 2, 2, 2),
    (12, 15, 8, 33, 1, 3, 3),
    (16, 17, 32, 32, 1, 4, 4),
    (16, 17, 32, 16, 1, 5, 5),
    (11, 13, 3, 9, 2, 0, 1),
    (10, 9, 32, 16, 1, 3, 1),
    (9, 9, 33, 16, 1, 1, 1),
    (9, 9, 64, 16, 2, 1, 1),
    (64, 80, 32, 32, 1, 1, 1),  # the webcam model's layer1
    (64, 80, 32, 64, 2, 1, 1),  # layer2's first stride-2 conv
    (63, 79, 20, 17, 2, 1, 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_narrow_int_matches_reference(
    variant: tuple[str, str | None], case: tuple[int, ...], n_threads: int
) -> None:
    kernels.set_num_threads(n_threads)
    h, w, c, o, stride, pad, dil = case
    rng = np.random.default_rng(sum(case))
    a = random_bits(rng, (h, w), c)
    wt = random_weights(rng, o, 3, c)
    expected = reference.bconv2d_int(a, wt, c, stride, pad, dil)
    np.testing.assert_array_equal(kernels.bconv2d_int(a, wt, c, stride, pad, dil), expected)
    # prepared weights (the paired arrangement is cached next to the plain one): twice, same answer
    prepared = kernels.prepare_weights(wt, c)
    for _ in range(2):
        np.testing.assert_array_equal(kernels.bconv2d_int(a, prepared, c, stride, pad, dil), expected)


@pytest.mark.parametrize(
    ("channels", "stride", "dilation", "pad_same"),
    list(itertools.product([1, 7, 8, 16, 24, 31, 32], [1, 2], [1, 2, 3, 4], [False, True])),
)
def test_narrow_int_grid(
    variant: tuple[str, str | None], channels: int, stride: int, dilation: int, pad_same: bool
) -> None:
    rng = np.random.default_rng(channels * 100 + dilation * 10 + stride)
    size = 2 * dilation + 5
    a = random_bits(rng, (size, size + 2), channels)
    wt = random_weights(rng, 19, 3, channels)
    pad = dilation if pad_same else 0
    got = kernels.bconv2d_int(a, wt, channels, stride, pad, dilation)
    np.testing.assert_array_equal(got, reference.bconv2d_int(a, wt, channels, stride, pad, dilation))


def test_narrow_extremes(variant: tuple[str, str | None]) -> None:
    """All-equal bits give +n, all-opposite -n inside and the +1 padding's share at the border."""
    c, n = 32, 9 * 32
    ones = kernels.pack_bits(np.ones((5, 6, c), np.float32))
    minus = kernels.pack_bits(-np.ones((5, 6, c), np.float32))
    w_plus = kernels.pack_bits(np.ones((16, 9, c), np.float32)).reshape(16, 3, 3, -1)
    assert np.all(kernels.bconv2d_int(ones, w_plus, c, 1, 1, 1) == n)
    out = kernels.bconv2d_int(minus, w_plus, c, 1, 1, 1)
    assert np.all(out[1:-1, 1:-1] == -n)
    assert np.all(out[0, 0] == -n + 2 * 5 * c)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] > 1], ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_narrow_float_epilogue_and_chain(
    variant: tuple[str, str | None], case: tuple[int, ...], n_threads: int
) -> None:
    """Float input packed inside the call, the float epilogue with a residual and packed output bits,
    and a 2-base chain: equal to the reference / to the bases one by one, bit for bit."""
    kernels.set_num_threads(n_threads)
    h, w, c, o, stride, pad, dil = case
    rng = np.random.default_rng(sum(case) + 7)
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    a = kernels.pack_bits(x)
    out_shape = (conv_output_size(h, 3, stride, pad, dil), conv_output_size(w, 3, stride, pad, dil), o)
    residual = rng.standard_normal(out_shape).astype(np.float32)
    bases = []
    raw = []
    for j in range(2):
        wt = random_weights(rng, o, 3, c)
        mul = rng.uniform(-0.05, 0.05, o).astype(np.float32)
        bias = rng.standard_normal(o).astype(np.float32) * 0.1
        raw.append(wt)
        bases.append((kernels.prepare_weights(wt, c), mul, bias, j == 1, False))
    prepared, mul, bias = bases[0][:3]
    out, bits = kernels.bconv2d_float(
        x, prepared, stride, pad, dil, mul, bias, False, True, residual, pack_output=True
    )
    expected = reference.bconv2d(a, raw[0], c, stride, pad, dil, mul, bias, False, True, residual)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bits, reference.pack_bits(out))
    chained = kernels.bconv2d(a, prepared, c, stride, pad, dil, mul, bias, False, False, residual)
    chained = kernels.bconv2d(a, bases[1][0], c, stride, pad, dil, *bases[1][1:], chained)
    got, got_bits = kernels.bconv2d_chain(a, bases, c, stride, pad, dil, residual=residual, pack_output=True)
    np.testing.assert_array_equal(got, chained)
    np.testing.assert_array_equal(got_bits, reference.pack_bits(chained))


@pytest.mark.parametrize("isa", kernels.available_isas())
def test_pack_bits_narrow_channel_counts(isa: str) -> None:
    """Every channel count 1 .. 136 (whole and partial 8-channel groups of a partial word), with -0.0
    and NaN (both pack as +1), equals the reference packer."""
    previous = kernels.isa()
    kernels.set_isa(isa)
    try:
        rng = np.random.default_rng(5)
        for c in range(1, 137):
            x = rng.standard_normal((3, 5, c)).astype(np.float32)
            x[x > 1.5] = np.nan
            x[np.abs(x) < 0.1] = -0.0
            np.testing.assert_array_equal(kernels.pack_bits(x), reference.pack_bits(x))
    finally:
        kernels.set_isa(previous)
