"""The packed model file (``.gnpk``): write, read and validate (container, op schemas, checksum).

The file layout described in ``docs/format.md``; ``seg_service.format`` re-exports the public names.
The exporter in ``seg_training/`` writes through :func:`write_model`; the runtime reads through
:func:`read_model`.

A file is a standard safetensors container. We write it with the safetensors library (so any
safetensors reader can open it) but parse it ourselves when loading, so that every way a file can
be broken (truncated, tampered, wrong version, unknown op, missing tensor) ends in a
:class:`ModelFormatError` whose message names the problem, never a crash deep in the runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg_service.format.layout import packed_words
from seg_service.format.postprocess import validate_postprocess
from seg_service.format.tta import validate_test_time

FORMAT_NAME = "groupnet-packed"
FORMAT_VERSION = 4  # the newest version this runtime reads and writes
# Version 2 adds the optional model key "postprocess" (postprocess.py); version 3 the op "conv2d_u8"
# (an integer conv of the input image's 8-bit pixels) and the I8 tensor dtype; version 4 the optional
# model key "test_time" (tta.py: the model's default test-time augmentation). A file carries the
# lowest version that describes it, so files without them stay readable by older readers, and an
# older reader refuses, rather than silently runs without, what it does not know.
READABLE_VERSIONS = ("1", "2", "3", "4")
FILE_EXTENSION = ".gnpk"

# Sanity cap on the JSON header: a larger length field means a corrupt or foreign file.
_MAX_HEADER_BYTES = 64 * 1024 * 1024
# Largest model file the loader reads (checked with stat before a byte is read): shipped models are
# about 2.4 MB, so a bigger file is corrupt or foreign, and reading it would cost its size in memory.
MAX_MODEL_FILE_BYTES = 256 * 1024 * 1024

# Bounds on the description and the op fields: far above any real model, low enough that no size
# computed from them (padded input, output side, kernel extent) can overflow int64 or allocate absurdly.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # safe in a header, a URL, a log line
MAX_TEXT_CHARS = 200  # arch, class names
MAX_SIZE_DIVISOR = 1024
MAX_SIDE = 8192
OP_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "kernel": (1, 64),
    "stride": (1, 64),
    "padding": (0, 1024),
    "dilation": (1, 1024),
    "in_channels": (1, 65536),
}
MAX_POOL_SIZE = 1024

# safetensors dtype strings <-> numpy dtypes (little-endian) used by this format.
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I8": np.dtype("i1"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U64": np.dtype("<u8"),
}
_DTYPE_NAMES: dict[np.dtype, str] = {v: k for k, v in _DTYPES.items()}


class ModelFormatError(ValueError):
    """A packed model file is malformed, tampered with, or uses something this runtime cannot run."""


# --------------------------------------------------------------------------------------------
# Op schemas: which fields each graph op has, and what kind of thing each field is.
# --------------------------------------------------------------------------------------------

# Field kinds:
#   "value"      name of a value read by the op        "values"  non-empty list of value names
#   "out"        name of the value the op writes
#   "f32" / "u64" / "i8" name of a tensor in the file with that dtype
#   "int" / "bool" / "floats" / "size"  plain JSON fields ("size": int or [h, w])
_OP_SCHEMAS: dict[str, dict[str, str]] = {
    "conv2d": {
        "in": "value",
        "out": "out",
        "weight": "f32",
        "bias": "f32",
        "stride": "int",
        "padding": "int",
        "dilation": "int",
        "relu": "bool",
    },
    # The input image's pixels p (u8, recovered from the normalised input) times 7-bit integer
    # weights, summed exactly: out = scale * sum(weight * (p - pixel_zero)) + bias over the taps
    # inside the input (docs/format.md).
    "conv2d_u8": {
        "in": "value",
        "out": "out",
        "weight": "i8",
        "scale": "f32",
        "bias": "f32",
        "pixel_scale": "floats",
        "pixel_zero": "floats",
        "stride": "int",
        "padding": "int",
        "relu": "bool",
    },
    "bconv2d": {
        "in": "value",
        "out": "out",
        "weight": "u64",
        "in_channels": "int",
        "kernel": "int",
        "stride": "int",
        "padding": "int",
        "dilation": "int",
        "mul": "f32",
        "bias": "f32",
        "relu_before": "bool",
        "relu_after": "bool",
    },
    "affine": {
        "in": "value",
        "out": "out",
        "mul": "f32",
        "bias": "f32",
        "relu_before": "bool",
        "relu_after": "bool",
    },
    "lincomb": {"ins": "values", "out": "out", "coeffs": "floats"},
    "relu": {"in": "value", "out": "out"},
    "maxpool2d": {"in": "value", "out": "out", "kernel": "int", "stride": "int", "padding": "int"},
    "global_avgpool": {"in": "value", "out": "out"},
    "adaptive_avgpool": {"in": "value", "out": "out", "size": "size"},
    "upsample_bilinear": {"in": "value", "out": "out", "like": "value"},
    "concat": {"ins": "values", "out": "out"},
}
_OPTIONAL_FIELDS: dict[str, dict[str, str]] = {
    "bconv2d": {"residual": "value"},
    "affine": {"residual": "value"},
}
SUPPORTED_OPS: tuple[str, ...] = tuple(_OP_SCHEMAS)
# conv2d_u8: the kernel sizes its integer kernels take, and the weight range that lets AVX2's
# u8 x s8 pair products (vpmaddubsw) run without saturating: 255 * 64 * 2 = 32640 <= 32767.
U8_CONV_MAX_KERNEL = 11
U8_CONV_WEIGHT_RANGE = (-64, 63)


def u8_conv_float_weight(op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The float conv2d weight [O, k, k, C] on the normalised input that a ``conv2d_u8`` op computes
    (docs/format.md): weight * scale[o] * pixel_scale[c]; its bias is the op's bias."""
    q = tensors[op["weight"]].astype(np.float64)
    scale = tensors[op["scale"]].astype(np.float64)[:, None, None, None]
    return (q * scale * np.asarray(op["pixel_scale"], dtype=np.float64)).astype(np.float32)


def _has_u8_conv(graph: Mapping[str, Any]) -> bool:
    return any(isinstance(op, dict) and op.get("op") == "conv2d_u8" for op in graph.get("ops", []))


def file_version(model: Mapping[str, Any], graph: Mapping[str, Any]) -> int:
    """The lowest format version that describes a model (see FORMAT_VERSION)."""
    if model.get("test_time") is not None:
        return 4
    if _has_u8_conv(graph):
        return 3
    return 2 if model.get("postprocess") is not None else 1


@dataclass
class PackedFile:
    """Everything in a packed model file, after validation."""

    model: dict[str, Any]
    graph: dict[str, Any]
    tensors: dict[str, np.ndarray]
    checksum: str
    file_size: int = 0
    path: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Checksum
# --------------------------------------------------------------------------------------------


def compute_checksum(
    model_json: str, graph_json: str, tensors: Iterable[tuple[str, str, tuple[int, ...], Any]]
) -> str:
    """SHA-256 as specified in docs/format.md: model and graph JSON, then every tensor by name."""
    h = hashlib.sha256()
    for text in (model_json, graph_json):
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    for name, dtype, shape, raw in sorted(tensors, key=lambda t: t[0]):
        h.update(name.encode("utf-8"))
        h.update(b"\0")
        h.update(dtype.encode("ascii"))
        h.update(b"\0")
        h.update(",".join(str(d) for d in shape).encode("ascii"))
        h.update(b"\0")
        h.update(raw)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _canonical_tensor(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _DTYPE_NAMES:
        raise ModelFormatError(f"tensor '{name}' has dtype {array.dtype}, not one of {sorted(_DTYPES)}")
    return np.ascontiguousarray(array, dtype=dtype)


def encode_model(
    model: Mapping[str, Any], graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray]
) -> bytes:
    """Validate a model description, graph and tensors, and return the packed file's bytes."""
    from safetensors.numpy import save  # local: reading never needs the library

    arrays = {name: _canonical_tensor(name, t) for name, t in tensors.items()}
    model = dict(model)
    graph = dict(graph)
    validate_model_description(model)
    validate_graph(graph, arrays)
    model_json = json.dumps(model, sort_keys=True, separators=(",", ":"))
    graph_json = json.dumps(graph, separators=(",", ":"))
    checksum = compute_checksum(
        model_json, graph_json, ((n, _DTYPE_NAMES[a.dtype], a.shape, a.tobytes()) for n, a in arrays.items())
    )
    version = file_version(model, graph)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(version),
        "model": model_json,
        "graph": graph_json,
        "sha256": checksum,
    }
    return save(arrays, metadata=metadata)


def write_model(
    path: str | os.PathLike[str],
    model: Mapping[str, Any],
    graph: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
) -> str:
    """Write a packed model file; returns its checksum. The file appears atomically."""
    data = encode_model(model, graph, tensors)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]["sha256"]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def decode_model(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> PackedFile:
    """Parse and verify the bytes of a packed model file."""
    buf = memoryview(data)
    size = len(buf)
    if size < 8:
        raise ModelFormatError(f"{source}: truncated file: {size} bytes, too short for a header")
    (header_len,) = struct.unpack("<Q", buf[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"{source}: not a packed model file (header length field {header_len} is absurd)"
        )
    if 8 + header_len > size:
        raise ModelFormatError(
            f"{source}: truncated file: header needs {header_len} bytes but only {size - 8} follow"
        )
    try:
        header = json.loads(bytes(buf[8 : 8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{source}: corrupt file header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{source}: corrupt file header (not a JSON object)")

    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFormatError(
            f"{source}: not a packed model file (metadata 'format' is not '{FORMAT_NAME}')"
        )
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFormatError(
            f"{source}: unsupported format version {version!r}; this runtime reads versions "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    for key in ("model", "graph", "sha256"):
        if not isinstance(metadata.get(key), str):
            raise ModelFormatError(f"{source}: corrupt file header (metadata '{key}' missing)")

    data_start = 8 + header_len
    data_len = size - data_start
    entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
    needed = 0
    for name, info in header.items():
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{source}: corrupt file header (entry for tensor '{name}')") from None
        if dtype_name not in _DTYPES:
            raise ModelFormatError(f"{source}: tensor '{name}' has unsupported dtype '{dtype_name}'")
        nbytes = math.prod(shape) * _DTYPES[dtype_name].itemsize
        if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes:
            raise ModelFormatError(f"{source}: corrupt file header (size of tensor '{name}')")
        needed = max(needed, end)
        entries.append((name, dtype_name, shape, begin, end))
    if needed > data_len:
        raise ModelFormatError(
            f"{source}: truncated file: tensor data needs {needed} bytes but only {data_len} are present"
        )

    payload = buf[data_start:]
    checksum = compute_checksum(
        metadata["model"], metadata["graph"], ((n, d, s, payload[b:e]) for n, d, s, b, e in entries)
    )
    if checksum != metadata["sha256"]:
        raise ModelFormatError(
            f"{source}: checksum mismatch (file says {metadata['sha256'][:12]}..., content hashes to "
            f"{checksum[:12]}...): the file is corrupt or was modified after export"
        )

    try:
        model = json.loads(metadata["model"])
        graph = json.loads(metadata["graph"])
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{source}: corrupt model or graph JSON ({exc})") from None

    tensors: dict[str, np.ndarray] = {}
    for name, dtype_name, shape, begin, end in entries:
        # Copy: gives aligned, owned arrays (safetensors offsets need not be aligned).
        tensors[name] = np.frombuffer(payload[begin:end], dtype=_DTYPES[dtype_name]).reshape(shape).copy()

    validate_model_description(model, source)
    if version == "1" and isinstance(model, dict) and model.get("postprocess") is not None:
        raise ModelFormatError(f"{source}: 'postprocess' needs format version 2, the file says version 1")
    validate_graph(graph, tensors, source)
    if version in ("1", "2", "3") and model.get("test_time") is not None:
        raise ModelFormatError(
            f"{source}: 'test_time' needs format version 4, the file says version {version}"
        )
    if version in ("1", "2") and _has_u8_conv(graph):
        raise ModelFormatError(
            f"{source}: op 'conv2d_u8' needs format version 3, the file says version {version}"
        )
    return PackedFile(
        model=model, graph=graph, tensors=tensors, checksum=checksum, file_size=size, metadata=dict(metadata)
    )


def read_model(path: str | os.PathLike[str], max_bytes: int = MAX_MODEL_FILE_BYTES) -> PackedFile:
    """Read, verify (format, version, checksum) and validate a packed model file.

    The file is checked with ``stat`` before it is opened: anything but a regular file (a FIFO would
    block the open for ever, a device would never end) and anything over ``max_bytes`` is refused
    without reading a byte.
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFormatError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise ModelFormatError(
                f"{path}: file is {info.st_size} bytes, over the limit of {max_bytes} bytes for a model file"
            )
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, the open still returns.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ModelFormatError(f"{path}: not a regular file")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ModelFormatError(f"{path}: file is over the limit of {max_bytes} bytes for a model file")
    packed = decode_model(data, source=str(path))
    packed.path = str(path)
    return packed


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_model_description(model: Any, source: str = "model") -> None:
    """Check the ``model`` metadata: classes, palette, input normalisation."""
    if not isinstance(model, dict):
        raise ModelFormatError(f"{source}: model description is not a JSON object")
    for key in ("name", "arch", "classes", "palette", "input"):
        if key not in model:
            raise ModelFormatError(f"{source}: model description lacks '{key}'")
    name = model["name"]
    if not (isinstance(name, str) and MODEL_NAME_PATTERN.fullmatch(name)):
        # The name goes into the X-Model header, URLs and log lines: ASCII letters, digits, . _ - only.
        raise ModelFormatError(
            f"{source}: model 'name' must be 1-64 ASCII letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {_short(name)}"
        )
    if not (
        isinstance(model["arch"], str)
        and 0 < len(model["arch"]) <= MAX_TEXT_CHARS
        and model["arch"].isprintable()
    ):
        raise ModelFormatError(
            f"{source}: model 'arch' must be a printable string of 1-{MAX_TEXT_CHARS} "
            f"characters, got {_short(model['arch'])}"
        )
    if "config" in model and not isinstance(model["config"], dict):
        raise ModelFormatError(
            f"{source}: model 'config' must be a JSON object, got {_short(model['config'])}"
        )
    classes, palette, spec = model["classes"], model["palette"], model["input"]
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_TEXT_CHARS and c.isprintable() for c in classes)
    ):
        raise ModelFormatError(
            f"{source}: 'classes' must be a non-empty list of printable names "
            f"(1-{MAX_TEXT_CHARS} characters each)"
        )
    if len(classes) > 256:
        raise ModelFormatError(f"{source}: {len(classes)} classes do not fit an 8-bit label mask (max 256)")
    if (
        not isinstance(palette, list)
        or len(palette) != len(classes)
        or not all(
            isinstance(p, list) and len(p) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in p)
            for p in palette
        )
    ):
        raise ModelFormatError(f"{source}: 'palette' must hold one [r, g, b] (0-255) per class")
    if not isinstance(spec, dict):
        raise ModelFormatError(f"{source}: 'input' must be a JSON object")
    for key in ("mean", "std"):
        if not (
            isinstance(spec.get(key), list) and len(spec[key]) == 3 and all(_finite(v) for v in spec[key])
        ):
            raise ModelFormatError(f"{source}: input '{key}' must be a list of 3 finite numbers")
    if any(s == 0 for s in spec["std"]):
        raise ModelFormatError(f"{source}: input 'std' must not contain zeros")
    for key, most in (("size_divisor", MAX_SIZE_DIVISOR), ("max_side", MAX_SIDE)):
        value = spec.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most):
            raise ModelFormatError(
                f"{source}: input '{key}' must be an integer from 1 to {most}, got {_short(value)}"
            )
    if spec.get("channel_order", "RGB") != "RGB":
        raise ModelFormatError(f"{source}: unsupported input channel_order {spec.get('channel_order')!r}")
    if model.get("postprocess") is not None:
        try:
            validate_postprocess(model["postprocess"], len(classes), source)
        except ValueError as exc:
            raise ModelFormatError(str(exc)) from None
    if model.get("test_time") is not None:
        try:
            validate_test_time(model["test_time"], source)
        except ValueError as exc:
            raise ModelFormatError(str(exc)) from None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    """repr of a bad value for an error message: one line, cut short (it comes from an untrusted file)."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_tensor(name: Any, dtype: str, tensors: Mapping[str, np.ndarray], where: str) -> np.ndarray:
    if not isinstance(name, str):
        raise ModelFormatError(f"{where}: tensor reference must be a string, got {name!r}")
    if name not in tensors:
        raise ModelFormatError(f"{where}: missing tensor '{name}' (not in the file)")
    tensor = tensors[name]
    if _DTYPE_NAMES.get(tensor.dtype) != dtype.upper():
        raise ModelFormatError(f"{where}: tensor '{name}' has dtype {tensor.dtype}, expected {dtype}")
    return tensor


def _check_shapes(kind: str, op: Mapping[str, Any], tensors: Mapping[str, np.ndarray], where: str) -> None:
    """Shape rules between an op's tensors and its integer fields."""

    def vec(key: str, length: int) -> None:
        if tensors[op[key]].shape != (length,):
            raise ModelFormatError(
                f"{where}: '{key}' tensor has shape {tensors[op[key]].shape}, expected ({length},)"
            )

    if kind == "conv2d":
        w = tensors[op["weight"]]
        if w.ndim != 4:
            raise ModelFormatError(f"{where}: conv2d weight must be [O, kh, kw, I], got shape {w.shape}")
        vec("bias", w.shape[0])
    elif kind == "conv2d_u8":
        w = tensors[op["weight"]]
        if w.ndim != 4 or w.shape[1] != w.shape[2] or not 1 <= w.shape[1] <= U8_CONV_MAX_KERNEL:
            raise ModelFormatError(
                f"{where}: conv2d_u8 weight must be [O, k, k, C] with k from 1 to {U8_CONV_MAX_KERNEL}, "
                f"got shape {w.shape}"
            )
        if w.size and (int(w.min()) < U8_CONV_WEIGHT_RANGE[0] or int(w.max()) > U8_CONV_WEIGHT_RANGE[1]):
            raise ModelFormatError(
                f"{where}: conv2d_u8 weights must lie in {list(U8_CONV_WEIGHT_RANGE)}, "
                f"got {int(w.min())} .. {int(w.max())}"
            )
        c = w.shape[3]
        for key in ("pixel_scale", "pixel_zero"):
            if len(op[key]) != c:
                raise ModelFormatError(f"{where}: '{key}' has {len(op[key])} entries for {c} input channels")
        if not all(0 < v < 1e6 for v in op["pixel_scale"]) or not all(
            0 <= v <= 255 for v in op["pixel_zero"]
        ):
            raise ModelFormatError(f"{where}: 'pixel_scale' must be positive and 'pixel_zero' in [0, 255]")
        vec("scale", w.shape[0])
        vec("bias", w.shape[0])
    elif kind == "bconv2d":
        w = tensors[op["weight"]]
        k, c = op["kernel"], op["in_channels"]
        if c < 1 or k < 1:
            raise ModelFormatError(f"{where}: bconv2d needs in_channels >= 1 and kernel >= 1")
        expected = (w.shape[0] if w.ndim else 0, k, k, packed_words(c))
        if w.ndim != 4 or w.shape != expected:
            raise ModelFormatError(
                f"{where}: bconv2d weight has shape {w.shape}, expected {expected} "
                f"for kernel {k} and {c} input channels"
            )
        vec("mul", w.shape[0])
        vec("bias", w.shape[0])
    elif kind == "affine":
        n = tensors[op["mul"]].shape
        if len(n) != 1:
            raise ModelFormatError(f"{where}: affine 'mul' must be a vector, got shape {n}")
        vec("bias", n[0])
    elif kind == "lincomb":
        if len(op["coeffs"]) != len(op["ins"]):
            raise ModelFormatError(
                f"{where}: lincomb has {len(op['ins'])} inputs but {len(op['coeffs'])} coeffs"
            )
    if kind == "maxpool2d" and 2 * op["padding"] > op["kernel"]:
        raise ModelFormatError(
            f"{where}: maxpool2d padding {op['padding']} is more than half its kernel {op['kernel']}"
        )


def validate_graph(graph: Any, tensors: Mapping[str, np.ndarray], source: str = "graph") -> None:
    """Check the op list: known ops, complete fields, tensors present, values defined before use."""
    if not isinstance(graph, dict) or not isinstance(graph.get("ops"), list):
        raise ModelFormatError(f"{source}: graph must be an object with an 'ops' list")
    inputs, outputs = graph.get("inputs"), graph.get("outputs")
    if not (isinstance(inputs, list) and inputs and all(isinstance(v, str) for v in inputs)):
        raise ModelFormatError(f"{source}: graph 'inputs' must be a non-empty list of value names")
    if not (isinstance(outputs, list) and outputs and all(isinstance(v, str) for v in outputs)):
        raise ModelFormatError(f"{source}: graph 'outputs' must be a non-empty list of value names")

    defined = set(inputs)
    for index, op in enumerate(graph["ops"]):
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in _OP_SCHEMAS:
            raise ModelFormatError(
                f"{source}: unknown op {kind!r} (op #{index}); this runtime supports: "
                + ", ".join(SUPPORTED_OPS)
            )
        where = f"{source}: op #{index} ({kind}{', out ' + repr(op.get('out')) if 'out' in op else ''})"
        schema = dict(_OP_SCHEMAS[kind])
        for key, field_kind in _OPTIONAL_FIELDS.get(kind, {}).items():
            if op.get(key) is not None:
                schema[key] = field_kind
        for key, field_kind in schema.items():
            if key not in op:
                raise ModelFormatError(f"{where}: missing field '{key}'")
            value = op[key]
            if field_kind == "value":
                if not isinstance(value, str) or value not in defined:
                    raise ModelFormatError(f"{where}: reads value {value!r} before it is defined")
            elif field_kind == "values":
                if not (isinstance(value, list) and value):
                    raise ModelFormatError(f"{where}: '{key}' must be a non-empty list of value names")
                for name in value:
                    if not isinstance(name, str) or name not in defined:
                        raise ModelFormatError(f"{where}: reads value {name!r} before it is defined")
            elif field_kind == "out":
                if not isinstance(value, str) or not value:
                    raise ModelFormatError(f"{where}: 'out' must be a value name")
            elif field_kind in ("f32", "u64", "i8"):
                _check_tensor(value, field_kind, tensors, where)
            elif field_kind == "int":
                low, high = OP_INT_BOUNDS.get(key, (0, 2**31 - 1))
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                    raise ModelFormatError(
                        f"{where}: field '{key}' must be an integer from {low} to {high}, got {_short(value)}"
                    )
            elif field_kind == "bool":
                if not isinstance(value, bool):
                    raise ModelFormatError(f"{where}: field '{key}' must be true or false, got {value!r}")
            elif field_kind == "floats":
                if not (isinstance(value, list) and all(_finite(v) for v in value)):
                    raise ModelFormatError(f"{where}: field '{key}' must be a list of finite numbers")
            elif field_kind == "size":
                sides = value if isinstance(value, list) and len(value) == 2 else [value]
                if not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_POOL_SIZE for v in sides
                ):
                    raise ModelFormatError(
                        f"{where}: field '{key}' must be an int or [h, w] from 1 to {MAX_POOL_SIZE}"
                    )
        _check_shapes(kind, op, tensors, where)
        if op["out"] in defined:
            raise ModelFormatError(f"{where}: value {op['out']!r} is defined twice")
        defined.add(op["out"])
    for name in outputs:
        if name not in defined:
            raise ModelFormatError(f"{source}: graph output {name!r} is never computed")


def infer_channels(
    graph: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    input_channels: int = 3,
    source: str = "graph",
) -> dict[str, int]:
    """Channel count of every value of a validated graph, checking that each op gets the channels
    its tensors expect (a conv's weight, an affine's scale, a residual, the inputs of a lincomb).

    The spatial sizes depend on the image, so they are checked by the loader's dry run instead.
    """
    channels = {name: input_channels for name in graph["inputs"]}
    for index, op in enumerate(graph["ops"]):
        kind = op["op"]
        where = f"{source}: op #{index} ({kind}, out {op['out']!r})"
        ins = [channels[name] for name in op.get("ins", [])] or [channels[op["in"]]]
        c = ins[0]
        if kind in ("conv2d", "conv2d_u8"):
            w = tensors[op["weight"]]
            if w.shape[3] != c:
                raise ModelFormatError(
                    f"{where}: weight expects {w.shape[3]} input channels, its input has {c}"
                )
            if not (w.shape[1] <= OP_INT_BOUNDS["kernel"][1] and w.shape[2] <= OP_INT_BOUNDS["kernel"][1]):
                raise ModelFormatError(
                    f"{where}: kernel {w.shape[1]}x{w.shape[2]} is over the limit "
                    f"{OP_INT_BOUNDS['kernel'][1]}"
                )
            out = int(w.shape[0])
        elif kind == "bconv2d":
            if op["in_channels"] != c:
                raise ModelFormatError(f"{where}: in_channels is {op['in_channels']}, its input has {c}")
            out = int(tensors[op["weight"]].shape[0])
        elif kind == "affine":
            out = int(tensors[op["mul"]].shape[0])
            if out != c:
                raise ModelFormatError(f"{where}: scales {out} channels, its input has {c}")
        elif kind == "lincomb":
            if len(set(ins)) != 1:
                raise ModelFormatError(f"{where}: adds maps of different channel counts {ins}")
            out = c
        elif kind == "concat":
            out = sum(ins)
        else:  # relu, pooling, upsampling: channels unchanged
            out = c
        if op.get("residual") is not None and channels[op["residual"]] != out:
            raise ModelFormatError(
                f"{where}: residual has {channels[op['residual']]} channels, the output {out}"
            )
        if out < 1:
            raise ModelFormatError(f"{where}: produces no channels")
        channels[op["out"]] = out
    return channels
