"""Post-processing stored with a model: an edge-aware guided filter on the logits and a per-class
decision bias (the model description's optional ``postprocess``; docs/format.md).

A binary network's logits come out at 1/8 of the input and are upsampled bilinearly, so mask edges
are smooth curves that ignore the image's own edges. The colour guided filter (He, Sun and Tang,
"Guided Image Filtering", TPAMI 2013) fits, in every window, the logits as an affine function of
the RGB pixels, which pulls the mask's edges onto the image's edges. Its fast variant (He and Sun,
"Fast Guided Filter", 2015) fits the coefficients on a subsampled image and applies them at full
resolution, so it costs a few milliseconds. The coefficients are fitted by the C++ kernel
``kernels.guided_coefficients`` (``kernels.reference.guided_coefficients`` is its numpy definition);
the rest is numpy plus the bilinear upsampling kernel: no torch, no OpenCV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seg_service import kernels

GUIDED_FILTER_KEYS = {"radius", "eps", "subsample", "clip"}
POSTPROCESS_KEYS = {"guided_filter", "logit_bias"}


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
        a, b = kernels.guided_coefficients(resize_area(guide, low_h, low_w), resize_area(src, low_h, low_w),
                                           max(1, round(radius / subsample)), eps)
        k = src.shape[2]
        # one upsampling call for both (the kernel's cost is mostly per call at these sizes)
        both = upsample_bilinear(np.concatenate([a.reshape(low_h, low_w, k * 3), b], axis=2), h, w)
        a, b = both[..., :k * 3].reshape(h, w, k, 3), both[..., k * 3:]
    else:
        a, b = kernels.guided_coefficients(np.ascontiguousarray(guide, dtype=np.float32),
                                           np.ascontiguousarray(src, dtype=np.float32), radius, eps)
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
