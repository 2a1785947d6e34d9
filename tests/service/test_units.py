"""The service's own helpers on their own: image normalisation, RLE, overlay, metrics text."""

from __future__ import annotations

import io
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from seg_service.api import imaging
from seg_service.api.masks import class_counts, coco_rle
from seg_service.api.metrics import Metrics


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def test_sixteen_bit_keeps_the_top_byte():
    values = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    rgb = imaging.decode_image(encode(Image.fromarray(values)), 100)
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 255]


def test_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]  # opaque
    rgba[1, 1] = [200, 0, 0, 0]  # fully transparent: becomes white
    rgb = imaging.decode_image(encode(Image.fromarray(rgba, "RGBA")), 100)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[1, 1].tolist() == [255, 255, 255]


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (100, 50)))
    assert imaging.decode_image(data, 5000).shape == (50, 100, 3)
    with pytest.raises(imaging.ImageInputError) as e:
        imaging.decode_image(data, 4999)
    assert e.value.status == 413 and "100x50" in e.value.detail


@pytest.mark.parametrize("data,status", [(b"", 400), (b"plain text", 415), (b"\x89PNG\r\n\x1a\nbroken", 400)])
def test_error_statuses(data, status):
    with pytest.raises(imaging.ImageInputError) as e:
        imaging.decode_image(data, 10**6)
    assert e.value.status == status


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (480, 640), (241, 319)])
def test_mask_png_decodes_to_the_mask(shape):
    """Label masks (no row filter) and soft masks (the "sub" filter) come back pixel for pixel."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 11, shape, dtype=np.uint8)
    labels[: shape[0] // 2] = 1  # runs, as a real mask has
    ramp = np.clip(np.linspace(-200, 455, shape[1])[None, :] + rng.normal(0, 3, shape), 0, 255).astype(
        np.uint8
    )
    for mask, soft in ((labels, False), (ramp, True), (labels, True), (ramp, False)):
        data = imaging.encode_mask_png(mask, soft=soft)
        assert data.startswith(b"\x89PNG")
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back, mask)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), mask)


def test_coco_rle_is_column_major_and_starts_with_zeros():
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    # column-major: 1 1 | 0 1 | 0 0  ->  runs: 0 zeros, 2 ones, 1 zero, 1 one, 2 zeros
    assert coco_rle(mask) == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}
    assert coco_rle(np.zeros((2, 2), bool)) == {"size": [2, 2], "counts": [4]}
    assert coco_rle(np.zeros((0, 3), bool)) == {"size": [0, 3], "counts": []}


def test_class_counts_ignores_nothing_and_pads():
    mask = np.array([[0, 2], [2, 2]], np.uint8)
    assert class_counts(mask, 4).tolist() == [1, 0, 3, 0]


def test_overlay_leaves_black_palette_classes_untouched():
    rgb = np.full((1, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1]], np.uint8)
    palette = np.array([[0, 0, 0], [200, 0, 50]], np.uint8)
    out = imaging.overlay(rgb, mask, palette)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [150, 50, 75]


def overlay_by_definition(rgb, mask, palette, alpha=0.5, bgr=False):
    """The overlay's formula in plain numpy: painted classes blended in integers, the rest untouched."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    colours = palette[np.minimum(np.arange(256), len(palette) - 1)]
    weight = int(round(alpha * 256))
    blended = (rgb.astype(np.int64) * (256 - weight) + colours[mask].astype(np.int64) * weight + 128) >> 8
    out = np.where(np.any(colours, axis=1)[mask][:, :, None], blended, rgb).astype(np.uint8)
    return out[:, :, ::-1] if bgr else out


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (480, 640), (1500, 700)])  # 1500x700: several chunks
@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_overlay_equals_its_definition(shape, alpha):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = rng.integers(0, 13, shape, dtype=np.uint8)  # labels past the 11-colour palette included
    palette = rng.integers(0, 256, (11, 3), dtype=np.uint8)
    palette[0] = 0  # an unpainted class
    for bgr in (False, True):
        got = imaging.overlay(rgb, mask, palette, alpha=alpha, bgr=bgr)
        np.testing.assert_array_equal(got, overlay_by_definition(rgb, mask, palette, alpha, bgr))


def test_metrics_histogram_is_cumulative():
    m = Metrics()
    for seconds in (0.004, 0.02, 0.02, 100.0):
        m.observe_request("POST", "/segment", 200, seconds)
    m.observe_request("POST", "/segment", 413, 0.001)
    text = m.render()
    assert 'seg_http_request_duration_seconds_bucket{route="/segment",le="0.005"} 2' in text
    assert 'seg_http_request_duration_seconds_bucket{route="/segment",le="0.025"} 4' in text
    assert 'seg_http_request_duration_seconds_bucket{route="/segment",le="60.0"} 4' in text
    assert 'seg_http_request_duration_seconds_bucket{route="/segment",le="+Inf"} 5' in text
    assert 'seg_http_errors_total{status="413"} 1' in text


def test_close_reason_fits_a_close_frame_in_utf8_bytes():
    from seg_service.api.routes.ws import close_reason

    text = "unknown model " + "é" * 100  # 2 bytes per character
    reason = close_reason(text)
    assert len(reason.encode()) <= 123 and text.startswith(reason)
    assert close_reason("short") == "short"


@pytest.mark.parametrize("kernel,stride,padding", [(2**63 - 1, 1, 2**62), (3, 1, 2**62), (3, 2**40, 1)])
def test_kernel_geometry_is_bounded_before_any_size_is_computed(kernel, stride, padding):
    """`2 * padding <= kernel` overflowed int64 for kernel 2^63-1 and padding 2^62, so the call was
    accepted (issue 19, item 9); every window argument is now range-checked first."""
    from seg_service import kernels

    x = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="must be at most"):
        kernels.maxpool2d(x, kernel, stride, padding)
    w = np.zeros((1, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="must be at most"):
        kernels.conv2d_direct(x, w, None, stride, padding, 1, False)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="the CPU hand-off needs a second CPU this process may use (Linux affinity)",
)
def test_start_up_log_gives_the_cpu_hand_off_with_two_threads_only(caplog):
    """With a second kernel thread the server logs the round trip between two CPUs (what decides
    whether that thread helps); with one thread it measures nothing."""
    import logging

    from seg_service import kernels
    from seg_service.api.app import _configure_kernels
    from seg_service.runtime.threads import set_num_threads

    before = kernels.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="seg_service"):
            _configure_kernels(2)
            assert re.search(r"CPU hand-off between two of this process's CPUs: \d+ ns", caplog.text)
            caplog.clear()
            _configure_kernels(1)
            assert "kernel threads per process: 1" in caplog.text and "CPU hand-off" not in caplog.text
    finally:
        set_num_threads(before)
