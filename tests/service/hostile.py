"""Builders of hostile inputs for the service tests: tampered model files (with a valid checksum, so
they get past the integrity check and test what comes after), oversized or odd images and videos,
and raw HTTP requests."""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from seg_service.format import compute_checksum

from .helpers import VIDEO

ModelEdit = Callable[[dict[str, Any], dict[str, Any], dict[str, np.ndarray]], None]


def read_parts(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(model description, graph, tensors, metadata) of a packed model file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = dict(f.metadata())
    return json.loads(metadata["model"]), json.loads(metadata["graph"]), tensors, metadata


def tampered_model(src: Path, dst: Path, edit: ModelEdit) -> Path:
    """Copy of `src` with `edit` applied to its description, graph and tensors, and the checksum
    recomputed: only the loader's validation, shape inference and dry run can refuse it."""
    from safetensors.numpy import save_file

    model, graph, tensors, metadata = read_parts(src)
    edit(model, graph, tensors)
    model_json = json.dumps(model, sort_keys=True, separators=(",", ":"))
    graph_json = json.dumps(graph, separators=(",", ":"))
    names = {
        "float32": "F32",
        "float16": "F16",
        "int32": "I32",
        "int64": "I64",
        "uint8": "U8",
        "uint64": "U64",
    }
    checksum = compute_checksum(
        model_json,
        graph_json,
        ((n, names[str(a.dtype)], a.shape, np.ascontiguousarray(a).tobytes()) for n, a in tensors.items()),
    )
    metadata.update(model=model_json, graph=graph_json, sha256=checksum)
    save_file({n: np.ascontiguousarray(a) for n, a in tensors.items()}, str(dst), metadata=metadata)
    return dst


def _first_op(graph: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(op for op in graph["ops"] if op["op"] == kind)


def _set(key: str, value: Any) -> ModelEdit:
    def edit(model: dict, graph: dict, tensors: dict) -> None:
        model[key] = value

    return edit


def _set_input(key: str, value: Any) -> ModelEdit:
    def edit(model: dict, graph: dict, tensors: dict) -> None:
        model["input"][key] = value

    return edit


def _set_op(kind: str, key: str, value: Any) -> ModelEdit:
    def edit(model: dict, graph: dict, tensors: dict) -> None:
        _first_op(graph, kind)[key] = value

    return edit


def _stem_with_4_input_channels(model: dict, graph: dict, tensors: dict) -> None:
    weight = _first_op(graph, "conv2d")["weight"]
    w = tensors[weight]
    tensors[weight] = np.concatenate([w, w[..., :1]], axis=3)  # [O, kh, kw, 4]: an RGBA stem


def _maxpool_overflow(model: dict, graph: dict, tensors: dict) -> None:
    op = _first_op(graph, "maxpool2d")
    op["kernel"], op["padding"] = 2**63 - 1, 2**62  # 2 * padding overflows int64 to a negative number


def _upsample_like_input(model: dict, graph: dict, tensors: dict) -> None:
    # Channels still agree, but the upsampled map now has the image's size, not its partner's.
    for op in graph["ops"]:
        if op["op"] == "upsample_bilinear":
            op["like"] = graph["inputs"][0]
            return


# Model files that used to stop the server from starting (7) or load and then fail every request (8).
BAD_MODEL_EDITS: dict[str, ModelEdit] = {
    "name_list": _set("name", ["person"]),
    "name_int": _set("name", 7),
    "config_int": _set("config", 3),
    "name_not_latin1": _set("name", "модель"),
    "name_crlf": _set("name", "evil\r\nX-Injected: 1"),
    "arch_object": _set("arch", {"a": 1}),
    "size_divisor_2_24": _set_input("size_divisor", 2**24),
    "max_side_huge": _set_input("max_side", 10**9),
    "mean_nan": _set_input("mean", [float("nan"), 0.5, 0.5]),
    "bconv_padding_2_62": _set_op("bconv2d", "padding", 2**62),
    "bconv_dilation_2_62": _set_op("bconv2d", "dilation", 2**62),
    "stem_4_input_channels": _stem_with_4_input_channels,
    "maxpool_overflow": _maxpool_overflow,
    "upsample_to_input_size": _upsample_like_input,  # only the dry run sees it: maps of two sizes meet
}


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), 90).save(buf, "PNG")
    return buf.getvalue()


def photo_jpeg(side: int, quality: int = 85) -> bytes:
    """A side x side JPEG with gradients and noise (a photo's cost to decode and encode)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rgb = np.stack([x * 255, y * 255, (x + y) * 127], axis=2)
    rgb += rng.normal(0, 8, (side, side, 1)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def raw_mjpeg(frames: int) -> bytes:
    """A raw MJPEG stream (JPEG frames back to back): a container that declares no length."""
    cap = cv2.VideoCapture(str(VIDEO))
    ok, frame = cap.read()
    cap.release()
    assert ok
    out = bytearray()
    for i in range(frames):
        shifted = np.roll(frame, i, axis=1)
        out += cv2.imencode(".jpg", shifted, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    return bytes(out)


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 60.0) -> bytes:
    """Send one raw HTTP request and return what the server answers until it closes or stops sending
    (the status line and headers are enough for the tests)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 when the server sent nothing)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer[9:12])


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole), with a plausible safetensors start."""
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100))
        f.truncate(size)
    return path
