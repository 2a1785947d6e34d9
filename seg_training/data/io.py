"""Image and label-mask reading with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; grayscale and RGBA files are converted."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise InputError(f"image not found: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"unreadable image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Label indices uint8 [H, W] from an 8-bit grayscale or palette PNG (VOC masks are palette PNGs).

    Read with PIL, not OpenCV: OpenCV expands palette images to colours, losing the indices.
    """
    if not Path(path).is_file():
        raise InputError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise InputError(
                    f"mask {path} has mode {im.mode}; expected 8-bit label indices (grayscale or palette PNG)"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"unreadable mask: {path} ({exc.__class__.__name__})") from None
