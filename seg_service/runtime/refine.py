"""Post-processing stored with a model: an edge-aware guided filter on the logits and a per-class
decision bias (the model description's optional ``postprocess``; docs/format.md).

A binary network's logits come out at 1/8 of the input and are upsampled bilinearly, so mask edges
are smooth curves that ignore the image's own edges. The colour guided filter (He, Sun and Tang,
"Guided Image Filtering", TPAMI 2013) fits, in every window, the logits as an affine function of
the RGB pixels, which pulls the mask's edges onto the image's edges. Its fast variant (He and Sun,
"Fast Guided Filter", 2015) fits the coefficients on a subsampled image and applies them at full
resolution, so it costs a few milliseconds. Everything here is numpy plus the runtime's bilinear
upsampling kernel: no torch, no OpenCV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GUIDED_FILTER_KEYS = {"radius", "eps", "subsample", "clip"}
POSTPROCESS_KEYS = {"guided_filter", "logit_bias"}


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of x [H, W, ...] over the (2r+1) x (2r+1) window around each pixel, clipped to the image
    (windows at the border average fewer pixels, as in the guided filter paper's reference code).

    Sums 2r+1 shifted slices per axis: the filter runs on the subsampled image, where r is a few
    pixels, and this beats numpy's cumsum (plus gathers) several times over at that size.
    """
    out = np.asarray(x, dtype=np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        total = np.zeros_like(out)
        window = [slice(None)] * out.ndim
        for shift in range(2 * radius + 1):
            window[axis] = slice(shift, shift + n)
            total += padded[tuple(window)]
        idx = np.arange(n)
        count = (np.minimum(idx + radius + 1, n) - np.maximum(idx - radius, 0)).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = n
        out = total / count.reshape(shape)
    return out


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int,
                        eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Colour guided filter coefficients, window-averaged: (a [H, W, K, 3], b [H, W, K]) such that the
    filtered output of channel k is a[..., k, :] . guide + b[..., k].

    guide: f32 [H, W, 3] in [0, 1]; src: f32 [H, W, K]; eps regularises the per-window 3x3 colour
    covariance (larger: smoother output, weaker edges).
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    # Separate box_mean calls on narrow arrays: stacking every product into one wide array was
    # slower here (it no longer fits the core's L2 cache at 128 x 128).
    mean_i = box_mean(guide, radius)  # [H, W, 3]
    mean_p = box_mean(src, radius)  # [H, W, K]
    # covariance of guide and source per window: [H, W, K, 3]
    cov_ip = box_mean(src[..., :, None] * guide[..., None, :], radius) - mean_p[..., :, None] * mean_i[..., None, :]
    # colour covariance per window, symmetric 3x3, plus eps on the diagonal
    var = box_mean(guide[..., :, None] * guide[..., None, :], radius) - mean_i[..., :, None] * mean_i[..., None, :]
    var = var + np.float32(eps) * np.eye(3, dtype=np.float32)
    a = np.einsum("hwkj,hwji->hwki", cov_ip, _inverse_sym3(var))
    b = mean_p - np.einsum("hwkc,hwc->hwk", a, mean_i)
    return box_mean(a, radius), box_mean(b, radius)


def _inverse_sym3(m: np.ndarray) -> np.ndarray:
    """Inverse of symmetric positive definite 3x3 matrices [..., 3, 3] by the adjugate (a batched
    LAPACK call costs more than the rest of the filter on a few thousand tiny matrices)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]
    adj = np.empty_like(m)
    adj[..., 0, 0] = d * f - e * e
    adj[..., 0, 1] = adj[..., 1, 0] = c * e - b * f
    adj[..., 0, 2] = adj[..., 2, 0] = b * e - c * d
    adj[..., 1, 1] = a * f - c * c
    adj[..., 1, 2] = adj[..., 2, 1] = b * c - a * e
    adj[..., 2, 2] = a * d - b * b
    det = a * adj[..., 0, 0] + b * adj[..., 0, 1] + c * adj[..., 0, 2]
    return adj / det[..., None, None]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """Filter src f32 [H, W, K] guided by the colour image guide f32 [H, W, 3] (values in [0, 1]).

    ``subsample`` > 1 is the fast guided filter: coefficients are fitted on both images area-downscaled
    by that factor (radius scaled with them), upsampled bilinearly and applied to the full-size guide.
    """
    from seg_service.runtime.model import resize_area
    from seg_service.runtime.ops import upsample_bilinear

    h, w = src.shape[:2]
    if subsample > 1:
        low_h, low_w = max(1, -(-h // subsample)), max(1, -(-w // subsample))
        a, b = guided_coefficients(resize_area(guide, low_h, low_w), resize_area(src, low_h, low_w),
                                   max(1, round(radius / subsample)), eps)
        k = src.shape[2]
        # one upsampling call for both (the kernel's cost is mostly per call at these sizes)
        both = upsample_bilinear(np.concatenate([a.reshape(low_h, low_w, k * 3), b], axis=2), h, w)
        a, b = both[..., :k * 3].reshape(h, w, k, 3), both[..., k * 3:]
    else:
        a, b = guided_coefficients(guide, src, radius, eps)
    return np.einsum("hwkc,hwc->hwk", a, np.asarray(guide, dtype=np.float32)) + b


def apply_postprocess(logits: np.ndarray, image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The model's post-processing: logits f32 [H, W, C] -> scores f32 [H, W, C] whose argmax is the mask.

    image: the RGB image the logits belong to, f32 [H, W, 3] in [0, 1] (after the input resize).
    With ``guided_filter``, the logits are centred per pixel (minus their mean over classes), clipped to
    [-clip, clip] so confident interiors do not drown the edges, and filtered; then ``logit_bias`` is added.
    """
    scores = np.asarray(logits, dtype=np.float32)
    gf = spec.get("guided_filter")
    if gf:
        if scores.shape[2] == 2:
            # two classes: the centred logits are (-d, d) and the filter is linear, so filter d alone
            half_diff = (scores[..., 1:] - scores[..., :1]) * np.float32(0.5)
            one = guided_filter(image, np.clip(half_diff, -gf["clip"], gf["clip"]), gf["radius"], gf["eps"],
                                gf["subsample"])
            scores = np.empty(scores.shape, dtype=np.float32)
            np.negative(one, out=scores[..., :1])
            scores[..., 1:] = one
        else:
            centred = np.clip(scores - scores.mean(axis=2, keepdims=True), -gf["clip"], gf["clip"])
            scores = guided_filter(image, centred, gf["radius"], gf["eps"], gf["subsample"])
    bias = spec.get("logit_bias")
    if bias is not None:
        scores = scores + np.asarray(bias, dtype=np.float32)
    return np.ascontiguousarray(scores, dtype=np.float32)


def validate_postprocess(spec: Any, num_classes: int, source: str = "model") -> None:
    """Check a model description's ``postprocess`` object; raises ValueError naming the problem."""
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: 'postprocess' must be a JSON object")
    unknown = sorted(set(spec) - POSTPROCESS_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown postprocess keys {unknown} (known: {sorted(POSTPROCESS_KEYS)})")
    bias = spec.get("logit_bias")
    if bias is not None and not (isinstance(bias, list) and len(bias) == num_classes
                                 and all(_is_number(v) for v in bias)):
        raise ValueError(f"{source}: postprocess 'logit_bias' must be a list of {num_classes} numbers")
    gf = spec.get("guided_filter")
    if gf is None:
        return
    if not isinstance(gf, dict) or set(gf) != GUIDED_FILTER_KEYS:
        raise ValueError(f"{source}: postprocess 'guided_filter' must hold exactly {sorted(GUIDED_FILTER_KEYS)}")
    for key in ("radius", "subsample"):
        if not (isinstance(gf[key], int) and not isinstance(gf[key], bool) and 1 <= gf[key] <= 256):
            raise ValueError(f"{source}: guided_filter '{key}' must be an integer from 1 to 256, got {gf[key]!r}")
    for key in ("eps", "clip"):
        if not (_is_number(gf[key]) and gf[key] > 0):
            raise ValueError(f"{source}: guided_filter '{key}' must be a positive number, got {gf[key]!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
