"""ISA/thread controls, environment variables, and argument validation (ValueError, never a crash)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from seg_service import kernels


def test_isa_controls() -> None:
    available = kernels.available_isas()
    assert available[-1] == "scalar"
    assert set(available) <= {"avx512", "avx2", "scalar"}
    assert kernels.isa() in available
    previous = kernels.isa()
    try:
        for name in available:
            kernels.set_isa(name)
            assert kernels.isa() == name
    finally:
        kernels.set_isa(previous)
    with pytest.raises(ValueError, match="not supported"):
        kernels.set_isa("neon")


@pytest.mark.usefixtures("threads")
def test_thread_controls() -> None:
    kernels.set_num_threads(3)
    assert kernels.get_num_threads() == 3
    with pytest.raises(ValueError, match=">= 1"):
        kernels.set_num_threads(0)


def _import_with_env(**env: str) -> subprocess.CompletedProcess:
    code = "from seg_service import kernels; print(kernels.isa(), kernels.get_num_threads())"
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("isa", kernels.available_isas())  # this CPU's best path and every lower one
def test_environment_sets_isa_and_threads(isa: str) -> None:
    done = _import_with_env(SEG_ISA=isa, SEG_THREADS="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [isa, "1"]


def test_environment_rejects_bad_values() -> None:
    bad_isa = _import_with_env(SEG_ISA="sse9")
    assert bad_isa.returncode != 0 and "ValueError" in bad_isa.stderr
    bad_threads = _import_with_env(SEG_THREADS="many")
    assert bad_threads.returncode != 0 and "SEG_THREADS" in bad_threads.stderr


A = np.zeros((6, 6, 2), np.uint64)
W = np.zeros((4, 3, 3, 2), np.uint64)
MUL = np.ones(4, np.float32)
BIAS = np.zeros(4, np.float32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((A.astype(np.int64), W, 100, 1, 1, 1), "a must have dtype uint64"),
        ((A.astype(np.float32), W, 100, 1, 1, 1), "a must have dtype uint64"),
        ((A[0], W, 100, 1, 1, 1), "a must have 3 dimensions"),
        (([[1]], W, 100, 1, 1, 1), "a must be a numpy array"),
        ((A, W.astype(np.uint32), 100, 1, 1, 1), "w must have dtype uint64"),
        ((A, W[0], 100, 1, 1, 1), "w must have 4 dimensions"),
        ((A, W, 64, 1, 1, 1), "needs 1"),
        ((A, W, 129, 1, 1, 1), "needs 3"),
        ((A, W, 0, 1, 1, 1), "in_channels must be >= 1"),
        ((A, np.zeros((4, 3, 3, 1), np.uint64), 100, 1, 1, 1), "weights have 1 words"),
        ((A, np.zeros((4, 3, 1, 2), np.uint64), 100, 1, 1, 1), "square kernel"),
        ((A, np.zeros((0, 3, 3, 2), np.uint64), 100, 1, 1, 1), "at least one output channel"),
        ((A, W, 100, 0, 1, 1), "stride must be >= 1"),
        ((A, W, 100, 1, -1, 1), "padding must be >= 0"),
        ((A, W, 100, 1, 1, 0), "dilation must be >= 1"),
        ((A, W, 100, 1, 0, 3), "does not fit"),
        ((np.zeros((0, 6, 2), np.uint64), W, 100, 1, 1, 1), "non-empty"),
    ],
)
def test_bconv2d_int_rejects_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.bconv2d_int(*args)


@pytest.mark.parametrize(
    ("mul", "bias", "residual", "message"),
    [
        (MUL.astype(np.float64), BIAS, None, "mul must have dtype float32"),
        (MUL[:3], BIAS, None, "mul must have 4 entries"),
        (MUL, np.zeros(5, np.float32), None, "bias must have 4 entries"),
        (MUL, BIAS, np.zeros((6, 6, 3), np.float32), r"residual must have shape \(6, 6, 4\)"),
        (MUL, BIAS, np.zeros((6, 6, 4), np.float64), "residual must have dtype float32"),
    ],
)
def test_bconv2d_rejects_bad_epilogue(mul, bias, residual, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.bconv2d(A, W, 100, 1, 1, 1, mul, bias, False, False, residual)
    x = np.zeros((6, 6, 100), np.float32)
    with pytest.raises(ValueError, match=message):
        kernels.bconv2d_float(x, W, 1, 1, 1, mul, bias, False, False, residual)


def test_stray_bits_past_in_channels_are_rejected() -> None:
    """Data packed for more channels than in_channels says would give silently wrong dots."""
    a = np.zeros((3, 3, 2), np.uint64)
    w = np.zeros((2, 3, 3, 2), np.uint64)
    a[1, 2, 1] = np.uint64(1) << np.uint64(40)  # channel 104 of a 100-channel map
    with pytest.raises(ValueError, match="a has bits set past in_channels=100"):
        kernels.bconv2d_int(a, w, 100, 1, 1, 1)
    assert kernels.bconv2d_int(a, w, 105, 1, 1, 1).shape == (3, 3, 2)
    w[1, 0, 2, 1] = np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="w has bits set past in_channels=105"):
        kernels.bconv2d_int(a, w, 105, 1, 1, 1)
    with pytest.raises(ValueError, match="w has bits set"):
        kernels.bconv2d_float(
            np.zeros((3, 3, 105), np.float32),
            w,
            1,
            1,
            1,
            np.ones(2, np.float32),
            np.zeros(2, np.float32),
            False,
            False,
        )


def test_pack_and_float_conv_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="x must have dtype float32"):
        kernels.pack_bits(np.zeros((2, 2, 3), np.float64))
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        kernels.pack_bits(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="at least one channel"):
        kernels.pack_bits(np.zeros((2, 2, 0), np.float32))
    with pytest.raises(ValueError, match="needs 2"):  # 65 float channels need 2 words, weights have 1
        kernels.bconv2d_float(
            np.zeros((4, 4, 65), np.float32),
            np.zeros((2, 3, 3, 1), np.uint64),
            1,
            1,
            1,
            np.ones(2, np.float32),
            np.zeros(2, np.float32),
            False,
            False,
        )
