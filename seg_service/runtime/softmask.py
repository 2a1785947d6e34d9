"""Soft masks from a model's scores: class probabilities and an alpha matte for compositing.

Both come from the scores ``PackedModel.processed_scores`` returns (the logits after the model's
stored post-processing: guided filter and decision bias), so their edges follow the image's edges
through the guided filter; nothing here blurs a hard mask. numpy only (no torch, no OpenCV).

- **probability**: softmax of the scores, summed over the chosen foreground classes; 8-bit
  ``round(255 * p)``.
- **alpha**: the score margin ``m`` = best foreground class score - best other class score (for a
  two-class model, the log-odds of the foreground) put through a linear ramp,
  ``clip((m + MATTE_RAMP_LOGITS) / (2 * MATTE_RAMP_LOGITS), 0, 1)``: 0 and 255 wherever the model is
  confident, a smooth transition across its decision boundary (``m = 0`` is alpha 0.5, exactly where
  the label mask switches between a foreground class and another). The person model's guided filter
  clips its logits, which caps the interior probability at about 0.94, and a multi-class model is
  rarely sure of small classes (the street model's pedestrians: median margin 0.9); the ramp makes
  such interiors opaque, so a blurred or replaced background does not show through the person.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seg_service.runtime.ops import upsample_bilinear

# Score margin at which the alpha matte reaches 0 and 1 (the ramp's half-width).
MATTE_RAMP_LOGITS = 1.0
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


def matte_from_scores(
    scores: np.ndarray, foreground: Sequence[int], ramp: float = MATTE_RAMP_LOGITS
) -> np.ndarray:
    """Alpha f32 [H, W] in [0, 1] from scores f32 [H, W, C]: a linear ramp over the margin between the
    best foreground class and the best other class (module docstring)."""
    indices = sorted(set(foreground))
    others = [c for c in range(scores.shape[-1]) if c not in indices]
    if not indices or not others:
        raise ValueError("the foreground must hold at least one class and leave at least one out")
    best_in = scores[..., indices].max(axis=-1) if len(indices) > 1 else scores[..., indices[0]]
    best_out = scores[..., others].max(axis=-1) if len(others) > 1 else scores[..., others[0]]
    return np.clip((best_in - best_out + ramp) / np.float32(2.0 * ramp), 0.0, 1.0)


def to_u8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> u8 0-255, rounded."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def soft_mask(
    scores: np.ndarray, foreground: Sequence[int], kind: str, out_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The 8-bit soft mask u8 [H, W] of ``kind`` ("alpha" or "probability") for the foreground classes.

    ``scores``: f32 [h, w, C] at the model's processed size (``PackedModel.processed_scores``);
    ``out_size``: (H, W) of the original image, reached by bilinear upsampling of the soft values (as
    ``predict_logits`` upsamples scores).
    """
    if kind not in SOFT_FORMATS:
        raise ValueError(f"kind must be one of {SOFT_FORMATS}, got {kind!r}")
    if kind == "alpha":
        values = matte_from_scores(scores, foreground)
    else:
        values = foreground_probability(softmax(scores), foreground)
    if out_size is not None and tuple(out_size) != values.shape:
        values = upsample_bilinear(
            np.ascontiguousarray(values[:, :, None], dtype=np.float32), out_size[0], out_size[1]
        )[:, :, 0]
    return to_u8(values)


def resolve_foreground(classes: Sequence[str], names: Sequence[str] | None) -> list[int]:
    """Class indices of the foreground: the names given (each must be one of ``classes``), else the
    model's ``person`` class, else class 1 of a two-class model. ValueError when none applies."""
    if names:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(
                f"unknown foreground class(es) {', '.join(map(repr, unknown))}; "
                f"the model has {', '.join(classes)}"
            )
        return sorted({classes.index(n) for n in names})
    for name in DEFAULT_FOREGROUND_NAMES:
        if name in classes:
            return [classes.index(name)]
    if len(classes) == 2:
        return [1]
    raise ValueError(
        f"name the foreground class(es) (foreground=...): the model has no 'person' class and "
        f"{len(classes)} classes ({', '.join(classes)})"
    )
