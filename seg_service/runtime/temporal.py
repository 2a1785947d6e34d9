"""Temporal smoothing of a video stream's class scores (numpy only).

A network run frame by frame flickers: camera noise and compression move pixels near a decision
boundary from one class to the other and back. Averaging each pixel's scores over time
removes that, but a plain average makes the mask trail behind anything that moves. So the average
is gated by the frame difference, per pixel: where the picture is still, the new frame gets weight
``min_weight`` (an exponential moving average over about ``2 / min_weight`` frames); where it
changed by more than ``motion_high`` (mean absolute luminance change over a small window, 0-1
scale), the new frame's scores are taken as they are, so a moving edge is never late.
Between ``motion_low`` and ``motion_high`` the weight rises linearly. A scene cut (mean change
over ``scene_cut``), a new frame size or a new class count starts afresh.

One ``TemporalSmoother`` per stream (a WebSocket connection, an uploaded video); it works at the
model's processed resolution, on ``PackedModel.processed_scores``' scores and image. The scores
are the post-processed logits: averaging them (rather than probabilities) keeps a still picture's
result bit for bit what one frame gives (the average of equal values is that value), and the soft
masks are the softmax of the averaged scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ITU-R BT.601 luma weights: the frame difference is taken on brightness.
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class SmootherSettings:
    min_weight: float = 0.3  # weight of the new frame where the picture is still
    motion_low: float = 0.02  # windowed mean |luma change| (0-1) below which a pixel counts as still
    motion_high: float = 0.06  # ... above which it counts as moving (new frame taken as is)
    window: int = 5  # side of the box window the frame difference is averaged over (odd)
    scene_cut: float = 0.25  # mean |luma change| over the whole frame that resets the average


# Up to this window side box_mean adds shifted copies; above it, an integral image.
_SHIFTED_SUMS_MAX_SIZE = 9


def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean of f32 [H, W] over a size x size window centred on each pixel (edges: the window is cut
    to the image). Small windows (the default 5) sum shifted copies of the zero-padded map, rows then
    columns, in float32; larger ones go through an integral image in float64, O(H W) whatever the
    size. (The integral image alone took about 1.8 ms at 240x320 on the webcam path, most of it in
    the cumulative sums and the fancy-indexed corners; the shifted sums take a tenth of that.)"""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape
    r = size // 2
    rows_in = np.arange(h)
    cols_in = np.arange(w)
    counts = (np.minimum(rows_in + r, h - 1) - np.maximum(rows_in - r, 0) + 1)[:, None] * (
        np.minimum(cols_in + r, w - 1) - np.maximum(cols_in - r, 0) + 1
    )[None, :]
    if size <= _SHIFTED_SUMS_MAX_SIZE:
        padded = np.zeros((h + 2 * r, w + 2 * r), dtype=np.float32)
        padded[r : r + h, r : r + w] = x
        column_sums = padded[:h].copy()
        for k in range(1, 2 * r + 1):
            column_sums += padded[k : k + h]
        sums = column_sums[:, :w].copy()
        for k in range(1, 2 * r + 1):
            sums += column_sums[:, k : k + w]
        return sums / counts.astype(np.float32)
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    np.cumsum(np.cumsum(x, axis=0, dtype=np.float64), axis=1, out=integral[1:, 1:])
    top = np.clip(rows_in - r, 0, h)
    bottom = np.clip(rows_in + r + 1, 0, h)
    left = np.clip(cols_in - r, 0, w)
    right = np.clip(cols_in + r + 1, 0, w)
    lower, upper = integral.take(bottom, axis=0), integral.take(top, axis=0)
    sums64 = (
        lower.take(right, axis=1)
        - upper.take(right, axis=1)
        - lower.take(left, axis=1)
        + upper.take(left, axis=1)
    )
    return (sums64 / counts).astype(np.float32)


class TemporalSmoother:
    """Per-stream, motion-gated exponential average of class scores (module docstring)."""

    def __init__(self, settings: SmootherSettings | None = None) -> None:
        self.settings = settings or SmootherSettings()
        if not 0.0 < self.settings.min_weight <= 1.0:
            raise ValueError(f"min_weight must be in (0, 1], got {self.settings.min_weight}")
        if not 0.0 <= self.settings.motion_low < self.settings.motion_high:
            raise ValueError("need 0 <= motion_low < motion_high")
        self._scores: np.ndarray | None = None
        self._luma: np.ndarray | None = None
        self.frames = 0  # frames seen since the last reset
        self.resets = 0  # starts afresh after the first (size, classes, scene cut)

    def reset(self) -> None:
        """Forget the stream's history (the next frame is taken as it is)."""
        self._scores = None
        self._luma = None
        self.frames = 0

    def new_frame_weight(self, luma: np.ndarray) -> np.ndarray | None:
        """Per-pixel weight f32 [h, w] of a frame with luminance ``luma`` against the history, or None
        when the history does not apply (none yet, or a scene cut)."""
        if self._luma is None or self._luma.shape != luma.shape:
            return None
        s = self.settings
        change = np.abs(luma - self._luma)
        if float(change.mean()) > s.scene_cut:
            return None
        motion = box_mean(change, s.window)
        ramp = np.clip((motion - s.motion_low) / (s.motion_high - s.motion_low), 0.0, 1.0)
        return (s.min_weight + (1.0 - s.min_weight) * ramp).astype(np.float32)

    def update(self, scores: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Smoothed scores f32 [h, w, C] for this frame's ``scores`` f32 [h, w, C] and its picture
        ``image`` f32 [h, w, 3] in [0, 1] (the model's resized input)."""
        scores = np.asarray(scores, dtype=np.float32)
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != scores.shape[:2]:
            raise ValueError(f"image {image.shape} does not match scores {scores.shape}")
        luma = image @ _LUMA
        weight = None
        if self._scores is not None and self._scores.shape == scores.shape:
            weight = self.new_frame_weight(luma)
        if weight is None:
            if self._scores is not None:
                self.resets += 1
                self.frames = 0
            smoothed = scores.copy()
        else:
            # history + weight * (scores - history), in place; the weight repeated per class (numpy
            # broadcasts a trailing axis of 2 classes slowly: 0.44 against 0.29 ms at 240x320)
            smoothed = scores - self._scores
            smoothed *= np.repeat(weight[:, :, None], scores.shape[2], axis=2)
            smoothed += self._scores
        self._scores = smoothed
        self._luma = luma
        self.frames += 1
        return smoothed
