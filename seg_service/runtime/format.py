"""The packed model file (``.gnpk``): write, read and validate.

This module is the single source of truth for the file layout described in ``docs/format.md``.
The exporter in ``training/`` writes through :func:`write_model`; the runtime reads through
:func:`read_model`. It depends on numpy and safetensors only (no torch).

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
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg_service.runtime.refine import validate_postprocess

FORMAT_NAME = "groupnet-packed"
FORMAT_VERSION = 2  # the newest version this runtime reads and writes
# Version 2 adds the optional model key "postprocess" (refine.py). A file carries the lowest version
# that describes it, so files without post-processing stay readable by version-1 readers, and a
# version-1 reader refuses, rather than silently runs without, a model's post-processing.
READABLE_VERSIONS = ("1", "2")
FILE_EXTENSION = ".gnpk"

# Sanity cap on the JSON header: a larger length field means a corrupt or foreign file.
_MAX_HEADER_BYTES = 64 * 1024 * 1024

# safetensors dtype strings <-> numpy dtypes (little-endian) used by this format.
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
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
#   "f32" / "u64" name of a tensor in the file with that dtype
#   "int" / "bool" / "floats" / "size"  plain JSON fields ("size": int or [h, w])
_OP_SCHEMAS: dict[str, dict[str, str]] = {
    "conv2d": {"in": "value", "out": "out", "weight": "f32", "bias": "f32", "stride": "int",
               "padding": "int", "dilation": "int", "relu": "bool"},
    "bconv2d": {"in": "value", "out": "out", "weight": "u64", "in_channels": "int", "kernel": "int",
                "stride": "int", "padding": "int", "dilation": "int", "mul": "f32", "bias": "f32",
                "relu_before": "bool", "relu_after": "bool"},
    "affine": {"in": "value", "out": "out", "mul": "f32", "bias": "f32", "relu_before": "bool",
               "relu_after": "bool"},
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


def compute_checksum(model_json: str, graph_json: str, tensors: Iterable[tuple[str, str, tuple[int, ...], Any]]) -> str:
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


def encode_model(model: Mapping[str, Any], graph: Mapping[str, Any],
                 tensors: Mapping[str, np.ndarray]) -> bytes:
    """Validate a model description, graph and tensors, and return the packed file's bytes."""
    from safetensors.numpy import save  # local: reading never needs the library

    arrays = {name: _canonical_tensor(name, t) for name, t in tensors.items()}
    model = dict(model)
    graph = dict(graph)
    validate_model_description(model)
    validate_graph(graph, arrays)
    model_json = json.dumps(model, sort_keys=True, separators=(",", ":"))
    graph_json = json.dumps(graph, separators=(",", ":"))
    checksum = compute_checksum(model_json, graph_json,
                       ((n, _DTYPE_NAMES[a.dtype], a.shape, a.tobytes()) for n, a in arrays.items()))
    version = 2 if model.get("postprocess") is not None else 1
    metadata = {"format": FORMAT_NAME, "format_version": str(version), "model": model_json,
                "graph": graph_json, "sha256": checksum}
    return save(arrays, metadata=metadata)


def write_model(path: str | os.PathLike[str], model: Mapping[str, Any], graph: Mapping[str, Any],
                tensors: Mapping[str, np.ndarray]) -> str:
    """Write a packed model file; returns its checksum. The file appears atomically."""
    data = encode_model(model, graph, tensors)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]["sha256"]


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
        raise ModelFormatError(f"{source}: not a packed model file (header length field {header_len} is absurd)")
    if 8 + header_len > size:
        raise ModelFormatError(
            f"{source}: truncated file: header needs {header_len} bytes but only {size - 8} follow")
    try:
        header = json.loads(bytes(buf[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{source}: corrupt file header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{source}: corrupt file header (not a JSON object)")

    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{source}: not a packed model file (metadata 'format' is not '{FORMAT_NAME}')")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFormatError(f"{source}: unsupported format version {version!r}; this runtime reads versions "
                               f"{', '.join(READABLE_VERSIONS)}")
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
            f"{source}: truncated file: tensor data needs {needed} bytes but only {data_len} are present")

    payload = buf[data_start:]
    checksum = compute_checksum(metadata["model"], metadata["graph"],
                       ((n, d, s, payload[b:e]) for n, d, s, b, e in entries))
    if checksum != metadata["sha256"]:
        raise ModelFormatError(
            f"{source}: checksum mismatch (file says {metadata['sha256'][:12]}..., content hashes to "
            f"{checksum[:12]}...): the file is corrupt or was modified after export")

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
    return PackedFile(model=model, graph=graph, tensors=tensors, checksum=checksum, file_size=size,
                      metadata=dict(metadata))


def read_model(path: str | os.PathLike[str]) -> PackedFile:
    """Read, verify (format, version, checksum) and validate a packed model file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
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
    classes, palette, spec = model["classes"], model["palette"], model["input"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelFormatError(f"{source}: 'classes' must be a non-empty list of names")
    if len(classes) > 256:
        raise ModelFormatError(f"{source}: {len(classes)} classes do not fit an 8-bit label mask (max 256)")
    if (not isinstance(palette, list) or len(palette) != len(classes)
            or not all(isinstance(p, list) and len(p) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                     for v in p) for p in palette)):
        raise ModelFormatError(f"{source}: 'palette' must hold one [r, g, b] (0-255) per class")
    if not isinstance(spec, dict):
        raise ModelFormatError(f"{source}: 'input' must be a JSON object")
    for key in ("mean", "std"):
        if not (isinstance(spec.get(key), list) and len(spec[key]) == 3):
            raise ModelFormatError(f"{source}: input '{key}' must be a list of 3 numbers")
    if any(s == 0 for s in spec["std"]):
        raise ModelFormatError(f"{source}: input 'std' must not contain zeros")
    for key in ("size_divisor", "max_side"):
        if not (isinstance(spec.get(key), int) and spec[key] > 0):
            raise ModelFormatError(f"{source}: input '{key}' must be a positive integer")
    if spec.get("channel_order", "RGB") != "RGB":
        raise ModelFormatError(f"{source}: unsupported input channel_order {spec.get('channel_order')!r}")
    if model.get("postprocess") is not None:
        try:
            validate_postprocess(model["postprocess"], len(classes), source)
        except ValueError as exc:
            raise ModelFormatError(str(exc)) from None


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
            raise ModelFormatError(f"{where}: '{key}' tensor has shape {tensors[op[key]].shape}, expected ({length},)")

    if kind == "conv2d":
        w = tensors[op["weight"]]
        if w.ndim != 4:
            raise ModelFormatError(f"{where}: conv2d weight must be [O, kh, kw, I], got shape {w.shape}")
        vec("bias", w.shape[0])
    elif kind == "bconv2d":
        w = tensors[op["weight"]]
        k, c = op["kernel"], op["in_channels"]
        if c < 1 or k < 1:
            raise ModelFormatError(f"{where}: bconv2d needs in_channels >= 1 and kernel >= 1")
        expected = (w.shape[0] if w.ndim else 0, k, k, (c + 63) // 64)
        if w.ndim != 4 or w.shape != expected:
            raise ModelFormatError(f"{where}: bconv2d weight has shape {w.shape}, expected {expected} "
                                   f"for kernel {k} and {c} input channels")
        vec("mul", w.shape[0])
        vec("bias", w.shape[0])
    elif kind == "affine":
        n = tensors[op["mul"]].shape
        if len(n) != 1:
            raise ModelFormatError(f"{where}: affine 'mul' must be a vector, got shape {n}")
        vec("bias", n[0])
    elif kind == "lincomb":
        if len(op["coeffs"]) != len(op["ins"]):
            raise ModelFormatError(f"{where}: lincomb has {len(op['ins'])} inputs but {len(op['coeffs'])} coeffs")
    for key in ("stride", "dilation", "kernel"):
        if key in op and op[key] < 1:
            raise ModelFormatError(f"{where}: '{key}' must be >= 1, got {op[key]}")
    if op.get("padding", 0) < 0:
        raise ModelFormatError(f"{where}: 'padding' must be >= 0, got {op['padding']}")


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
            raise ModelFormatError(f"{source}: unknown op {kind!r} (op #{index}); this runtime supports: "
                                   + ", ".join(SUPPORTED_OPS))
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
            elif field_kind in ("f32", "u64"):
                _check_tensor(value, field_kind, tensors, where)
            elif field_kind == "int":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ModelFormatError(f"{where}: field '{key}' must be an integer, got {value!r}")
            elif field_kind == "bool":
                if not isinstance(value, bool):
                    raise ModelFormatError(f"{where}: field '{key}' must be true or false, got {value!r}")
            elif field_kind == "floats":
                if not (isinstance(value, list)
                        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
                    raise ModelFormatError(f"{where}: field '{key}' must be a list of numbers")
            elif field_kind == "size":
                ok = (isinstance(value, int) and value > 0) or (
                    isinstance(value, list) and len(value) == 2
                    and all(isinstance(v, int) and v > 0 for v in value))
                if not ok:
                    raise ModelFormatError(f"{where}: field '{key}' must be a positive int or [h, w]")
        _check_shapes(kind, op, tensors, where)
        if op["out"] in defined:
            raise ModelFormatError(f"{where}: value {op['out']!r} is defined twice")
        defined.add(op["out"])
    for name in outputs:
        if name not in defined:
            raise ModelFormatError(f"{source}: graph output {name!r} is never computed")
