"""Image decoding for untrusted uploads, and mask/overlay encoding.

Decoding checks the pixel count from the header before any pixel is decoded (decompression bombs),
accepts only a short list of raster formats, and normalises every mode Pillow can hand back
(grayscale, palette, RGBA, 16-bit, CMYK, animated) to RGB uint8 with the EXIF orientation applied.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a camera or browser produces. Keeping the list short keeps Pillow's rarely used parsers
# (and EPS, which would call Ghostscript) away from untrusted bytes.
# decode_image checks the pixel count itself (with the configured limit and a clear message) before
# anything is decoded, so Pillow's own process-wide bomb check is switched off.
Image.MAX_IMAGE_PIXELS = None
Image.init()  # register every plugin now, so the list below can be checked against what is installed
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF") if f in Image.OPEN)

# Uploads with transparency are composited over this colour before inference.
ALPHA_BACKGROUND = (255, 255, 255)

# Largest side each output encoder can write: OpenCV's PNG encoder (libpng's default user limit) and
# JPEG itself (65,535, less the 64-pixel margin libjpeg-turbo keeps). An image over the side limit of
# the requested format is refused from its header, before inference, like one over the pixel limit.
PNG_MAX_SIDE = 1_000_000
JPEG_MAX_SIDE = 65_500

# Rows of the overlay are blended this many pixels at a time, so the temporaries stay a few MB
# whatever the image size (a 25 MP overlay in one go needed 1 GB of float32 temporaries).
_OVERLAY_CHUNK_PIXELS = 1 << 20


class ImageInputError(ValueError):
    """Bad image input; `status` is the HTTP status to answer with (400, 413 or 415)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_image(
    data: bytes, max_pixels: int, max_side: int | None = None, output: str = "the output"
) -> np.ndarray:
    """Decode an uploaded image to RGB uint8 [H, W, 3] (EXIF orientation applied).

    Raises ImageInputError: 400 empty or truncated/corrupt, 415 not a supported image,
    413 more than `max_pixels` pixels or a side over `max_side` (the largest side `output`, the
    encoder of the answer, can write), both checked from the header, before decoding.
    """
    if not data:
        raise ImageInputError(400, "empty upload: the file has 0 bytes")
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        kind = sniff_format(data)
        if kind is not None:  # the right signature but a header Pillow cannot parse
            raise ImageInputError(400, f"corrupt {kind} header") from None
        raise ImageInputError(415, "not a supported image (expected JPEG, PNG, WebP, BMP or GIF)") from None
    except Exception as e:  # any parser failure on untrusted bytes is the upload's fault
        raise ImageInputError(400, f"corrupt image header: {_one_line(e)}") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageInputError(400, f"image has invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageInputError(
            413, f"image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
        )
    if max_side is not None and max(width, height) > max_side:
        raise ImageInputError(
            413, f"image is {width}x{height}: {output} can hold at most {max_side} pixels per side"
        )
    try:
        im.seek(0)  # animated GIF/WebP/APNG: segment the first frame
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy when there is nothing to turn
        return _to_rgb(im)
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ... on bad data
        raise ImageInputError(400, f"truncated or corrupt image: {_one_line(e)}") from None


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose file signature `data` starts with, if any."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (Pillow opens 16-bit PNGs as I;16 or I): keep the top 8 bits.
        gray = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(im)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":  # convert() copies even an RGB image: a 75 MB copy at 25 MP
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def encode_mask_png(mask: np.ndarray, soft: bool = False) -> bytes:
    """8-bit single-channel PNG of a label mask (pixel value = class index), or with ``soft`` of a
    soft mask (0-255 alpha or probability).

    Masks are long runs of one value, so zlib's run-length strategy at level 1 compresses them as
    well as its default search, and PNG's per-row filter search (OpenCV's default tries every filter
    on every row) is what took the time: a label mask needs no filter, a soft mask's ramps want
    "sub". A person mask of a 640x480 frame: 2.3 -> 0.9 ms and 4.6 -> 2.3 KB; its alpha matte 8.8 ->
    1.6 ms at the same size. (OpenCV before 4.10 has no filter choice: then only the strategy.)
    """
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        row_filter = cv2.IMWRITE_PNG_FILTER_SUB if soft else cv2.IMWRITE_PNG_FILTER_NONE
        params += [cv2.IMWRITE_PNG_FILTER, row_filter]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def overlay(
    rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5, bgr: bool = False
) -> np.ndarray:
    """The image blended with each pixel's class colour, uint8 [H, W, 3] (in BGR order with `bgr`, as
    OpenCV's encoders take it). Classes coloured black in the palette (the usual "background") are
    left untouched.

    Integer arithmetic on chunks of rows: the peak memory is the output plus a few MB, and for
    alpha 0.5 each value is round((image + colour) / 2), as the float formula gives. The class
    colours and the "painted" flags come from OpenCV table lookups, and the blend is copied in
    under the painted pixels only: numpy's fancy indexing and `where` took 12 of the 14 ms of a
    640x480 frame.
    """
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    # A 256-entry table: any label value indexes it directly (labels past the palette take its last colour).
    colours = palette[np.minimum(np.arange(256), len(palette) - 1)]
    colour_table = np.ascontiguousarray(colours.reshape(256, 1, 3))
    painted_table = np.where(np.any(colours, axis=1), 255, 0).astype(np.uint8)
    weight = int(round(alpha * 256))
    height, width = mask.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _OVERLAY_CHUNK_PIXELS // max(1, width))
    for top in range(0, height, rows):
        labels = np.ascontiguousarray(mask[top : top + rows], dtype=np.uint8)
        src = np.ascontiguousarray(rgb[top : top + rows])
        colour = cv2.LUT(cv2.merge([labels, labels, labels]), colour_table)
        blended = src.astype(np.uint16) * np.uint16(256 - weight)
        blended += colour.astype(np.uint16) * np.uint16(weight)
        blended += np.uint16(128)
        blended >>= 8  # at most (255 * 256 + 128) >> 8: no uint16 overflow
        chunk = src.copy()
        cv2.copyTo(blended.astype(np.uint8), cv2.LUT(labels, painted_table), chunk)
        out[top : top + rows] = cv2.cvtColor(chunk, cv2.COLOR_RGB2BGR) if bgr else chunk
    return out


def encode_jpeg(image: np.ndarray, quality: int = 90, bgr: bool = False) -> bytes:
    """JPEG of an RGB image (or of a BGR one with `bgr`, which saves a full-size colour conversion)."""
    ok, buf = cv2.imencode(
        ".jpg", image if bgr else cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
