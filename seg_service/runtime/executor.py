"""Runs the op list of a packed graph (docs/format.md) with numpy float ops and the binary kernels."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from seg_service import kernels
from seg_service.runtime import ops
from seg_service.runtime.format import ModelFormatError, validate_graph


def _reads(op: Mapping[str, Any]) -> list[str]:
    """Names of the values an op reads."""
    names = list(op.get("ins", []))
    for key in ("in", "like", "residual"):
        if op.get(key) is not None:
            names.append(op[key])
    return names


class GraphExecutor:
    """Executes a validated graph on one input at a time.

    Values are freed after their last use. A value binarised by several binary convolutions (the K
    branches of a group, an ASPP head's parallel convs) is sign-packed once and the packed bits are
    shared.
    """

    def __init__(self, graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray]):
        validate_graph(graph, tensors)
        self.graph = graph
        self.inputs: list[str] = list(graph["inputs"])
        self.outputs: list[str] = list(graph["outputs"])
        self.ops: list[dict[str, Any]] = [dict(op) for op in graph["ops"]]
        self.tensors = tensors
        keep = set(self.outputs)
        self._last_use: dict[str, int] = {}
        self._last_binary_use: dict[str, int] = {}
        for index, op in enumerate(self.ops):
            for name in _reads(op):
                if name not in keep:
                    self._last_use[name] = index
            if op["op"] == "bconv2d":
                self._last_binary_use[op["in"]] = index

    def run(self, feeds: Mapping[str, np.ndarray], keep_all: bool = False,
            profile: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Run the graph; returns the graph outputs, or every value when keep_all (for debugging).

        With a ``profile`` dict, adds the seconds spent in each op kind to it (``bconv2d`` includes
        the sign-packing of its input).
        """
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise ValueError(f"missing graph inputs: {', '.join(missing)}")
        values: dict[str, np.ndarray] = {}
        for name in self.inputs:
            x = np.ascontiguousarray(feeds[name], dtype=np.float32)
            if x.ndim != 3:
                raise ValueError(f"graph input '{name}' must be [H, W, C], got shape {x.shape}")
            values[name] = x
        packed: dict[str, np.ndarray] = {}
        for index, op in enumerate(self.ops):
            start = time.perf_counter() if profile is not None else 0.0
            try:
                values[op["out"]] = self._run_op(op, values, packed)
            except (ValueError, RuntimeError) as exc:
                raise RuntimeError(f"op #{index} ({op['op']} -> {op['out']!r}) failed: {exc}") from exc
            if profile is not None:
                profile[op["op"]] = profile.get(op["op"], 0.0) + time.perf_counter() - start
            for name in _reads(op):
                if self._last_use.get(name) == index and not keep_all:
                    values.pop(name, None)
                if self._last_binary_use.get(name) == index:
                    packed.pop(name, None)
        return values if keep_all else {name: values[name] for name in self.outputs}

    def _run_op(self, op: dict[str, Any], values: dict[str, np.ndarray],
                packed: dict[str, np.ndarray]) -> np.ndarray:
        kind = op["op"]
        t = self.tensors
        if kind == "bconv2d":
            src = op["in"]
            if src not in packed:
                packed[src] = kernels.pack_bits(values[src])
            residual = values[op["residual"]] if op.get("residual") is not None else None
            return kernels.bconv2d(packed[src], t[op["weight"]], op["in_channels"], op["stride"],
                                   op["padding"], op["dilation"], t[op["mul"]], t[op["bias"]],
                                   op["relu_before"], op["relu_after"], residual)
        if kind == "conv2d":
            return ops.conv2d(values[op["in"]], t[op["weight"]], t[op["bias"]], op["stride"], op["padding"],
                              op["dilation"], op["relu"])
        if kind == "affine":
            residual = values[op["residual"]] if op.get("residual") is not None else None
            return ops.affine(values[op["in"]], t[op["mul"]], t[op["bias"]], op["relu_before"],
                              op["relu_after"], residual)
        if kind == "lincomb":
            return ops.lincomb([values[n] for n in op["ins"]], op["coeffs"])
        if kind == "relu":
            return ops.relu(values[op["in"]])
        if kind == "maxpool2d":
            return ops.maxpool2d(values[op["in"]], op["kernel"], op["stride"], op["padding"])
        if kind == "global_avgpool":
            return ops.global_avgpool(values[op["in"]])
        if kind == "adaptive_avgpool":
            return ops.adaptive_avgpool(values[op["in"]], op["size"])
        if kind == "upsample_bilinear":
            like = values[op["like"]]
            return ops.upsample_bilinear(values[op["in"]], like.shape[0], like.shape[1])
        if kind == "concat":
            return ops.concat([values[n] for n in op["ins"]])
        raise ModelFormatError(f"unknown op {kind!r}")  # unreachable after validate_graph
