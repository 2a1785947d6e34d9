"""kernels.conv2d_u8, the integer RGB stem (uint8 image, int8 weights in [-64, 63], per-class biases):
every ISA path (avx512 and avx2, each with VNNI where the CPU has it and with its vpmaddubsw emulation,
scalar), 1 and 2 threads,
against the numpy definition in ``kernels.reference``. The integer sums must be exact (scale 1, bias 0:
float(acc) is exact), the full epilogue within float rounding of the float64 definition (the kernel's
fma rounds once), and every path must give the same bits. Covers kernels 1 to 11, strides 1 and 2,
padding 0 to 3, 1 to 4 input channels, output channel counts around the block sizes, outputs larger
than the conv's natural size (the input's virtual padding), and the extreme values (255 pixels with
-64 or 63 weights: vpmaddubsw's pair sums at their largest, no saturation)."""

from __future__ import annotations

import numpy as np
import pytest

from seg_service import kernels
from seg_service.format import conv_output_size
from seg_service.kernels import _core, reference


def _vnni_isas() -> set[str]:
    """The ISA paths whose integer stem uses vpdpbusd on this CPU (AVX-512 VNNI, AVX-VNNI)."""
    previous_isa, previous_vnni = kernels.isa(), _core._set_u8_vnni(True)
    try:
        found = set()
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            if kernels.dispatch_info()["u8_dot"] == "vnni":
                found.add(isa)
        return found
    finally:
        kernels.set_isa(previous_isa)
        _core._set_u8_vnni(previous_vnni)


VNNI_ISAS = _vnni_isas()


def _paths() -> list[str]:
    out: list[str] = []
    for isa in kernels.available_isas():
        out.append(isa)
        if isa in VNNI_ISAS:  # also test the emulation
            out.append(f"{isa}-novnni")
    return out


PATHS = _paths()


def _select(path: str) -> None:
    kernels.set_isa(path.split("-")[0])
    _core._set_u8_vnni(not path.endswith("-novnni"))


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest):
    """One ISA path forced (avx512 with or without VNNI); ISA, VNNI and thread count restored after."""
    previous_isa, previous_threads = kernels.isa(), kernels.get_num_threads()
    _select(request.param)
    yield request.param
    kernels.set_isa(previous_isa)
    _core._set_u8_vnni(True)
    kernels.set_num_threads(previous_threads)


def _out_size(size: int, k: int, stride: int, padding: int, extra: int) -> int:
    return max(conv_output_size(size, k, stride, padding), 1) + extra


def _inputs(rng: np.random.Generator, case: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int, int]:
    h, w, c, o, k, stride, padding, extra_h, extra_w = case
    image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    weight = rng.integers(-64, 64, (o, k, k, c), dtype=np.int8)
    image.flat[:: max(1, image.size // 7)] = 255
    weight.flat[:: max(1, weight.size // 5)] = -64
    weight.flat[1 :: max(1, weight.size // 5)] = 63
    return image, weight, _out_size(h, k, stride, padding, extra_h), _out_size(w, k, stride, padding, extra_w)


def _integer_part(image, weight, stride, padding, out_h, out_w, call=kernels.conv2d_u8) -> np.ndarray:
    """The raw sums as float32 (scale 1, one zero bias class)."""
    o = weight.shape[0]
    return call(
        image,
        weight,
        np.ones(o, np.float32),
        np.zeros(out_h, np.int32),
        np.zeros(out_w, np.int32),
        np.zeros((1, 1, o), np.float32),
        stride,
        padding,
        False,
    )


# (H, W, C, O, k, stride, padding, extra output rows, extra output columns) past the natural size.
CASES = [
    (1, 1, 1, 1, 1, 1, 0, 0, 0),
    (1, 1, 3, 8, 3, 1, 1, 0, 0),
    (1, 1, 3, 16, 7, 2, 3, 0, 0),
    (2, 3, 3, 17, 7, 2, 0, 1, 2),  # the kernel is larger than the image: windows mostly padding
    (3, 5, 3, 32, 7, 1, 3, 0, 0),
    (5, 7, 4, 33, 3, 1, 1, 2, 3),
    (9, 13, 4, 64, 7, 2, 3, 1, 0),
    (13, 11, 1, 32, 7, 1, 3, 0, 2),
    (16, 17, 3, 64, 7, 2, 2, 0, 0),
    (20, 31, 3, 32, 7, 2, 3, 3, 5),
    (24, 37, 3, 8, 3, 1, 2, 0, 0),
    (31, 29, 1, 33, 1, 2, 0, 0, 0),
    (29, 45, 3, 1, 1, 1, 0, 4, 0),
    (12, 19, 2, 16, 5, 2, 1, 0, 1),
    (15, 15, 4, 17, 11, 2, 3, 0, 0),
    (67, 83, 3, 32, 7, 2, 3, 0, 0),
    (67, 83, 4, 17, 3, 2, 0, 1, 1),
    (66, 81, 3, 16, 7, 1, 3, 0, 0),
]


def _id(case: tuple[int, ...]) -> str:
    h, w, c, o, k, s, p, eh, ew = case
    return f"{h}x{w}x{c}-o{o}-k{k}s{s}p{p}+{eh},{ew}"


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_integer_sums_are_exact(path: str, case: tuple[int, ...], n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    rng = np.random.default_rng(sum(case))
    image, weight, out_h, out_w = _inputs(rng, case)
    stride, padding = case[5], case[6]
    got = _integer_part(image, weight, stride, padding, out_h, out_w)
    want = _integer_part(image, weight, stride, padding, out_h, out_w, call=reference.conv2d_u8)
    assert got.shape == (out_h, out_w, weight.shape[0]) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_with_bias_classes(path: str, case: tuple[int, ...], relu: bool) -> None:
    rng = np.random.default_rng(sum(case) + 1000)
    image, weight, out_h, out_w = _inputs(rng, case)
    stride, padding, o = case[5], case[6], weight.shape[0]
    scale = (rng.random(o) * 2e-4 - 1e-4).astype(np.float32)
    row_class = rng.integers(0, 3, out_h, dtype=np.int32)
    col_class = rng.integers(0, 4, out_w, dtype=np.int32)
    bias_table = rng.standard_normal((3, 4, o)).astype(np.float32)
    args = (image, weight, scale, row_class, col_class, bias_table, stride, padding, relu)
    got = kernels.conv2d_u8(*args)
    want = reference.conv2d_u8(*args)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if relu:
        assert (got >= 0).all()


@pytest.mark.parametrize("relu", [False, True])
def test_each_class_bias_is_used(path: str, relu: bool) -> None:
    """Zero weights: every output is exactly its pixel's bias, bias_table[row_class[y], col_class[x]]."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (21, 33, 3), dtype=np.uint8)
    weight = np.zeros((33, 7, 7, 3), np.int8)
    scale = rng.random(33).astype(np.float32)
    row_class = np.arange(12, dtype=np.int32) % 5
    col_class = (np.arange(19, dtype=np.int32) * 7) % 6
    bias_table = rng.standard_normal((5, 6, 33)).astype(np.float32)
    got = kernels.conv2d_u8(image, weight, scale, row_class, col_class, bias_table, 2, 3, relu)
    want = bias_table[row_class][:, col_class]
    np.testing.assert_array_equal(got, np.maximum(want, 0) if relu else want)


@pytest.mark.parametrize("pixel, value", [(255, -64), (255, 63), (255, None), (0, -64)])
@pytest.mark.parametrize("k, c", [(7, 3), (11, 4), (3, 1)])
def test_extreme_values(path: str, pixel: int, value: int | None, k: int, c: int) -> None:
    """All-255 images with all -64 or all 63 weights, or alternating -64 / 63 (pair sums of -64 and 63
    products: vpmaddubsw's largest), up to k = 11, C = 4: |acc| = 11 * 11 * 4 * 255 * 64, still exact."""
    image = np.full((19, 23, c), pixel, np.uint8)
    if value is None:
        weight = np.where(np.arange(32 * k * k * c) % 4 < 2, -64, 63).astype(np.int8).reshape(32, k, k, c)
    else:
        weight = np.full((32, k, k, c), value, np.int8)
    for stride in (1, 2):
        out_h = _out_size(19, k, stride, k // 2, 1)
        out_w = _out_size(23, k, stride, k // 2, 2)
        got = _integer_part(image, weight, stride, k // 2, out_h, out_w)
        want = _integer_part(image, weight, stride, k // 2, out_h, out_w, call=reference.conv2d_u8)
        np.testing.assert_array_equal(got, want)
    if value is not None and pixel == 255:
        full = _integer_part(image, weight, 1, 0, 1, 1)  # one window wholly inside
        assert full[0, 0, 0] == k * k * c * 255 * value


def _stem_inputs(o: int = 32) -> tuple:
    """The webcam model's stem: 240x320 image, padded virtually to 256x320 -> 128x160 outputs, 3 -> o
    channels, k7 s2 p3; rows / columns classed by their distance to the image border."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    weight = rng.integers(-64, 64, (o, 7, 7, 3), dtype=np.int8)
    scale = (rng.random(o) * 1e-4).astype(np.float32)
    row_class = np.clip(np.arange(128) - 117, 0, None).astype(np.int32)  # 0 inside, 1.. near and past 240
    row_class[:2] = [11, 12]
    col_class = np.zeros(160, np.int32)
    col_class[:2], col_class[-2:] = [1, 2], [3, 4]
    bias_table = rng.standard_normal((13, 5, o)).astype(np.float32)
    return image, weight, scale, row_class, col_class, bias_table, 2, 3


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_stem_shape(path: str, n_threads: int, relu: bool) -> None:
    kernels.set_num_threads(n_threads)
    args = (*_stem_inputs(), relu)
    got = kernels.conv2d_u8(*args)
    assert got.shape == (128, 160, 32)
    np.testing.assert_allclose(got, reference.conv2d_u8(*args), rtol=1e-6, atol=1e-7)
    image, weight = args[0], args[1]
    np.testing.assert_array_equal(
        _integer_part(image, weight, 2, 3, 128, 160),
        _integer_part(image, weight, 2, 3, 128, 160, call=reference.conv2d_u8),
    )


@pytest.mark.usefixtures("threads")
def test_every_path_and_thread_count_gives_the_same_bits() -> None:
    previous = kernels.isa()
    calls = [(*_stem_inputs(o), True) for o in (32, 17, 64)]
    rng = np.random.default_rng(9)
    for case in [CASES[5], CASES[14], CASES[16]]:
        image, weight, out_h, out_w = _inputs(rng, case)
        o = weight.shape[0]
        scale = rng.standard_normal(o).astype(np.float32)
        bias = rng.standard_normal((2, 3, o)).astype(np.float32)
        rows = rng.integers(0, 2, out_h, dtype=np.int32)
        cols = rng.integers(0, 3, out_w, dtype=np.int32)
        calls.append((image, weight, scale, rows, cols, bias, case[5], case[6], False))
    try:
        results = {}
        for p in PATHS:
            _select(p)
            for n in (1, 2):
                kernels.set_num_threads(n)
                results[(p, n)] = [kernels.conv2d_u8(*args) for args in calls]
    finally:
        kernels.set_isa(previous)
        _core._set_u8_vnni(True)
    first = next(iter(results.values()))
    for key, outs in results.items():
        for a, b in zip(first, outs):
            np.testing.assert_array_equal(a, b, err_msg=str(key))


def _valid_args() -> dict:
    return {
        "image": np.zeros((8, 9, 3), np.uint8),
        "weight": np.zeros((4, 3, 3, 3), np.int8),
        "scale": np.ones(4, np.float32),
        "row_class": np.zeros(8, np.int32),
        "col_class": np.zeros(9, np.int32),
        "bias_table": np.zeros((2, 3, 4), np.float32),
        "stride": 1,
        "padding": 1,
        "relu": False,
    }


def _weight(value: int) -> np.ndarray:
    w = np.zeros((4, 3, 3, 3), np.int8)
    w[2, 1, 0, 2] = value
    return w


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weight": _weight(64)}, r"\[-64, 63\]"),
        ({"weight": _weight(-65)}, r"\[-64, 63\]"),
        ({"weight": _weight(127)}, r"\[-64, 63\]"),
        ({"weight": np.zeros((4, 3, 3, 3), np.uint8)}, "weight must have dtype int8"),
        ({"weight": np.zeros((4, 3, 3, 3), np.float32)}, "weight must have dtype int8"),
        ({"image": np.zeros((8, 9, 3), np.float32)}, "image must have dtype uint8"),
        ({"image": np.zeros((8, 9, 3), np.int8)}, "image must have dtype uint8"),
        ({"scale": np.ones(4, np.float64)}, "scale must have dtype float32"),
        ({"row_class": np.zeros(8, np.int64)}, "row_class must have dtype int32"),
        ({"col_class": np.zeros(9, np.uint32)}, "col_class must have dtype int32"),
        ({"bias_table": np.zeros((2, 3, 4), np.float64)}, "bias_table must have dtype float32"),
        ({"row_class": np.array([0, 1, 2], np.int32)}, r"row_class\[2\] = 2 is not in \[0, 2\)"),
        ({"row_class": np.array([0, -1], np.int32)}, r"row_class\[1\] = -1"),
        ({"col_class": np.array([3], np.int32)}, r"col_class\[0\] = 3 is not in \[0, 3\)"),
        ({"col_class": np.array([-2, 0], np.int32)}, r"col_class\[0\] = -2"),
        ({"row_class": np.zeros(0, np.int32)}, "must be non-empty"),
        ({"image": np.zeros((8, 9, 4), np.uint8)}, r"weight must be \[out_channels, k, k, 4\]"),
        (
            {"image": np.zeros((8, 9, 5), np.uint8), "weight": np.zeros((4, 3, 3, 5), np.int8)},
            "1 to 4 channels",
        ),
        ({"image": np.zeros((0, 9, 3), np.uint8)}, "non-empty"),
        ({"weight": np.zeros((4, 3, 2, 3), np.int8)}, "square kernel"),
        ({"weight": np.zeros((4, 12, 12, 3), np.int8)}, "kernel must be at most 11"),
        ({"scale": np.ones(5, np.float32)}, "scale must have 4 entries"),
        ({"bias_table": np.zeros((2, 3, 5), np.float32)}, r"bias_table must be \[R, S, 4\]"),
        ({"bias_table": np.zeros((3, 4), np.float32)}, "bias_table must have 3 dimensions"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"padding": -1}, "padding must be >= 0"),
    ],
)
def test_bad_arguments_raise_value_error(change: dict, message: str) -> None:
    args = _valid_args() | change
    with pytest.raises(ValueError, match=message):
        kernels.conv2d_u8(**args)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (33, 17, 4), (256, 320, 3), (1100, 1000, 3)])
def test_image_pixels_equals_numpy(isa, shape):
    """The pixels an integer stem reads from a normalised input: numpy's rint (half to even) of the
    product then the sum, clipped; an image normalised from u8 pixels gives them back exactly.
    1100 x 1000 x 3 splits over threads."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    pixel_scale = rng.uniform(40, 80, shape[2]).astype(np.float32)
    pixel_zero = rng.uniform(90, 130, shape[2]).astype(np.float32)
    flat = x.reshape(-1, shape[2])
    ties = min(len(flat), 12)  # values that land on k + 0.5 (as far as float32 lets them)
    flat[:ties, 0] = (np.arange(ties) + 0.5 - pixel_zero[0]) / pixel_scale[0]
    np.testing.assert_array_equal(
        kernels.image_pixels(x, pixel_scale, pixel_zero), reference.image_pixels(x, pixel_scale, pixel_zero)
    )
    levels = rng.integers(0, 256, shape, dtype=np.uint8)
    normalised = ((levels.astype(np.float32) - pixel_zero) / pixel_scale).astype(np.float32)
    np.testing.assert_array_equal(kernels.image_pixels(normalised, pixel_scale, pixel_zero), levels)
    with pytest.raises(ValueError, match="one entry per channel"):
        kernels.image_pixels(x, pixel_scale[:-1] if shape[2] > 1 else np.ones(2, np.float32), pixel_zero)


def test_dispatch_info_names_the_dot_products(isa):
    """``dispatch_info()['u8_dot']``: how the integer stem multiplies on the path in use (seg-bench
    prints it), following the ISA path, the CPU's VNNI and the VNNI switch."""
    previous = _core._set_u8_vnni(True)
    try:
        has_vnni = isa in VNNI_ISAS
        expected = "scalar" if isa == "scalar" else "vnni" if has_vnni else "maddubs"
        assert kernels.dispatch_info()["u8_dot"] == expected
        _core._set_u8_vnni(False)
        assert kernels.dispatch_info()["u8_dot"] == ("scalar" if isa == "scalar" else "maddubs")
    finally:
        _core._set_u8_vnni(previous)
