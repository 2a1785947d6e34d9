"""Soft masks from a model's scores: class probabilities and an alpha matte for compositing.

Both come from the scores ``PackedModel.processed_scores`` returns (the logits after the model's
stored post-processing: guided filter and decision bias), so their edges follow the image's edges
through the guided filter; nothing here blurs a hard mask. numpy only (no torch, no OpenCV).

- **probability**: softmax of the scores, summed over the chosen foreground classes; 8-bit
  ``round(255 * p)``.
- **alpha**: the foreground's log-odds ``m = log(p / (1 - p))`` put through a linear ramp,
  ``clip((m + MATTE_RAMP_LOGITS) / (2 * MATTE_RAMP_LOGITS), 0, 1)``: 0 and 255 wherever the model is
  confident, a smooth transition across its decision boundary (``m = 0`` is alpha 0.5, where the
  label mask switches). The person model's guided filter clips its logits, which caps the interior
  probability at about 0.94; the ramp makes those interiors fully opaque, so a blurred or replaced
  background does not show through the person.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seg_service.runtime.ops import upsample_bilinear

# Log-odds at which the alpha matte reaches 0 and 1 (the ramp's half-width).
MATTE_RAMP_LOGITS = 2.0
SOFT_FORMATS = ("alpha", "probability")
# Class names taken as the foreground when a request names none.
DEFAULT_FOREGROUND_NAMES = ("person",)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of f32 [..., C] (stable: the per-pixel maximum is subtracted)."""
    scores = np.asarray(scores, dtype=np.float32)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def foreground_probability(probabilities: np.ndarray, foreground: Sequence[int]) -> np.ndarray:
    """P(foreground) f32 [H, W]: the probabilities f32 [H, W, C] summed over the class indices given."""
    indices = list(foreground)
    if not indices:
        raise ValueError("foreground needs at least one class index")
    if len(indices) == 1:
        return np.ascontiguousarray(probabilities[..., indices[0]])
    return probabilities[..., indices].sum(axis=-1)


def matte_from_probability(p: np.ndarray, ramp: float = MATTE_RAMP_LOGITS) -> np.ndarray:
    """Alpha f32 [H, W] in [0, 1] from P(foreground): a linear ramp over the log-odds (module docstring)."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-7, 1.0 - 1e-7)
    log_odds = np.log(p) - np.log1p(-p)
    return np.clip((log_odds + ramp) / (2.0 * ramp), 0.0, 1.0)


def to_u8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> u8 0-255, rounded."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def soft_mask(probabilities: np.ndarray, foreground: Sequence[int], kind: str,
              out_size: tuple[int, int] | None = None) -> np.ndarray:
    """The 8-bit soft mask u8 [H, W] of ``kind`` ("alpha" or "probability") for the foreground classes.

    ``probabilities``: f32 [h, w, C] at the model's processed size; ``out_size``: (H, W) of the original
    image, reached by bilinear upsampling of the soft values (as ``predict_logits`` upsamples scores).
    """
    if kind not in SOFT_FORMATS:
        raise ValueError(f"kind must be one of {SOFT_FORMATS}, got {kind!r}")
    p = foreground_probability(probabilities, foreground)
    values = matte_from_probability(p) if kind == "alpha" else p
    if out_size is not None and tuple(out_size) != values.shape:
        values = upsample_bilinear(np.ascontiguousarray(values[:, :, None], dtype=np.float32),
                                   out_size[0], out_size[1])[:, :, 0]
    return to_u8(values)


def resolve_foreground(classes: Sequence[str], names: Sequence[str] | None) -> list[int]:
    """Class indices of the foreground: the names given (each must be one of ``classes``), else the
    model's ``person`` class, else class 1 of a two-class model. ValueError when none applies."""
    if names:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"unknown foreground class(es) {', '.join(map(repr, unknown))}; "
                             f"the model has {', '.join(classes)}")
        return sorted({classes.index(n) for n in names})
    for name in DEFAULT_FOREGROUND_NAMES:
        if name in classes:
            return [classes.index(name)]
    if len(classes) == 2:
        return [1]
    raise ValueError(f"name the foreground class(es) (foreground=...): the model has no 'person' class and "
                     f"{len(classes)} classes ({', '.join(classes)})")
