"""Drawing: label mask -> colours, blended overlay, side-by-side view, background blur and replacement
from an alpha matte, and the status text (HUD)."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

View = Literal["overlay", "mask", "side", "blur", "replace"]
VIEWS: tuple[View, ...] = ("overlay", "mask", "side", "blur", "replace")
# Views drawn from the server's alpha matte (format=alpha) rather than its label mask (format=png).
MATTE_VIEWS: tuple[View, ...] = ("blur", "replace")


def mask_format_for(view: View) -> str:
    """The server format a view needs: "alpha" for the effects, "png" (labels) for the others."""
    return "alpha" if view in MATTE_VIEWS else "png"


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
        # the same tables as OpenCV lookups take them (cv2.LUT: a 640x480 frame in a fraction of a
        # millisecond, where numpy's fancy indexing took several)
        self.lut_bgr_cv = np.ascontiguousarray(self.lut_bgr.reshape(256, 1, 3))
        self.transparent_u8 = np.where(self.transparent, 255, 0).astype(np.uint8)

    @classmethod
    def unknown(cls) -> ClassInfo:
        return cls([], None)


def colorize(mask: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """u8[H, W] labels -> u8[H, W, 3] BGR colours."""
    labels = np.ascontiguousarray(mask, dtype=np.uint8)
    return cv2.LUT(cv2.merge([labels, labels, labels]), classes.lut_bgr_cv)


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
    if classes.transparent.any():
        keep = cv2.LUT(np.ascontiguousarray(mask, dtype=np.uint8), classes.transparent_u8)
        cv2.copyTo(frame, keep, mixed)  # the frame itself where the class is transparent
    return mixed


def fit_matte(matte: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of an alpha matte to a frame's (H, W) when the sizes differ."""
    h, w = shape[:2]
    if matte.shape[:2] == (h, w):
        return matte
    return cv2.resize(matte, (w, h), interpolation=cv2.INTER_LINEAR)


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """ "#rrggbb" -> a BGR tuple, None when the text is not such a colour."""
    text = text.strip()
    if len(text) == 7 and text[0] == "#":
        try:
            r, g, b = (int(text[i : i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            return None
        return b, g, r
    return None


class Background:
    """What Replace puts behind the kept classes: a solid colour or a picture scaled to cover the
    frame and centred (as CSS ``object-fit: cover``), built once per frame size."""

    def __init__(
        self, colour_bgr: tuple[int, int, int] = (229, 136, 30), image: np.ndarray | None = None
    ) -> None:
        self.colour_bgr = colour_bgr
        self.image = image
        self._cache: np.ndarray | None = None

    @classmethod
    def parse(cls, spec: str) -> Background:
        """ "#rrggbb" or the path of an image file; ValueError when it is neither."""
        colour = parse_colour(spec)
        if colour is not None:
            return cls(colour)
        image = cv2.imread(spec, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"background {spec!r} is neither a #rrggbb colour nor a readable image")
        return cls(image=image)

    def canvas(self, shape: tuple[int, ...]) -> np.ndarray:
        h, w = shape[:2]
        if self._cache is not None and self._cache.shape[:2] == (h, w):
            return self._cache
        if self.image is None:
            canvas = np.empty((h, w, 3), dtype=np.uint8)
            canvas[:] = self.colour_bgr
        else:
            ih, iw = self.image.shape[:2]
            scale = max(w / iw, h / ih)
            sw, sh = max(w, round(iw * scale)), max(h, round(ih * scale))
            method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            scaled = cv2.resize(self.image, (sw, sh), interpolation=method)
            top, left = (sh - h) // 2, (sw - w) // 2
            canvas = np.ascontiguousarray(scaled[top : top + h, left : left + w])
        self._cache = canvas
        return canvas


def matte_blend(front: np.ndarray, back: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """front * a + back * (1 - a) with a = matte / 255, per pixel (uint8 BGR images)."""
    a = matte.astype(np.float32) * np.float32(1.0 / 255.0)
    # the matte repeated per channel: numpy broadcasts a trailing axis of 3 slowly (13 -> 10 ms at 640x480)
    a3 = cv2.merge([a, a, a])
    mixed = back.astype(np.float32)
    step = front.astype(np.float32)
    step -= mixed
    step *= a3
    mixed += step
    mixed += np.float32(0.5)
    return mixed.astype(np.uint8)


def blur_background(frame: np.ndarray, matte: np.ndarray, sigma: float) -> np.ndarray:
    """The frame where the matte keeps it, a Gaussian blur of it (standard deviation ``sigma`` pixels)
    elsewhere."""
    blurred = cv2.GaussianBlur(frame, (0, 0), sigmaX=max(0.1, sigma))
    return matte_blend(frame, blurred, fit_matte(matte, frame.shape))


def replace_background(frame: np.ndarray, matte: np.ndarray, background: Background) -> np.ndarray:
    """The frame where the matte keeps it, the background elsewhere."""
    return matte_blend(frame, background.canvas(frame.shape), fit_matte(matte, frame.shape))


def compose(
    view: View,
    frame: np.ndarray,
    mask: np.ndarray | None,
    classes: ClassInfo,
    alpha: float = 0.5,
    mask_format: str = "png",
    blur_sigma: float = 8.0,
    background: Background | None = None,
) -> np.ndarray:
    """The picture for one view. Without a mask yet, or with a mask of the other kind than the view
    draws (``mask_format``: "png" labels or "alpha" matte; right after a view switch), the frame
    itself (black on the mask side)."""
    if mask is not None and mask_format != mask_format_for(view):
        mask = None
    if view in MATTE_VIEWS:
        if mask is None:
            return frame.copy()
        if view == "blur":
            return blur_background(frame, mask, blur_sigma)
        return replace_background(frame, mask, background or Background())
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
