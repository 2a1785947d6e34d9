"""Weights arranged once (prepare_weights) give exactly the results of plain weight arrays, on every
ISA path and thread count, including partial channel blocks and every epilogue variant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from packed_samples import random_weights

from seg_service import kernels
from seg_service.kernels import reference


# out_c values around every ISA's channel block (8, 16, 32) and the 16-lane epilogue groups.
@pytest.mark.parametrize(("out_c", "channels"), [(1, 3), (15, 64), (17, 100), (32, 64), (45, 130), (70, 512)])
@pytest.mark.parametrize(
    ("relu_before", "relu_after", "with_residual"),
    [(False, False, False), (True, False, True), (False, True, False), (True, True, True)],
)
def test_prepared_equals_plain(
    isa: str, out_c: int, channels: int, relu_before: bool, relu_after: bool, with_residual: bool
) -> None:
    rng = np.random.default_rng(out_c * 1000 + channels)
    h, w = 9, 8
    x = rng.standard_normal((h, w, channels)).astype(np.float32)
    a = kernels.pack_bits(x)
    wt = random_weights(rng, out_c, 3, channels)
    prepared = kernels.prepare_weights(wt, channels)
    mul = rng.uniform(-0.1, 0.1, out_c).astype(np.float32)
    bias = rng.standard_normal(out_c).astype(np.float32)
    residual = rng.standard_normal((h, w, out_c)).astype(np.float32) if with_residual else None
    np.testing.assert_array_equal(
        kernels.bconv2d_int(a, prepared, channels, 1, 2, 2), reference.bconv2d_int(a, wt, channels, 1, 2, 2)
    )
    args = (mul, bias, relu_before, relu_after, residual)
    plain = kernels.bconv2d(a, wt, channels, 1, 2, 2, *args)
    np.testing.assert_array_equal(kernels.bconv2d(a, prepared, channels, 1, 2, 2, *args), plain)
    np.testing.assert_array_equal(kernels.bconv2d_float(x, prepared, 1, 2, 2, *args), plain)
    np.testing.assert_allclose(
        plain, reference.bconv2d(a, wt, channels, 1, 2, 2, *args), rtol=1e-5, atol=1e-5
    )


@pytest.mark.usefixtures("threads")
def test_one_prepared_weights_serves_every_isa_and_thread_count() -> None:
    """The arrangement is cached per ISA path; switching paths and threads keeps results exact."""
    rng = np.random.default_rng(3)
    channels, out_c = 256, 96
    x = rng.standard_normal((40, 36, channels)).astype(np.float32)  # big enough for the helper threads
    wt = random_weights(rng, out_c, 3, channels)
    prepared = kernels.prepare_weights(wt, channels)
    mul = rng.standard_normal(out_c).astype(np.float32)
    bias = rng.standard_normal(out_c).astype(np.float32)
    expected = reference.bconv2d_int(kernels.pack_bits(x), wt, channels, 1, 1, 1)
    previous = kernels.isa()
    try:
        for name, n in itertools.product(kernels.available_isas() * 2, (1, 2, 3)):
            kernels.set_isa(name)
            kernels.set_num_threads(n)
            np.testing.assert_array_equal(
                kernels.bconv2d_int(kernels.pack_bits(x), prepared, channels, 1, 1, 1), expected
            )
            np.testing.assert_array_equal(
                kernels.bconv2d_float(x, prepared, 1, 1, 1, mul, bias, False, False),
                kernels.bconv2d_float(x, wt, 1, 1, 1, mul, bias, False, False),
            )
    finally:
        kernels.set_isa(previous)


def test_prepared_weights_are_a_read_only_copy() -> None:
    rng = np.random.default_rng(5)
    wt = random_weights(rng, 8, 3, 70)
    prepared = kernels.prepare_weights(wt, 70)
    assert isinstance(prepared, kernels.PreparedWeights)
    assert prepared.shape == wt.shape and prepared.in_channels == 70
    assert "in_channels=70" in repr(prepared)
    np.testing.assert_array_equal(prepared.array, wt)
    assert not prepared.array.flags.writeable
    a = kernels.pack_bits(rng.standard_normal((6, 6, 70)).astype(np.float32))
    before = kernels.bconv2d_int(a, prepared, 70, 1, 1, 1)
    wt[:] = 0  # the caller's array changing later does not affect the prepared copy
    np.testing.assert_array_equal(kernels.bconv2d_int(a, prepared, 70, 1, 1, 1), before)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda w: kernels.prepare_weights(w.astype(np.int64), 70), "w must have dtype uint64"),
        (lambda w: kernels.prepare_weights(w[0], 70), "w must have 4 dimensions"),
        (lambda w: kernels.prepare_weights(w, 64), "needs 1"),
        (lambda w: kernels.prepare_weights(w, 0), "in_channels must be >= 1"),
        (lambda w: kernels.prepare_weights(w[:, :, :1], 70), "square kernel"),
        (lambda w: kernels.prepare_weights(w | np.uint64(1 << 63), 70), "bits set past in_channels"),
    ],
)
def test_prepare_weights_validates(make, message: str) -> None:
    wt = random_weights(np.random.default_rng(7), 4, 3, 70)
    with pytest.raises(ValueError, match=message):
        make(wt)


def test_prepared_weights_must_match_the_call() -> None:
    rng = np.random.default_rng(9)
    prepared = kernels.prepare_weights(random_weights(rng, 4, 3, 100), 100)
    a = kernels.pack_bits(rng.standard_normal((5, 5, 90)).astype(np.float32))
    with pytest.raises(ValueError, match="prepared weights are for in_channels=100"):
        kernels.bconv2d_int(a, prepared, 90, 1, 1, 1)
    x = rng.standard_normal((5, 5, 90)).astype(np.float32)
    ones = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="prepared weights are for in_channels=100"):
        kernels.bconv2d_float(x, prepared, 1, 1, 1, ones, ones, False, False)
