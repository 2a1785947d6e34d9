"""The model description's optional ``postprocess`` object (format version 2, docs/format.md): its
keys and their validation. The runtime applies it (``seg_service.runtime.refine``); the exporter and
``train-seg tune-postprocess`` write it."""

from __future__ import annotations

import math
from typing import Any

GUIDED_FILTER_KEYS = frozenset({"radius", "eps", "subsample", "clip"})
POSTPROCESS_KEYS = frozenset({"guided_filter", "logit_bias"})


def validate_postprocess(spec: Any, num_classes: int, source: str = "model") -> None:
    """Check a model description's ``postprocess`` object; raises ValueError naming the problem."""
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: 'postprocess' must be a JSON object")
    unknown = sorted(set(spec) - POSTPROCESS_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown postprocess keys {unknown} (known: {sorted(POSTPROCESS_KEYS)})")
    bias = spec.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, list) and len(bias) == num_classes and all(_is_number(v) for v in bias)
    ):
        raise ValueError(f"{source}: postprocess 'logit_bias' must be a list of {num_classes} numbers")
    gf = spec.get("guided_filter")
    if gf is None:
        return
    if not isinstance(gf, dict) or set(gf) != GUIDED_FILTER_KEYS:
        raise ValueError(
            f"{source}: postprocess 'guided_filter' must hold exactly {sorted(GUIDED_FILTER_KEYS)}"
        )
    for key in ("radius", "subsample"):
        if not (isinstance(gf[key], int) and not isinstance(gf[key], bool) and 1 <= gf[key] <= 256):
            raise ValueError(
                f"{source}: guided_filter '{key}' must be an integer from 1 to 256, got {gf[key]!r}"
            )
    for key in ("eps", "clip"):
        if not (_is_number(gf[key]) and gf[key] > 0):
            raise ValueError(f"{source}: guided_filter '{key}' must be a positive number, got {gf[key]!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
