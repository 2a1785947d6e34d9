"""Post-processing stored with a model: an edge-aware guided filter on the logits and a per-class
decision bias (the model description's optional ``postprocess``; docs/format.md). Its spec and
validation are the format's (``seg_service.format.postprocess``); this module applies it.

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
from seg_service.runtime.resize import resize_area


def guided_filter(
    guide: np.ndarray,
    src: np.ndarray,
    radius: int,
    eps: float,
    subsample: int = 1,
    outputs: tuple[list[int], list[float], list[float]] | None = None,
) -> np.ndarray:
    """Filter src f32 [H, W, K] guided by the colour image guide f32 [H, W, 3] (values in [0, 1]).

    ``subsample`` > 1 is the fast guided filter: coefficients are fitted on both images area-downscaled
    by that factor (radius scaled with them), upsampled bilinearly and applied to the full-size guide.
    ``outputs`` = (sources, signs, bias) maps the K filtered channels to the result's channels,
    ``signs[c] * filtered[..., sources[c]] + bias[c]``, in the same pass (default: the K channels as
    they are).
    """
    guide = np.ascontiguousarray(guide, dtype=np.float32)
    src = np.ascontiguousarray(src, dtype=np.float32)
    h, w, k = src.shape
    if subsample > 1:
        low_h, low_w = max(1, -(-h // subsample)), max(1, -(-w // subsample))
        a, b = kernels.guided_coefficients(
            resize_area(guide, low_h, low_w),
            resize_area(src, low_h, low_w),
            max(1, round(radius / subsample)),
            eps,
        )
    else:
        a, b = kernels.guided_coefficients(guide, src, radius, eps)
    sources, signs, bias = outputs or (list(range(k)), [1.0] * k, [0.0] * k)
    # upsampling, a . guide + b and the output mapping in one pass over the full-size image
    return kernels.guided_apply(
        a, b, guide, list(sources), [float(v) for v in signs], [float(v) for v in bias]
    )


def apply_postprocess(logits: np.ndarray, image: np.ndarray | None, spec: dict[str, Any]) -> np.ndarray:
    """The model's post-processing: logits f32 [H, W, C] -> scores f32 [H, W, C] whose argmax is the mask.

    image: the RGB image the logits belong to, f32 [H, W, 3] in [0, 1] (after the input resize); only
    a ``guided_filter`` reads it (None will do without one).
    With ``guided_filter``, the logits are centred per pixel (minus their mean over classes), clipped to
    [-clip, clip] so confident interiors do not drown the edges, and filtered; then ``logit_bias`` is added.
    """
    scores = np.asarray(logits, dtype=np.float32)
    classes = scores.shape[2]
    gf = spec.get("guided_filter")
    bias = [float(v) for v in spec.get("logit_bias") or [0.0] * classes]
    if not gf:
        return (
            np.ascontiguousarray(scores + np.asarray(bias, dtype=np.float32))
            if "logit_bias" in spec
            else scores
        )
    if image is None:
        raise ValueError("the guided filter needs the image the logits belong to")
    if classes == 2:
        # two classes: the centred logits are (-d, d) and the filter is linear, so filter d alone and
        # write (-filtered + bias0, filtered + bias1); d clipped comes from one kernel pass
        return guided_filter(
            image,
            kernels.half_logit_difference(np.ascontiguousarray(scores), gf["clip"]),
            gf["radius"],
            gf["eps"],
            gf["subsample"],
            outputs=([0, 0], [-1.0, 1.0], bias),
        )
    centred = np.clip(scores - scores.mean(axis=2, keepdims=True), -gf["clip"], gf["clip"])
    return guided_filter(
        image,
        centred,
        gf["radius"],
        gf["eps"],
        gf["subsample"],
        outputs=(list(range(classes)), [1.0] * classes, bias),
    )
