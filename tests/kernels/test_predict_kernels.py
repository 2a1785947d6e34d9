"""The kernels around the network in PackedModel.predict: normalize_image (the input and the guide),
half_logit_difference and the two-class path of guided_apply (the stored guided filter), the
guided filter's coefficients on every ISA path, and argmax_channels with two classes, with 3 to 16
(the vector paths) and more, and with a model's decision biases added inside it.

normalize_image, half_logit_difference, guided_apply and argmax_channels must equal their numpy
definitions in ``kernels.reference`` (or numpy itself) bit for bit on every ISA path and thread
count, at sizes that are not multiples of the vector width, with and without padding.
guided_coefficients sums in double, not as its float32 reference: every ISA path gives the same
bits, within float32 rounding of the definition evaluated in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from seg_service import kernels
from seg_service.kernels import reference

RNG = np.random.default_rng(7)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
OFFSET = (-MEAN / STD).astype(np.float32)

SIZES = [(1, 1), (1, 37), (29, 1), (17, 33), (240, 320), (241, 319)]


def padded(h: int, w: int, divisor: int = 32) -> tuple[int, int]:
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_normalize_image_from_uint8_equals_numpy(isa: str, threads, h: int, w: int, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    rgb = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 255, 128)
    for ph, pw in {(h, w), padded(h, w)}:  # padding absent and present
        x, guide = kernels.normalize_image(rgb, SCALE, OFFSET, ph, pw, with_guide=True)
        want_x, want_guide = reference.normalize_image(rgb, SCALE, OFFSET, ph, pw, with_guide=True)
        assert x.shape == (ph, pw, 3) and x.dtype == np.float32
        assert guide.shape == (h, w, 3) and guide.dtype == np.float32
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(guide, want_guide)
        np.testing.assert_array_equal(kernels.normalize_image(rgb, SCALE, OFFSET, ph, pw), want_x)


@pytest.mark.parametrize("h, w, c", [(1, 5, 3), (23, 41, 3), (9, 7, 1), (6, 11, 4)])
def test_normalize_image_from_float_equals_numpy(isa: str, h: int, w: int, c: int) -> None:
    """The area-resized image (float32): values past 0..255 and NaN included, any channel count."""
    image = (RNG.standard_normal((h, w, c)) * 200 + 100).astype(np.float32)
    image.flat[::7] = np.nan
    scale = RNG.random(c).astype(np.float32)
    offset = RNG.standard_normal(c).astype(np.float32)
    x, guide = kernels.normalize_image(image, scale, offset, h + 3, w + 5, with_guide=True)
    want_x, want_guide = reference.normalize_image(image, scale, offset, h + 3, w + 5, with_guide=True)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(guide, want_guide)
    assert np.isnan(guide).sum() == np.isnan(image).sum()


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_image_guide_equals_normalize_images_guide(isa: str, threads, h: int, w: int, n_threads: int) -> None:
    """The guide alone (what predict builds for an integer stem) is normalize_image's guide, bit for bit,
    from u8 pixels and from a float image with values past 0..255 and NaN."""
    kernels.set_num_threads(n_threads)
    rgb = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 255, 128)
    image = (RNG.standard_normal((h, w, 3)) * 200 + 100).astype(np.float32)
    image.flat[::7] = np.nan
    for src in (rgb, image):
        got = kernels.image_guide(src)
        assert got.shape == (h, w, 3) and got.dtype == np.float32
        np.testing.assert_array_equal(got, reference.image_guide(src))
        _, guide = kernels.normalize_image(src, SCALE, OFFSET, h, w, with_guide=True)
        np.testing.assert_array_equal(got, guide)


def test_image_guide_of_a_large_image_on_threads(threads) -> None:
    rgb = RNG.integers(0, 256, (601, 1000, 3), dtype=np.uint8)
    want = reference.image_guide(rgb)
    for n_threads in (1, 2, 3):
        kernels.set_num_threads(n_threads)
        np.testing.assert_array_equal(kernels.image_guide(rgb), want)


def test_image_guide_refuses_what_is_not_an_image() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        kernels.image_guide(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        kernels.image_guide(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="numpy array"):
        kernels.image_guide([[1, 2, 3]])


def test_normalize_image_large_image_on_threads(threads) -> None:
    """Above the size where the rows are split over the threads (a 1080p-sized frame)."""
    rgb = RNG.integers(0, 256, (601, 1000, 3), dtype=np.uint8)
    want = reference.normalize_image(rgb, SCALE, OFFSET, 608, 1024, with_guide=True)
    for n_threads in (1, 2, 3):
        kernels.set_num_threads(n_threads)
        got = kernels.normalize_image(rgb, SCALE, OFFSET, 608, 1024, with_guide=True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_normalize_image_reads_non_contiguous_input() -> None:
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)[::2, 3:]
    np.testing.assert_array_equal(
        kernels.normalize_image(rgb, SCALE, OFFSET, 16, 32),
        reference.normalize_image(rgb, SCALE, OFFSET, 16, 32),
    )


@pytest.mark.parametrize(
    "image, scale, padded_size, message",
    [
        (np.zeros((4, 4, 3), np.int16), SCALE, (4, 4), "float32"),
        (np.zeros((4, 4), np.uint8), SCALE, (4, 4), "3 dimensions"),
        (np.zeros((0, 4, 3), np.uint8), SCALE, (4, 4), "non-empty"),
        (np.zeros((4, 4, 3), np.uint8), SCALE[:2], (4, 4), "one entry per image channel"),
        (np.zeros((4, 4, 3), np.uint8), SCALE.astype(np.float64), (4, 4), "scale must have dtype float32"),
        (np.zeros((4, 4, 3), np.uint8), SCALE, (3, 4), "padded size must hold the image"),
        (np.zeros((4, 4, 3), np.uint8), SCALE, (4, 1 << 25), "at most"),
        ([[[1, 2, 3]]], SCALE, (4, 4), "numpy array"),
    ],
)
def test_normalize_image_bad_input(image, scale, padded_size, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.normalize_image(image, scale, OFFSET, *padded_size)


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_half_logit_difference_equals_numpy(isa: str, threads, h: int, w: int, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    scores = (RNG.standard_normal((h, w, 2)) * 4).astype(np.float32)
    scores.flat[::11] = np.nan
    scores.flat[5::13] = np.inf
    for clip in (2.0, 0.3, 1e-3):
        got = kernels.half_logit_difference(scores, clip)
        assert got.shape == (h, w, 1) and got.dtype == np.float32
        np.testing.assert_array_equal(got, reference.half_logit_difference(scores, clip))


def test_half_logit_difference_bad_input() -> None:
    with pytest.raises(ValueError, match="two classes"):
        kernels.half_logit_difference(np.zeros((3, 4, 3), np.float32), 2.0)
    with pytest.raises(ValueError, match="clip must be positive"):
        kernels.half_logit_difference(np.zeros((3, 4, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="float32"):
        kernels.half_logit_difference(np.zeros((3, 4, 2), np.float64), 2.0)


@pytest.mark.parametrize(
    "low, size",
    [
        ((60, 80), (240, 320)),  # the person model's 4x fast guided filter
        ((1, 1), (1, 1)),
        ((1, 7), (1, 29)),
        ((9, 1), (35, 1)),
        ((13, 9), (50, 33)),  # not a whole factor
        ((6, 5), (6, 5)),  # no upsampling
        ((20, 11), (7, 5)),  # fewer output rows than coefficient rows: the taps skip rows
        ((150, 125), (600, 500)),  # rows split over the threads
        ((4, 3), (16, 48)),  # x16: whole blocks of columns from a window of one or two coefficients
        ((8, 64), (30, 20)),  # shrinking columns: no block's window fits a vector
        ((61, 83), (243, 331)),  # vector blocks, then a tail of columns (331 = 41 x 8 + 3)
        ((12, 70), (30, 90)),  # x1.3: blocks fit at first, then not
        ((5, 2), (9, 19)),  # two low-res columns: windows read past the row's end
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_two_class_apply_equals_numpy(isa: str, threads, low, size, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    a = RNG.standard_normal((*low, 1, 3)).astype(np.float32)
    b = RNG.standard_normal((*low, 1)).astype(np.float32)
    guide = RNG.random((*size, 3), dtype=np.float32)
    for signs, bias in (([-1.0, 1.0], [0.0, -1.25]), ([0.5, -2.0], [0.125, 3.0])):
        out = kernels.guided_apply(a, b, guide, [0, 0], signs, bias)
        assert out.shape == (*size, 2) and out.dtype == np.float32
        np.testing.assert_array_equal(out, reference.guided_apply(a, b, guide, [0, 0], signs, bias))


@pytest.mark.parametrize(
    "h, w, k, radius", [(60, 80, 1, 4), (1, 23, 1, 3), (19, 1, 2, 2), (7, 9, 3, 20), (121, 97, 2, 5)]
)
def test_coefficients_agree_on_every_isa_path(h: int, w: int, k: int, radius: int) -> None:
    """Every ISA path and thread count (the larger fits split pixels and planes over the threads)."""
    guide = RNG.random((h, w, 3), dtype=np.float32)
    src = (RNG.standard_normal((h, w, k)) * 2).astype(np.float32)
    previous, previous_threads = kernels.isa(), kernels.get_num_threads()
    results = []
    try:
        for name in kernels.available_isas():
            kernels.set_isa(name)
            for n_threads in (1, 2, 3):
                kernels.set_num_threads(n_threads)
                results.append(kernels.guided_coefficients(guide, src, radius, 1e-3))
    finally:
        kernels.set_isa(previous)
        kernels.set_num_threads(previous_threads)
    for a, b in results[1:]:
        np.testing.assert_array_equal(a, results[0][0])
        np.testing.assert_array_equal(b, results[0][1])
    # against the definition in float64 (the float32 reference loses digits in the variance, up to
    # 5e-4 on such small windows; the kernel sums in double and is off by its float32 rounding only)
    exact_a, exact_b = coefficients_in_float64(guide, src, radius, 1e-3)
    np.testing.assert_allclose(results[0][0], exact_a, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(results[0][1], exact_b, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize(
    "h, w, k, radius",
    [
        (60, 80, 1, 4),  # the person model's fit
        (61, 83, 1, 4),  # neither side a multiple of 4 (the box passes' blocks of rows)
        (64, 80, 1, 8),
        (1, 1, 1, 2),
        (1, 23, 1, 3),
        (19, 1, 2, 2),
        (2, 3, 2, 1),
        (7, 9, 3, 20),  # the radius beyond the plane
        (33, 35, 4, 3),
        (121, 97, 2, 5),  # split over the threads
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_coefficients_are_their_double_arithmetic(isa: str, threads, h, w, k, radius, n_threads) -> None:
    """guided_coefficients equals, bit for bit, its sums and products in double in the kernel's order."""
    kernels.set_num_threads(n_threads)
    guide = RNG.random((h, w, 3), dtype=np.float32)
    src = (RNG.standard_normal((h, w, k)) * 2).astype(np.float32)
    a, b = kernels.guided_coefficients(guide, src, radius, 1e-3)
    exact_a, exact_b = coefficients_in_kernel_order(guide, src, radius, 1e-3)
    np.testing.assert_array_equal(a, exact_a)
    np.testing.assert_array_equal(b, exact_b)


def running_box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The kernel's box mean of x float64 [H, W, ...]: per axis (rows, then columns) a running sum
    (the first `radius` values added to 0.0 in order, then per position the window's new value
    added and the one that left it subtracted) times 1 / count."""
    out = np.asarray(x, dtype=np.float64)
    for axis in (0, 1):
        v = np.moveaxis(out, axis, 0)
        n = v.shape[0]
        total = np.zeros_like(v[0])
        for i in range(min(radius, n)):
            total = total + v[i]
        result = np.empty_like(v)
        for i in range(n):
            if i + radius < n:
                total = total + v[i + radius]
            if i - radius - 1 >= 0:
                total = total - v[i - radius - 1]
            result[i] = total * (1.0 / float(min(i + radius, n - 1) - max(i - radius, 0) + 1))
        out = np.moveaxis(result, 0, axis)
    return out


def coefficients_in_kernel_order(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """guided_coefficients' arithmetic in numpy float64, operation for operation (guided_filter.cpp)."""
    g = [guide[..., c].astype(np.float64) for c in range(3)]
    m0, m1, m2 = (running_box_mean(v, radius) for v in g)
    m00, m01, m02 = (running_box_mean(g[0] * v, radius) for v in g)
    m11, m12, m22 = (
        running_box_mean(g[1] * g[1], radius),
        running_box_mean(g[1] * g[2], radius),
        running_box_mean(g[2] * g[2], radius),
    )
    s00, s01, s02 = m00 - m0 * m0 + eps, m01 - m0 * m1, m02 - m0 * m2
    s11, s12, s22 = m11 - m1 * m1 + eps, m12 - m1 * m2, m22 - m2 * m2 + eps
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    inv_det = 1.0 / (s00 * c00 + s01 * c01 + s02 * c02)
    a, b = [], []
    for j in range(src.shape[2]):
        s = src[..., j].astype(np.float64)
        p = running_box_mean(s, radius)
        v0, v1, v2 = (running_box_mean(s * gc, radius) - p * mc for gc, mc in zip(g, (m0, m1, m2)))
        x0 = (v0 * c00 + v1 * c01 + v2 * c02) * inv_det
        x1 = (v0 * c01 + v1 * c11 + v2 * c12) * inv_det
        x2 = (v0 * c02 + v1 * c12 + v2 * c22) * inv_det
        a.append(np.stack([running_box_mean(x, radius) for x in (x0, x1, x2)], axis=-1))
        b.append(running_box_mean(p - x0 * m0 - x1 * m1 - x2 * m2, radius))
    return np.stack(a, axis=2).astype(np.float32), np.stack(b, axis=2).astype(np.float32)


def box_mean_in_float64(x: np.ndarray, radius: int) -> np.ndarray:
    """reference.box_mean in float64, by cumulative sums."""
    out = np.asarray(x, dtype=np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(1, 0) if a == axis else (0, 0) for a in range(out.ndim)]
        cumulative = np.cumsum(np.pad(out, pad), axis=axis)
        idx = np.arange(n)
        hi, lo = np.minimum(idx + radius + 1, n), np.maximum(idx - radius, 0)
        shape = [1] * out.ndim
        shape[axis] = n
        out = (np.take(cumulative, hi, axis=axis) - np.take(cumulative, lo, axis=axis)) / (hi - lo).reshape(
            shape
        )
    return out


def coefficients_in_float64(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """reference.guided_coefficients evaluated in float64."""
    g, p = guide.astype(np.float64), src.astype(np.float64)
    mean_i, mean_p = box_mean_in_float64(g, radius), box_mean_in_float64(p, radius)
    cov = (
        box_mean_in_float64(p[..., :, None] * g[..., None, :], radius)
        - mean_p[..., :, None] * mean_i[..., None, :]
    )
    var = (
        box_mean_in_float64(g[..., :, None] * g[..., None, :], radius)
        - mean_i[..., :, None] * mean_i[..., None, :]
    )
    a = np.einsum("hwkj,hwji->hwki", cov, np.linalg.inv(var + eps * np.eye(3)))
    b = mean_p - np.einsum("hwkc,hwc->hwk", a, mean_i)
    return box_mean_in_float64(a, radius), box_mean_in_float64(b, radius)


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 33, 2), (47, 61, 2), (240, 320, 2)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_two_class_argmax_equals_numpy(isa: str, threads, shape, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal(shape).astype(np.float32)
    x.reshape(-1, 2)[::5, 1] = x.reshape(-1, 2)[::5, 0]  # ties: the first wins
    x.reshape(-1, 2)[1::7, 0] = np.nan  # a NaN counts as the maximum, the first NaN wins
    x.reshape(-1, 2)[2::9, 1] = np.nan
    x.reshape(-1, 2)[3::11] = np.nan
    np.testing.assert_array_equal(kernels.argmax_channels(x), np.argmax(x, axis=2))


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 2), (47, 61, 2), (1, 1, 11), (47, 61, 11), (360, 480, 11), (5, 3, 256)]
    # 3 .. 16 channels take the vector paths (one AVX-512 register, two AVX2 halves): their edges
    + [(13, 17, c) for c in (3, 7, 8, 9, 15, 16, 17)],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_argmax_with_bias_equals_numpy(isa: str, threads, shape, n_threads: int) -> None:
    """argmax(x + bias) with the sums in float32, as PackedModel.predict's stored decision biases."""
    kernels.set_num_threads(n_threads)
    c = shape[2]
    x = RNG.standard_normal(shape).astype(np.float32)
    bias = (RNG.integers(-8, 9, c) * 0.125).astype(np.float32)  # the tuning grid's steps
    flat = x.reshape(-1, c)
    flat[::5, 1] = flat[::5, 0] + bias[0] - bias[1]  # ties after the bias (mostly): the first wins
    flat[1::7, 0] = np.nan  # NaN counts as the maximum, the first NaN wins
    flat[2::9, c - 1] = np.nan
    flat[3::11, 0] = np.inf  # inf + bias stays the maximum
    flat[4::13, 1] = -np.inf
    expected = np.argmax(x + bias, axis=2)
    np.testing.assert_array_equal(kernels.argmax_channels(x, bias), expected)
    np.testing.assert_array_equal(kernels.argmax_channels(x, None), np.argmax(x, axis=2))
    with pytest.raises(ValueError, match="bias must have"):
        kernels.argmax_channels(x, np.zeros(c + 1, np.float32))


@pytest.mark.parametrize("c", [3, 8, 11, 16])
def test_argmax_of_infinities_and_signed_zeros_equals_numpy(isa: str, c: int) -> None:
    """Pixels whose channels are all -inf, all +inf, -0.0 against +0.0, a NaN after the maximum and
    the largest value in the last channel: numpy's first-maximum rule in every case."""
    rows = [
        np.full(c, -np.inf),
        np.full(c, np.inf),
        np.where(np.arange(c) % 2 == 0, -0.0, 0.0),
        np.r_[np.full(c - 1, -1.0), 0.0],
        np.r_[5.0, np.full(c - 2, 1.0), np.nan],
        np.r_[-np.inf, np.full(c - 1, -3.0)],
    ]
    x = np.asarray(rows, dtype=np.float32).reshape(1, len(rows), c)
    np.testing.assert_array_equal(kernels.argmax_channels(x), np.argmax(x, axis=2))
    bias = np.linspace(-1, 1, c).astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf + bias stays inf; -inf + inf does not occur here
        np.testing.assert_array_equal(kernels.argmax_channels(x, bias), np.argmax(x + bias, axis=2))


@pytest.mark.parametrize(
    "src, dst, dtype",
    [
        ((240, 320, 3), (60, 80), np.float32),  # the guided filter's 4x subsampling of the guide
        ((240, 320, 1), (60, 80), np.float32),  # ... and of its source
        ((384, 512, 3), (240, 320), np.uint8),  # a photo larger than max_side
        ((7, 1, 3), (2, 1), np.uint8),
        ((1, 29, 2), (1, 3), np.float32),
        ((700, 601, 3), (311, 97), np.uint8),  # above the size split over the threads
        ((480, 640, 3), (240, 320), np.uint8),  # a camera frame halved for the person model
        # 2 to 4 channels take a pixel per vector, with 2 .. 5 taps unrolled: their cases
        ((33, 47, 4), (11, 16), np.float32),
        ((9, 12, 2), (3, 3), np.float32),
        ((5, 7, 3), (9, 11), np.uint8),  # upscaling: 2 taps, one of weight 0 at the end
        ((1, 40, 3), (1, 3), np.uint8),  # 15 taps
        # uint8 shrunk by powers of two per axis: summed in integers (exact, so the same floats)
        ((64, 96, 3), (16, 12), np.uint8),
        ((30, 40, 1), (30, 20), np.uint8),
        ((16, 16, 4), (2, 2), np.uint8),
        ((2, 2, 3), (1, 1), np.uint8),
        ((960, 1280, 3), (480, 640), np.uint8),  # above the size split over the threads
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_resize_area_equals_numpy(isa: str, threads, src, dst, dtype, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    if dtype == np.uint8:
        x = RNG.integers(0, 256, src, dtype=np.uint8)
    else:
        x = (RNG.standard_normal(src) * 3).astype(np.float32)
    np.testing.assert_array_equal(kernels.resize_area(x, *dst), reference.resize_area(x, *dst))


@pytest.mark.parametrize(
    "src, dst",
    [
        ((240, 320, 3), (60, 80)),  # the guide of the person model's filter
        ((240, 320, 1), (60, 80)),  # ... and its source
        ((16, 24, 2), (8, 3)),
        ((8, 8, 4), (1, 8)),  # factor 1 along x
        ((16, 5, 3), (4, 5)),  # factor 1 along x, 3 and 2 channels: the vector loads stop short of
        ((8, 7, 2), (2, 7)),  # the row's end a pixel early
        ((12, 32, 5), (12, 4)),  # more than 4 channels; factor 1 along y
        ((2048, 1024, 1), (256, 512)),  # above the size split over the threads
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_resize_area_float_power_of_two_is_the_definition_bit_for_bit(
    isa: str, threads, src, dst, n_threads: int
) -> None:
    """float32 images shrunk by a power of two per axis take their own path (the guided filter's
    subsampling); it rounds every sum as the definition does, and gives a zero the same sign: a block
    of -0.0 (and tiny negatives whose weighted terms round to -0.0) next to positive pixels."""
    kernels.set_num_threads(n_threads)
    x = (RNG.standard_normal(src) * 3).astype(np.float32)
    x[::5, ::3] = -0.0
    x[1::7] = -1e-45
    # a whole output block of -0.0 whose next pixels (the zero-weight taps) are positive: the
    # definition's sum ends +0.0
    fy, fx = src[0] // dst[0], src[1] // dst[1]
    x[:fy, : 2 * fx] = -0.0
    x[:fy, 2 * fx :] = np.abs(x[:fy, 2 * fx :]) + 1.0
    x[fy : 2 * fy] = np.abs(x[fy : 2 * fy]) + 1.0
    ours, ref = kernels.resize_area(x, *dst), reference.resize_area(x, *dst)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
