"""One frame of a stream (WebSocket or uploaded video) or one still image -> the mask the client asked
for: the label mask, or an 8-bit soft mask (``alpha`` matte or class ``probability``), optionally
smoothed over time with the stream's own ``TemporalSmoother``.

A still image with ``format=png`` keeps going through ``PackedModel.predict`` (unchanged results);
everything else starts from ``PackedModel.processed_scores`` at the model's resolution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from seg_service.runtime import PackedModel
from seg_service.runtime.softmask import resolve_foreground, soft_mask
from seg_service.runtime.temporal import TemporalSmoother

MaskKind = Literal["labels", "alpha", "probability"]
# The API's format names for the masks: "png" is the label mask.
MASK_FORMATS: dict[str, MaskKind] = {"png": "labels", "alpha": "alpha", "probability": "probability"}
# Video and WebSocket frames run one pass at the model's size, whatever test-time augmentation the
# model stores for still images: frame rate first (a client can still ask for flip).
STREAM_SCALES: tuple[float, ...] = (1.0,)
FOREGROUND_DESCRIPTION = (
    "format=alpha/probability: the foreground class name(s), comma-separated (their probabilities add "
    "up). Default: the model's 'person' class, else class 1 of a two-class model; required otherwise."
)


def parse_foreground(text: str | list[str] | None) -> list[str] | None:
    """``foreground`` as given in a query (``"a,b"``) or a WebSocket settings message (a string or a
    list of strings) -> class names, None when not given. ValueError for anything else."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else text
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise ValueError("foreground must be a class name, a comma-separated string or a list of names")
    names = [p.strip() for p in parts if p.strip()]
    return names or None


class StreamState:
    """Per-stream inference state: the temporal smoother (when on), reset whenever the model or its
    settings change, since scores of different models or passes must not be averaged together."""

    def __init__(self, smooth: bool = True) -> None:
        self.smooth = smooth
        self.smoother = TemporalSmoother()
        self._key: tuple[Any, ...] | None = None

    def set_smooth(self, smooth: bool) -> None:
        if smooth != self.smooth:
            self.smooth = smooth
            self.smoother.reset()

    def scores(
        self,
        model: PackedModel,
        rgb: np.ndarray,
        flip: bool | None,
        refine: bool,
        scales: Sequence[float] | None = STREAM_SCALES,
    ) -> np.ndarray:
        """This frame's scores at the processed size, smoothed over the stream when ``smooth`` is on."""
        scores, image = model.processed_scores(rgb, flip=flip, refine=refine, scales=scales)
        if not self.smooth:
            return scores
        key = (model.checksum, flip, refine, None if scales is None else tuple(scales))
        if key != self._key:
            self.smoother.reset()
            self._key = key
        return self.smoother.update(scores, image)


def frame_mask(
    model: PackedModel,
    rgb: np.ndarray,
    flip: bool | None,
    refine: bool,
    kind: MaskKind,
    foreground: list[str] | None = None,
    stream: StreamState | None = None,
    scales: Sequence[float] | None = STREAM_SCALES,
) -> tuple[np.ndarray, float]:
    """(u8 [H, W] mask at the image's size, inference milliseconds). ``kind``: "labels" (class index
    per pixel), "alpha" or "probability" (0-255, softmask.py) of the ``foreground`` classes;
    ``stream``: the stream's state (None for a still image: no smoothing). ``flip`` and ``scales``:
    the test-time augmentation (None: the model's own); frames run at one scale unless told
    otherwise. ValueError for a bad ``foreground``, before any inference."""
    indices = resolve_foreground(model.classes, foreground) if kind != "labels" else []
    start = time.perf_counter()
    if kind == "labels" and (stream is None or not stream.smooth):
        mask = model.predict(rgb, flip=flip, refine=refine, scales=scales)
    else:
        scores = (
            stream.scores(model, rgb, flip, refine, scales)
            if stream is not None
            else model.processed_scores(rgb, flip=flip, refine=refine, scales=scales)[0]
        )
        if kind == "labels":
            mask = model.labels_from_scores(scores, rgb.shape[0], rgb.shape[1])
        else:
            mask = soft_mask(scores, indices, kind, rgb.shape[:2])
    return mask, (time.perf_counter() - start) * 1e3
