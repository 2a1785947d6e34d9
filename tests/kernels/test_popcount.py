"""The avx2 path's popcount methods (lut, mix1, mix2): each forced explicitly and compared with the
numpy reference and with the other methods; the run-time choice, SEG_POPCOUNT, dispatch_info and the
in-register ceiling probe."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from packed_samples import random_bits, random_weights

from seg_service import kernels
from seg_service.kernels import reference

HAS_AVX2 = "avx2" in kernels.available_isas()
NO_AVX2 = "this CPU has no AVX2 (+FMA, POPCNT): no avx2 popcount methods"
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason=NO_AVX2)
METHODS = ["lut", "mix1", "mix2"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest):
    """Runs the test on the avx2 path with one popcount method forced, restoring the previous state."""
    if not HAS_AVX2:
        pytest.skip(NO_AVX2)
    previous_isa = kernels.isa()
    kernels.set_isa("avx2")
    kernels.set_popcount(request.param)
    yield request.param
    kernels.set_popcount("auto")
    kernels.set_isa(previous_isa)


# (H, W, in_channels, out_channels, kernel, stride, padding, dilation). The mix methods count channels
# 8 .. 15 of each 16-channel block with scalar POPCNT: out_channels cover whole blocks, a last block
# with only 1 .. 8 channels (no POPCNT share) and 9 .. 15 (a partial POPCNT share); odd pixel counts
# leave a 1-pixel tail tile in mix2; odd input channels leave a partial last word.
CASES = [
    (1, 1, 1, 1, 3, 1, 1, 1),
    (1, 1, 3, 9, 1, 1, 0, 1),
    (2, 3, 63, 7, 3, 1, 1, 1),
    (2, 3, 65, 33, 3, 2, 1, 1),
    (5, 4, 64, 31, 3, 1, 0, 1),
    (3, 5, 64, 8, 3, 1, 1, 1),
    (3, 5, 64, 9, 3, 1, 1, 1),
    (3, 5, 64, 15, 3, 1, 1, 1),
    (7, 7, 64, 16, 3, 1, 1, 1),
    (9, 7, 130, 40, 3, 1, 1, 1),
    (9, 7, 130, 40, 3, 2, 2, 2),
    (16, 13, 64, 70, 1, 2, 0, 1),
    (11, 12, 65, 64, 1, 1, 0, 1),
    (12, 12, 3, 25, 3, 1, 0, 2),
    (23, 21, 32, 16, 3, 1, 5, 5),
    (24, 25, 96, 24, 3, 1, 10, 10),
    (24, 25, 96, 57, 3, 2, 10, 10),
    (21, 21, 63, 17, 3, 1, 7, 7),
    (6, 6, 20, 12, 3, 1, 9, 9),  # dilation larger than the map: most taps are padding
    (33, 31, 200, 48, 3, 1, 1, 1),  # 31 steps per byte-counter flush crossed several times
    (13, 11, 70, 10, 5, 1, 2, 1),
    (10, 9, 40, 26, 5, 2, 4, 2),
    (7, 7, 512, 40, 3, 1, 1, 1),  # long reduction: 4608 taps, counts past 8 bits
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_int_matches_reference(method: str, case: tuple[int, ...]) -> None:
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(sum(case) + 7)
    a = random_bits(rng, (h, w), c)
    wt = random_weights(rng, o, k, c)
    assert kernels.popcount() == method
    got = kernels.bconv2d_int(a, wt, c, stride, pad, dil)
    np.testing.assert_array_equal(got, reference.bconv2d_int(a, wt, c, stride, pad, dil))


@needs_avx2
def test_extreme_dots_every_method() -> None:
    """All-equal and all-opposite inputs: the largest counts (every bit differs) through each method."""
    previous = kernels.isa()
    kernels.set_isa("avx2")
    try:
        for method in METHODS:
            kernels.set_popcount(method)
            for c in (64, 200, 512):
                x = np.full((5, 6, c), -1.0, np.float32)
                a = kernels.pack_bits(x)
                for sign in (-1.0, 1.0):
                    wt = kernels.pack_bits(np.full((20, 9, c), sign, np.float32)).reshape(20, 3, 3, -1)
                    got = kernels.bconv2d_int(a, wt, c, 1, 1, 1)
                    np.testing.assert_array_equal(got, reference.bconv2d_int(a, wt, c, 1, 1, 1))
    finally:
        kernels.set_popcount("auto")
        kernels.set_isa(previous)


@needs_avx2
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize(
    "case",
    [(9, 7, 130, 40, 3, 1, 1, 1), (20, 19, 64, 25, 3, 2, 2, 2), (16, 16, 96, 64, 3, 1, 3, 3)],
    ids=lambda c: "x".join(map(str, c)),
)
def test_float_paths_equal_across_methods(threads, case: tuple[int, ...], n_threads: int) -> None:
    """Float epilogue, residual, packed output bits and chains: bit-identical for every method (the same
    dots through the same epilogue), and the dots equal the reference."""
    h, w, c, o, k, stride, pad, dil = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    a = kernels.pack_bits(x)
    wts = [kernels.prepare_weights(random_weights(rng, o, k, c), c) for _ in range(3)]
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    residual = rng.standard_normal((ho, wo, o)).astype(np.float32)
    bases = [
        (
            wt,
            rng.standard_normal(o).astype(np.float32),
            rng.standard_normal(o).astype(np.float32),
            j == 1,
            j == 2,
        )
        for j, wt in enumerate(wts)
    ]
    kernels.set_num_threads(n_threads)
    previous = kernels.isa()
    kernels.set_isa("avx2")
    results = {}
    try:
        for method in METHODS:
            kernels.set_popcount(method)
            dots = kernels.bconv2d_int(a, wts[0], c, stride, pad, dil)
            np.testing.assert_array_equal(dots, reference.bconv2d_int(a, wts[0].array, c, stride, pad, dil))
            _, mul, bias, _, _ = bases[0]
            fused = kernels.bconv2d_float(
                x, wts[0], stride, pad, dil, mul, bias, True, False, residual=residual, pack_output=True
            )
            chain = kernels.bconv2d_chain(a, bases, c, stride, pad, dil, residual=residual, pack_output=True)
            results[method] = (fused, chain)
    finally:
        kernels.set_popcount("auto")
        kernels.set_isa(previous)
    (out, bits), (chain_out, chain_bits) = results["lut"]
    np.testing.assert_array_equal(bits, kernels.pack_bits(out))
    for method in METHODS[1:]:
        (m_out, m_bits), (m_chain, m_chain_bits) = results[method]
        np.testing.assert_array_equal(m_out, out)
        np.testing.assert_array_equal(m_bits, bits)
        np.testing.assert_array_equal(m_chain, chain_out)
        np.testing.assert_array_equal(m_chain_bits, chain_bits)


@needs_avx2
def test_methods_agree_with_other_paths() -> None:
    """Every avx2 method against every other ISA path on a layer with padding and dilation."""
    rng = np.random.default_rng(5)
    a = random_bits(rng, (17, 15), 130)
    wt = kernels.prepare_weights(random_weights(rng, 45, 3, 130), 130)
    previous = kernels.isa()
    try:
        outs = {}
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            outs[isa] = kernels.bconv2d_int(a, wt, 130, 1, 2, 2)
        kernels.set_isa("avx2")
        for method in METHODS:
            kernels.set_popcount(method)
            outs[f"avx2/{method}"] = kernels.bconv2d_int(a, wt, 130, 1, 2, 2)
    finally:
        kernels.set_popcount("auto")
        kernels.set_isa(previous)
    first = next(iter(outs.values()))
    for name, out in outs.items():
        np.testing.assert_array_equal(out, first, err_msg=name)


def test_popcount_names_and_dispatch_info() -> None:
    previous = kernels.isa()
    try:
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            info = kernels.dispatch_info()
            assert info["isa"] == isa == kernels.isa()
            assert info["popcount"] == kernels.popcount()
            assert info["available_isas"] == kernels.available_isas()
            assert info["threads"] == kernels.get_num_threads()
            if isa == "avx512":
                assert (info["popcount"], info["popcount_source"]) == ("vpopcntq", "fixed")
            elif isa == "scalar":
                assert (info["popcount"], info["popcount_source"]) == ("popcnt", "fixed")
            else:
                assert info["popcount"] in METHODS
                assert info["popcount_source"] in ("calibrated", "forced")
    finally:
        kernels.set_isa(previous)


@needs_avx2
def test_calibration_and_forcing() -> None:
    previous = kernels.isa()
    kernels.set_isa("avx2")
    try:
        assert kernels.available_popcounts() == METHODS
        kernels.set_popcount("auto")
        info = kernels.dispatch_info()  # runs the calibration if it has not run yet
        assert info["popcount_source"] == "calibrated"
        assert sorted(info["calibration_us"]) == sorted(METHODS)
        assert all(t > 0 for t in info["calibration_us"].values())
        assert info["popcount"] in METHODS
        for method in METHODS:
            kernels.set_popcount(method)
            assert kernels.popcount() == method
            assert kernels.dispatch_info()["popcount_source"] == "forced"
        kernels.set_popcount("auto")
        assert kernels.dispatch_info()["popcount"] == info["popcount"]  # the calibrated choice is kept
    finally:
        kernels.set_popcount("auto")
        kernels.set_isa(previous)


def test_set_popcount_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="available: auto"):
        kernels.set_popcount("harley-seal")
    kernels.set_popcount("auto")  # always accepted


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("SEG_POPCOUNT", "SEG_ISA")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )


@needs_avx2
def test_environment_forces_the_method() -> None:
    code = "from seg_service import kernels; print(kernels.dispatch_info()['popcount'], kernels.popcount())"
    for method in METHODS:
        done = run_python(code, SEG_ISA="avx2", SEG_POPCOUNT=method.upper())
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [method, method]
    bad = run_python(code, SEG_POPCOUNT="nibbles")
    assert bad.returncode != 0 and "popcount method 'nibbles'" in bad.stderr


@needs_avx2
def test_popcount_ceilings_probe() -> None:
    rows = kernels.popcount_ceilings([], repeats=2, seconds=0.002)
    names = [r["method"] for r in rows]
    assert {"lut", "lut8", "hs", "scalar"} <= set(names)
    assert any(n.startswith("mix") for n in names)
    # The avx512 path's step is measured exactly where that path runs.
    assert ("vpopcntq" in names) == ("avx512" in kernels.available_isas())
    for r in rows:
        assert len(r["gbmacs"]) == 2 and all(g > 0 for g in r["gbmacs"]) and r["detail"]
        assert r["isa"] == ("avx512" if r["method"] == "vpopcntq" else "avx2")
    only = kernels.popcount_ceilings(["scalar"], repeats=1, seconds=0.001)
    assert [r["method"] for r in only] == ["scalar"]
    with pytest.raises(ValueError):
        kernels.popcount_ceilings([], repeats=0)
