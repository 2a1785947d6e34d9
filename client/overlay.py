"""Drawing: label mask -> colours, blended overlay, side-by-side view, and the status text (HUD)."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

View = Literal["overlay", "mask", "side"]
VIEWS: tuple[View, ...] = ("overlay", "mask", "side")

# Classes drawn transparent in the overlay view, so the picture is not dimmed where nothing was found.
TRANSPARENT_CLASS_NAMES = {"background", "void", "unlabeled", "unlabelled", "ignore"}


def default_palette(num_classes: int = 256) -> np.ndarray:
    """Deterministic, well-separated RGB colours (the PASCAL VOC bit-interleaving scheme); class 0 black."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for label in range(num_classes):
        value, r, g, b = label, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[label] = (r, g, b)
    return palette


class ClassInfo:
    """Class names and colours of one model, with a 256-entry BGR lookup table for drawing."""

    def __init__(self, names: list[str], palette_rgb: np.ndarray | None) -> None:
        self.names = list(names)
        lut_rgb = default_palette(256)
        if palette_rgb is not None and len(palette_rgb):
            rgb = np.asarray(palette_rgb, dtype=np.uint8).reshape(-1, 3)[:256]
            lut_rgb[: len(rgb)] = rgb
        self.lut_bgr = np.ascontiguousarray(lut_rgb[:, ::-1])
        self.transparent = np.zeros(256, dtype=bool)
        for index, name in enumerate(self.names[:256]):
            self.transparent[index] = name.strip().lower() in TRANSPARENT_CLASS_NAMES

    @classmethod
    def unknown(cls) -> ClassInfo:
        return cls([], None)


def colorize(mask: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """u8[H, W] labels -> u8[H, W, 3] BGR colours."""
    return classes.lut_bgr[mask]


def fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a label mask to a frame's (H, W) when the sizes differ."""
    h, w = shape[:2]
    if mask.shape[:2] == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def blend(frame: np.ndarray, mask: np.ndarray, classes: ClassInfo, alpha: float = 0.5) -> np.ndarray:
    """Frame with the class colours blended in at `alpha`, except where the class is transparent."""
    colours = colorize(mask, classes)
    mixed = cv2.addWeighted(frame, 1.0 - alpha, colours, alpha, 0.0)
    keep = classes.transparent[mask]
    if keep.any():
        mixed[keep] = frame[keep]
    return mixed


def compose(
    view: View,
    frame: np.ndarray,
    mask: np.ndarray | None,
    classes: ClassInfo,
    alpha: float = 0.5,
) -> np.ndarray:
    """The picture for one view. Without a mask yet, the frame itself (black on the mask side)."""
    if mask is not None:
        mask = fit_mask(mask, frame.shape)
    if view == "overlay":
        return frame.copy() if mask is None else blend(frame, mask, classes, alpha)
    colours = np.zeros_like(frame) if mask is None else colorize(mask, classes)
    if view == "mask":
        return colours
    return np.hstack([frame, colours])


def draw_hud(image: np.ndarray, lines: list[str], warning: str | None = None) -> np.ndarray:
    """Writes status lines in the top-left corner on a dark band, and a warning line in red, in place."""
    scale = max(0.35, min(image.shape[0], 720) / 640)  # by height: a side-by-side view is twice as wide
    thickness = 1
    font = cv2.FONT_HERSHEY_SIMPLEX
    texts = [(line, (255, 255, 255)) for line in lines]
    if warning:
        texts.append((warning, (60, 60, 255)))
    y = 4
    for text, colour in texts:
        (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
        cv2.rectangle(image, (2, y), (8 + tw, y + th + baseline + 4), (0, 0, 0), cv2.FILLED)
        cv2.putText(image, text, (5, y + th + 2), font, scale, colour, thickness, cv2.LINE_AA)
        y += th + baseline + 6
    return image
