"""Per-class statistics and COCO-style run-length encoding of label masks."""

from __future__ import annotations

import numpy as np


def class_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel count per class index (int64 [num_classes])."""
    return np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]


def coco_rle(binary: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a boolean mask: {"size": [h, w], "counts": [...]}.

    As in the COCO annotation format, pixels are read in column-major (Fortran) order and the counts
    alternate runs of 0 and 1, starting with a (possibly empty) run of 0.
    pycocotools.mask.frPyObjects accepts this form directly.
    """
    h, w = binary.shape
    flat = np.asarray(binary, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    # Positions where the value changes, plus both ends, give the run lengths.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    counts = runs.tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}
