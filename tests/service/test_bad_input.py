"""Malformed and hostile uploads: each gets its documented 4xx (or is served, for unusual but valid
images), never a 5xx, and the server stays up. Plus a property-based fuzz of the HTTP API."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from .helpers import PERSON_IMAGES, SMALL_IMAGE


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_size(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


@functools.cache
def decompression_bomb_png() -> bytes:
    """A 20000x20000 all-zero grayscale PNG: about 400 KB on disk, 400 MB once decoded (1.2 GB as RGB)."""
    side = 20_000
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_with_size(side, side, idat)


def huge_header_jpeg() -> bytes:
    """A real JPEG whose SOF0 header is patched to claim 60000x60000 pixels."""
    data = bytearray(SMALL_IMAGE.read_bytes())
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)
    return bytes(data)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.open(SMALL_IMAGE).convert("P").rotate(angle) for angle in (0, 90, 180)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    gray = np.asarray(Image.open(SMALL_IMAGE).convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


REAL_JPEG = PERSON_IMAGES[0].read_bytes()

# name -> (bytes, expected status)
CORPUS = {
    "zero_bytes": (b"", 400),
    "wrong_magic": (b"\x00\x00\x00\x00" + REAL_JPEG[4:], 415),
    "text_file": (b"hello, this is not an image\n" * 20, 415),
    "pdf_magic": (b"%PDF-1.7\n" + b"\x00" * 500, 415),
    "eps_is_not_accepted": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415),
    "truncated_jpeg": (REAL_JPEG[: len(REAL_JPEG) // 3], 400),
    "jpeg_header_only": (REAL_JPEG[:200], 400),
    "truncated_png": (encode(Image.open(SMALL_IMAGE), "PNG")[:300], 400),
    "huge_dimensions_header": (huge_header_jpeg(), 413),
    "png_header_claims_65535_squared": (png_with_size(65535, 65535, b""), 413),
    "zero_width_png": (png_with_size(0, 10, zlib.compress(b"")), 400),
    # Unusual but valid images are served.
    "sixteen_bit_png": (sixteen_bit_png(), 200),
    "cmyk_jpeg": (encode(Image.open(SMALL_IMAGE).convert("CMYK"), "JPEG"), 200),
    "animated_gif": (animated_gif(), 200),
    "palette_png_with_transparency": (
        encode(Image.open(SMALL_IMAGE).convert("P"), "PNG", transparency=0),
        200,
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus(server, name):
    data, expected = CORPUS[name]
    r = httpx.post(
        server.url + "/segment", params={"format": "json"}, files={"file": ("upload", data)}, timeout=120
    )
    assert r.status_code == expected, (name, r.status_code, r.text)
    if expected != 200:
        detail = r.json()["detail"]
        assert detail and "\n" not in detail
    else:
        w, h = Image.open(io.BytesIO(data)).size
        assert (r.json()["width"], r.json()["height"]) == (w, h)
    assert httpx.get(server.url + "/health").status_code == 200


def peak_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# The test server's own peak memory (models, libraries, ordinary test images) stays well below this;
# decoding the bomb would add at least 400 MB.
PEAK_RSS_LIMIT = 350 * 1024 * 1024


def test_decompression_bomb_is_refused_before_decoding(server):
    bomb = decompression_bomb_png()
    assert len(bomb) < 1024 * 1024
    r = httpx.post(server.url + "/segment", files={"file": ("bomb.png", bomb)}, timeout=120)
    assert r.status_code == 413 and "20000x20000" in r.json()["detail"]
    peak = peak_rss_bytes(server.proc.pid)
    if peak is not None:  # Linux: the server's peak memory shows the image was never decoded
        assert peak < PEAK_RSS_LIMIT, f"server peak RSS {peak / 2**20:.0f} MiB"


def test_wrong_magic_with_image_extension_and_content_type(server):
    r = httpx.post(
        server.url + "/segment", files={"file": ("photo.jpg", b"\x00\x01\x02\x03" * 100, "image/jpeg")}
    )
    assert r.status_code == 415


def test_upload_over_limit_by_content_length(server):
    big = b"\xff" * (2 * 1024 * 1024 + 1000)  # the server's limit is 2 MiB
    r = httpx.post(server.url + "/segment", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_upload_over_limit_while_streaming_without_length(server):
    """A chunked upload has no Content-Length: the limit is enforced as the bytes arrive."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(40):
            yield b"\x00" * 65536  # 2.5 MiB in all
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(
        server.url + "/segment",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert r.status_code == 413
    assert httpx.get(server.url + "/health").status_code == 200


# ---- property-based fuzzing ----

SEED_IMAGE = SMALL_IMAGE.read_bytes()


@st.composite
def mutated_image(draw) -> bytes:
    """A real small JPEG with random byte flips, a random cut, or random bytes spliced in."""
    data = bytearray(SEED_IMAGE)
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    junk = draw(st.binary(max_size=64))
    return bytes(data[:cut]) + junk


query_values = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["png", "overlay", "json", "person", "street", "true", "false", "0", "1"]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(mutated_image(), st.binary(max_size=2048)),
    fmt=query_values,
    model=query_values,
    rle=query_values,
    filename=st.text(max_size=20),
    content_type=st.sampled_from(["image/jpeg", "image/png", "", "text/plain"]),
)
@pytest.mark.slow
def test_fuzz_segment_never_5xx(server, data, fmt, model, rle, filename, content_type):
    params = {k: v for k, v in (("format", fmt), ("model", model), ("rle", rle)) if v is not None}
    r = httpx.post(
        server.url + "/segment",
        params=params,
        files={"file": (filename or "f", data, content_type or None)},
        timeout=120,
    )
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert "\n" not in r.json()["detail"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/segment", "/segment/video", "/classes", "/models", "/ready", "/x"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    body=st.binary(max_size=512),
    content_type=st.sampled_from(
        [
            "multipart/form-data",
            "multipart/form-data; boundary=zz",
            "application/json",
            "application/octet-stream",
        ]
    ),
)
@pytest.mark.slow
def test_fuzz_raw_requests_never_5xx(server, path, method, body, content_type):
    r = httpx.request(
        method, server.url + path, content=body, headers={"content-type": content_type}, timeout=60
    )
    assert r.status_code < 500, (method, path, r.status_code, r.text)


def test_server_survives_the_whole_corpus_back_to_back(server):
    """Every refused upload of this module in a row, the bomb included, then the server is still up,
    small and clean. Self-contained: it means the same run alone or after the other tests."""
    for name, (data, expected) in [*CORPUS.items(), ("bomb", (decompression_bomb_png(), 413))]:
        if expected != 200:
            r = httpx.post(server.url + "/segment", files={"file": (name, data)}, timeout=120)
            assert r.status_code == expected, (name, r.status_code, r.text)
    assert server.alive()
    peak = peak_rss_bytes(server.proc.pid)
    assert peak is None or peak < PEAK_RSS_LIMIT, f"server peak RSS {peak / 2**20:.0f} MiB"
    assert httpx.get(server.url + "/ready").status_code == 200
    assert "Traceback" not in server.log()
