"""The model's stored post-processing (seg_service.runtime.refine): box means, the colour guided
filter against a per-window least-squares reference, the decision bias, format validation, and
PackedModel.predict applying it (or not, with refine=False)."""

from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service import kernels
from seg_service.format import validate_postprocess
from seg_service.kernels import reference
from seg_service.kernels.reference import _inverse_sym3, box_mean, guided_coefficients
from seg_service.runtime import apply_postprocess, load_model, resize_area
from seg_service.runtime.ops import upsample_bilinear
from seg_service.runtime.refine import guided_filter

from .test_format import tiny_model

DATA = Path(__file__).resolve().parents[1] / "data"
GF = {"radius": 4, "eps": 1e-3, "subsample": 2, "clip": 2.0}


def brute_box_mean(x: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros(x.shape, dtype=np.float64)
    h, w = x.shape[:2]
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean(axis=(0, 1))
    return out


@pytest.mark.parametrize("shape", [(9, 13), (12, 7, 3), (6, 5, 2, 3)])
@pytest.mark.parametrize("radius", [1, 2, 5, 20])
def test_box_mean_matches_the_window_average(shape, radius):
    x = np.random.default_rng(radius).random(shape, dtype=np.float32)
    np.testing.assert_allclose(box_mean(x, radius), brute_box_mean(x, radius), rtol=1e-5, atol=1e-6)


def test_inverse_of_symmetric_3x3():
    m = np.random.default_rng(0).standard_normal((40, 3, 3))
    m = m @ np.swapaxes(m, 1, 2) + 0.01 * np.eye(3)
    np.testing.assert_allclose(_inverse_sym3(m) @ m, np.broadcast_to(np.eye(3), m.shape), atol=1e-8)


def reference_guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s definition computed literally: per window, the ridge regression of src on the
    three colours (least squares with eps on the slopes); each pixel averages the fits of the
    windows that contain it."""
    h, w = src.shape[:2]
    a = np.zeros((h, w, src.shape[2], 3))
    b = np.zeros((h, w, src.shape[2]))
    for i in range(h):
        for j in range(w):
            g = guide[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].reshape(-1, 3).astype(np.float64)
            p = (
                src[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
                .reshape(len(g), -1)
                .astype(np.float64)
            )
            gc, pc = g - g.mean(0), p - p.mean(0)
            coef = np.linalg.solve(gc.T @ gc / len(g) + eps * np.eye(3), gc.T @ pc / len(g))  # [3, K]
            a[i, j] = coef.T
            b[i, j] = p.mean(0) - g.mean(0) @ coef
    return np.einsum("hwkc,hwc->hwk", brute_box_mean(a, r), guide) + brute_box_mean(b, r)


def test_guided_filter_matches_the_least_squares_definition():
    rng = np.random.default_rng(1)
    guide = rng.random((14, 11, 3), dtype=np.float32)
    src = rng.standard_normal((14, 11, 2)).astype(np.float32)
    np.testing.assert_allclose(
        guided_filter(guide, src, 2, 1e-2), reference_guided_filter(guide, src, 2, 1e-2), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("h, w, k, radius", [(128, 85, 1, 3), (20, 17, 3, 2), (5, 4, 2, 6), (1, 1, 1, 1)])
def test_kernel_coefficients_match_the_numpy_reference(h, w, k, radius):
    rng = np.random.default_rng(h * w + k)
    guide = rng.random((h, w, 3), dtype=np.float32)
    src = (rng.standard_normal((h, w, k)) * 2).astype(np.float32)
    for eps in (1e-3, 1e-1):
        a, b = kernels.guided_coefficients(guide, src, radius, eps)
        ref_a, ref_b = guided_coefficients(guide, src, radius, eps)
        assert a.shape == (h, w, k, 3) and b.shape == (h, w, k)
        np.testing.assert_allclose(a, ref_a, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(b, ref_b, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    "low, size, k, sources, signs",
    [
        ((10, 7), (40, 27), 1, [0, 0], [-1.0, 1.0]),  # the two-class shortcut
        ((5, 5), (5, 5), 3, [0, 1, 2], [1.0, 1.0, 1.0]),  # no upsampling (subsample 1)
        ((1, 1), (9, 4), 2, [1], [1.0]),
        ((13, 9), (50, 33), 2, [1, 0, 1], [1.0, -1.0, 2.0]),
    ],
)
def test_apply_kernel_equals_its_numpy_definition(low, size, k, sources, signs):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((*low, k, 3)).astype(np.float32)
    b = rng.standard_normal((*low, k)).astype(np.float32)
    guide = rng.random((*size, 3), dtype=np.float32)
    bias = [float(v) for v in rng.standard_normal(len(sources)).astype(np.float32)]
    out = kernels.guided_apply(a, b, guide, sources, signs, bias)
    assert out.shape == (*size, len(sources)) and out.dtype == np.float32
    np.testing.assert_array_equal(out, reference.guided_apply(a, b, guide, sources, signs, bias))
    with pytest.raises(ValueError, match="sources must index"):
        kernels.guided_apply(a, b, guide, [k], [1.0], [0.0])
    with pytest.raises(ValueError, match="one entry per output channel"):
        kernels.guided_apply(a, b, guide, [0], [1.0, 1.0], [0.0])


def test_kernel_coefficients_reject_bad_input():
    guide = np.zeros((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match="guide's H and W"):
        kernels.guided_coefficients(guide, np.zeros((4, 6, 1), np.float32), 1, 1e-3)
    with pytest.raises(ValueError, match="radius must be >= 1"):
        kernels.guided_coefficients(guide, np.zeros((4, 5, 1), np.float32), 0, 1e-3)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        kernels.guided_coefficients(np.zeros((4, 5, 2), np.float32), np.zeros((4, 5, 1), np.float32), 1, 1e-3)


def test_fast_guided_filter_fits_on_the_subsampled_images():
    rng = np.random.default_rng(2)
    guide = rng.random((24, 20, 3), dtype=np.float32)
    src = rng.standard_normal((24, 20, 1)).astype(np.float32)
    a, b = kernels.guided_coefficients(resize_area(guide, 6, 5), resize_area(src, 6, 5), 1, 1e-2)
    expected = np.einsum(
        "hwkc,hwc->hwk", upsample_bilinear(a.reshape(6, 5, 3), 24, 20).reshape(24, 20, 1, 3), guide
    ) + upsample_bilinear(b, 24, 20)
    np.testing.assert_allclose(
        guided_filter(guide, src, 4, 1e-2, subsample=4), expected, rtol=1e-6, atol=1e-6
    )


def test_an_affine_function_of_the_guide_passes_through_unchanged():
    guide = np.random.default_rng(3).random((16, 16, 3), dtype=np.float32)
    src = (2.0 * guide[..., :1] - guide[..., 1:2] + 0.5 * guide[..., 2:] + 0.3).astype(np.float32)
    np.testing.assert_allclose(guided_filter(guide, src, 3, 1e-7), src, atol=2e-3)
    flat = np.full((16, 16, 1), 1.5, dtype=np.float32)
    np.testing.assert_allclose(guided_filter(guide, flat, 3, 1e-3, subsample=2), flat, atol=1e-4)


def test_guided_filter_moves_a_blurred_edge_onto_the_image_edge():
    """A person-like box in the image and logits upsampled from 1/8 (a blurred, shifted edge): the
    filtered mask follows the image's edge far more closely than the plain argmax."""
    h, w = 96, 80
    truth = np.zeros((h, w), dtype=bool)
    truth[20:80, 25:55] = True
    guide = np.where(truth[..., None], [0.8, 0.3, 0.3], [0.2, 0.5, 0.6]).astype(np.float32)
    coarse = np.where(truth, 3.0, -3.0).astype(np.float32)[3::8, 5::8]  # 1/8, off-centre samples
    logits = upsample_bilinear(coarse[..., None], h, w)
    logits = np.concatenate([-logits, logits], axis=2)
    spec = {"guided_filter": {"radius": 8, "eps": 1e-3, "subsample": 4, "clip": 2.0}}
    plain = logits.argmax(axis=2) == 1
    refined = apply_postprocess(logits, guide, spec).argmax(axis=2) == 1
    assert (plain != truth).sum() > 100
    assert (refined != truth).sum() < (plain != truth).sum() / 4


def test_two_class_shortcut_equals_the_general_path():
    rng = np.random.default_rng(4)
    guide = rng.random((20, 18, 3), dtype=np.float32)
    logits = rng.standard_normal((20, 18, 2)).astype(np.float32) * 3 + 1.0
    spec = {"guided_filter": dict(GF), "logit_bias": [0.25, -0.5]}
    centred = np.clip(logits - logits.mean(axis=2, keepdims=True), -2.0, 2.0)
    general = guided_filter(guide, centred, 4, 1e-3, 2) + np.array([0.25, -0.5], dtype=np.float32)
    np.testing.assert_allclose(apply_postprocess(logits, guide, spec), general, rtol=1e-5, atol=1e-5)


def test_bias_alone_shifts_the_decision():
    logits = np.zeros((4, 5, 3), dtype=np.float32)
    logits[..., 1] = 0.2
    out = apply_postprocess(logits, np.zeros((4, 5, 3), dtype=np.float32), {"logit_bias": [0.0, -0.5, 0.0]})
    assert (out.argmax(axis=2) == 0).all() and (logits.argmax(axis=2) == 1).all()
    assert np.array_equal(apply_postprocess(logits, np.zeros((4, 5, 3), np.float32), {}), logits)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "must be a JSON object"),
        ({"sharpen": 1}, "unknown postprocess keys"),
        ({"logit_bias": [0.0]}, "list of 2 numbers"),
        ({"logit_bias": [0.0, "x"]}, "list of 2 numbers"),
        ({"guided_filter": {"radius": 4, "eps": 1e-3, "clip": 2.0}}, "must hold exactly"),
        ({"guided_filter": dict(GF, radius=0)}, "'radius' must be an integer"),
        ({"guided_filter": dict(GF, subsample=1.5)}, "'subsample' must be an integer"),
        ({"guided_filter": dict(GF, eps=0)}, "'eps' must be a positive number"),
        ({"guided_filter": dict(GF, clip=float("inf"))}, "'clip' must be a positive number"),
    ],
)
def test_bad_postprocess_specs_are_refused(spec, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        validate_postprocess(spec, 2)
    model, graph, tensors = tiny_model()
    with pytest.raises(gnpk.ModelFormatError, match=message):
        gnpk.write_model(tmp_path / "bad.gnpk", dict(model, postprocess=spec), graph, tensors)


def test_predict_applies_the_stored_postprocess(tmp_path):
    from PIL import Image

    model, graph, tensors = tiny_model()
    spec = {"guided_filter": dict(GF), "logit_bias": [0.0, 0.1]}
    gnpk.write_model(tmp_path / "plain.gnpk", model, graph, tensors)
    gnpk.write_model(tmp_path / "refined.gnpk", dict(model, postprocess=spec), graph, tensors)
    plain, refined = load_model(tmp_path / "plain.gnpk"), load_model(tmp_path / "refined.gnpk")
    assert plain.postprocess == {} and refined.postprocess == spec
    rgb = np.asarray(Image.open(DATA / "ccp/images/0001.jpg").convert("RGB"))  # larger than max_side: resized
    logits, guide = refined.processed_logits(rgb)
    assert guide.shape == logits.shape[:2] + (3,) and 0.0 <= guide.min() and guide.max() <= 1.0
    x, (h, w) = refined.preprocess(rgb)
    np.testing.assert_allclose(guide, resize_area(rgb, h, w) / 255.0, atol=1e-5)
    expected = apply_postprocess(logits, guide, spec).argmax(axis=2)
    mask = refined.predict(rgb)
    assert mask.shape == rgb.shape[:2]
    small = refined.predict(rgb[:40, :50])  # under max_side: no resize, the mask is the argmax itself
    np.testing.assert_array_equal(
        small, apply_postprocess(*refined.processed_logits(rgb[:40, :50]), spec).argmax(axis=2)
    )
    np.testing.assert_array_equal(refined.predict(rgb, refine=False), plain.predict(rgb))
    assert not np.array_equal(mask, plain.predict(rgb))
    assert expected.shape == (h, w)
    np.testing.assert_array_equal(refined.predict_logits(rgb[:40, :50]).argmax(axis=2), small)
