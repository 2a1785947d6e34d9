"""Runs the op list of a packed graph (docs/format.md) with numpy float ops and the binary kernels."""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from seg_service import kernels
from seg_service.runtime import ops
from seg_service.runtime.format import ModelFormatError, validate_graph

PROFILE_ENV = "SEG_PROFILE"
"""Set to 1 to profile every run of every executor and print the profile to stderr at exit."""


def _reads(op: Mapping[str, Any]) -> list[str]:
    """Names of the values an op reads."""
    names = list(op.get("ins", []))
    for key in ("in", "like", "residual"):
        if op.get(key) is not None:
            names.append(op[key])
    return names


@dataclass
class OpTiming:
    """Accumulated time of one op of the graph (or of the sign-packing of a shared binary input)."""

    index: int  # position in the op list
    kind: str  # op kind, or "pack_bits" for packing a value that several binary convs read
    out: str  # the value it writes (for pack_bits: the value it packs)
    detail: str  # shape and parameters, e.g. "64x64x256 -> 256 k3 d2"
    macs: int  # multiply-adds per run (binary ones for bconv2d); 0 where it does not apply
    seconds: float = 0.0
    runs: int = 0

    @property
    def ms_per_run(self) -> float:
        return self.seconds / max(1, self.runs) * 1e3

    @property
    def gmacs_per_s(self) -> float:
        return self.macs * self.runs / self.seconds / 1e9 if self.seconds > 0 else 0.0


class RunProfile:
    """Time per op over one or more ``GraphExecutor.run`` calls (wall clock, all threads together).

    ``by_kind()`` sums per op kind; ``ops`` holds one ``OpTiming`` per op (and per sign-packing of a
    value read by several binary convs, kind ``pack_bits``); ``format()`` renders both.
    """

    def __init__(self) -> None:
        self.runs = 0
        self.total_seconds = 0.0
        self._timings: dict[tuple[int, str], OpTiming] = {}

    @property
    def ops(self) -> list[OpTiming]:
        return sorted(self._timings.values(), key=lambda t: (t.index, t.kind != "pack_bits"))

    def add(self, index: int, kind: str, out: str, detail: str, macs: int, seconds: float) -> None:
        timing = self._timings.get((index, kind))
        if timing is None:
            timing = self._timings[(index, kind)] = OpTiming(index, kind, out, detail, macs)
        timing.seconds += seconds
        timing.runs += 1

    def by_kind(self) -> dict[str, float]:
        """Seconds per op kind, largest first, summed over all runs."""
        totals: dict[str, float] = {}
        for t in self._timings.values():
            totals[t.kind] = totals.get(t.kind, 0.0) + t.seconds
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def format(self, top: int = 15) -> str:
        """Per-kind shares and the ``top`` most expensive ops, as plain text."""
        runs = max(1, self.runs)
        total_ms = self.total_seconds / runs * 1e3
        lines = [f"profile: {self.runs} run(s), {total_ms:.2f} ms per run"]
        lines.append(f"{'op kind':<20} {'ms/run':>9} {'share':>6}")
        for kind, seconds in self.by_kind().items():
            ms = seconds / runs * 1e3
            lines.append(f"{kind:<20} {ms:>9.2f} {ms / total_ms * 100 if total_ms else 0:>5.1f}%")
        lines.append(f"{'#':>4} {'op':<18} {'output':<28} {'detail':<36} {'ms/run':>8} {'G MAC/s':>8}")
        for t in sorted(self._timings.values(), key=lambda t: -t.seconds)[:top]:
            rate = f"{t.gmacs_per_s:8.0f}" if t.macs else f"{'-':>8}"
            lines.append(f"{t.index:>4} {t.kind:<18} {t.out[:28]:<28} {t.detail[:36]:<36} {t.ms_per_run:>8.3f} {rate}")
        return "\n".join(lines)


_ENV_PROFILES: list[RunProfile] = []


def _print_env_profiles() -> None:
    for i, profile in enumerate(_ENV_PROFILES):
        if profile.runs:
            print(f"[{PROFILE_ENV}] executor {i}\n{profile.format()}", file=sys.stderr)


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


@dataclass(frozen=True)
class LincombGroup:
    """A run of consecutive ``lincomb`` ops computed by one ``kernels.lincomb_group`` call.

    A Group-Net block ends in such a run: the gated sum of its K branches, then the K soft-gate
    mixes that read that sum. Computing them together reads each branch map once instead of twice.
    """

    indices: tuple[int, ...]  # op indices of the members, in order
    inputs: tuple[str, ...]  # values read from outside the group
    outputs: tuple[str, ...]  # one per member
    program: tuple[tuple[tuple[int, float], ...], ...]  # per member: (source, coeff), see lincomb_group


def lincomb_groups(ops_list: list[dict[str, Any]]) -> list[LincombGroup]:
    """Every maximal run of consecutive lincomb ops (runs of one op included) as a LincombGroup."""
    groups: list[LincombGroup] = []
    index = 0
    while index < len(ops_list):
        if ops_list[index]["op"] != "lincomb":
            index += 1
            continue
        end = index
        while end < len(ops_list) and ops_list[end]["op"] == "lincomb":
            end += 1
        members = ops_list[index:end]
        produced = {op["out"]: j for j, op in enumerate(members)}
        inputs: list[str] = []
        for j, op in enumerate(members):
            for name in op["ins"]:
                if produced.get(name, j) >= j and name not in inputs:
                    inputs.append(name)
        program = []
        for j, op in enumerate(members):
            terms = []
            for name, coeff in zip(op["ins"], op["coeffs"], strict=True):
                source = len(inputs) + produced[name] if produced.get(name, j) < j else inputs.index(name)
                terms.append((source, float(coeff)))
            program.append(tuple(terms))
        groups.append(LincombGroup(tuple(range(index, end)), tuple(inputs),
                                   tuple(op["out"] for op in members), tuple(program)))
        index = end
    return groups


@dataclass(frozen=True)
class ConcatProjection:
    """A ``concat`` read only by a 1x1 float ``conv2d``: the conv runs on the parts, no concat is built.

    An ASPP head ends so: its branches and its image-pooling branch (a 1x1 map upsampled to the
    feature size) are concatenated and projected. The upsampling ops in ``broadcasts`` feed only
    the concat; they pass their 1x1 input on, and the projection adds its part as a constant.
    """

    concat: int  # op index of the concat (not run on its own)
    conv: int  # op index of the 1x1 conv2d that reads it
    broadcasts: frozenset[int]  # upsample_bilinear ops whose 1x1 input is passed on as it is


def concat_projections(ops_list: list[dict[str, Any]], tensors: Mapping[str, np.ndarray],
                       outputs: list[str]) -> list[ConcatProjection]:
    """Every concat whose only reader is a 1x1, stride-1, unpadded float conv2d."""
    readers: dict[str, list[int]] = {}
    for index, op in enumerate(ops_list):
        for name in _reads(op):
            readers.setdefault(name, []).append(index)
    producers = {op["out"]: index for index, op in enumerate(ops_list)}
    found = []
    for index, op in enumerate(ops_list):
        if op["op"] != "concat" or op["out"] in outputs or len(readers.get(op["out"], [])) != 1:
            continue
        conv = ops_list[readers[op["out"]][0]]
        weight = tensors[conv["weight"]] if conv["op"] == "conv2d" else None
        if weight is None or weight.shape[1:3] != (1, 1) or conv["stride"] != 1 or conv["padding"] != 0:
            continue
        broadcasts = set()
        for name in op["ins"]:
            producer = producers.get(name)
            if (producer is not None and ops_list[producer]["op"] == "upsample_bilinear"
                    and name not in outputs and readers.get(name) == [index]):
                broadcasts.add(producer)
        if len(broadcasts) == len(op["ins"]):
            broadcasts = set()  # some part must give the output its spatial size
        found.append(ConcatProjection(index, readers[op["out"]][0], frozenset(broadcasts)))
    return found


def bconv_chains(ops_list: list[dict[str, Any]], tensors: Mapping[str, np.ndarray],
                 outputs: list[str]) -> list[tuple[int, ...]]:
    """Runs of consecutive bconv2d ops that ``kernels.bconv2d_chain`` computes in one call.

    Each op after the first reads the same input with the same geometry, takes the previous op's
    output as its residual, and that output has no other reader: the bases of a layer-wise binary
    decomposition (a binary ASPP branch) adding up.
    """
    readers: dict[str, list[int]] = {}
    for index, op in enumerate(ops_list):
        for name in _reads(op):
            readers.setdefault(name, []).append(index)

    def geometry(op: dict[str, Any]) -> tuple[Any, ...]:
        return (op["in"], op["in_channels"], tensors[op["weight"]].shape[:3], op["stride"], op["padding"],
                op["dilation"])

    chains = []
    index = 0
    while index < len(ops_list):
        chain = [index]
        if ops_list[index]["op"] == "bconv2d":
            while chain[-1] + 1 < len(ops_list):
                prev, nxt = ops_list[chain[-1]], ops_list[chain[-1] + 1]
                if not (nxt["op"] == "bconv2d" and geometry(nxt) == geometry(prev)
                        and nxt.get("residual") == prev["out"] and prev["out"] not in outputs
                        and readers.get(prev["out"]) == [chain[-1] + 1]):
                    break
                chain.append(chain[-1] + 1)
        if len(chain) > 1:
            chains.append(tuple(chain))
        index = chain[-1] + 1
    return chains


class GraphExecutor:
    """Executes a validated graph on one input at a time.

    Values are freed after their last use. Binary conv weights are arranged for the kernels once,
    here (``kernels.prepare_weights``). A value binarised by binary convolutions is sign-packed once
    and the packed bits are shared: by its producer's epilogue where that is a binary conv or a
    lincomb group (``pack_output``), else by ``kernels.pack_bits`` when several binary convs read it
    (the K branches of a group, an ASPP head's parallel convs), else inside the one conv that reads
    it (``kernels.bconv2d_float``). Each run of consecutive ``lincomb`` ops is one
    ``kernels.lincomb_group`` call (``LincombGroup``), with the numpy ops as the fallback for
    inputs the kernel does not take (maps of different shapes or dtypes). A concat read only by a
    1x1 float conv is never built (``ConcatProjection``), and the bases of a binary ASPP branch add
    up in cache in one ``kernels.bconv2d_chain`` call (``bconv_chains``).
    """

    def __init__(self, graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray]):
        validate_graph(graph, tensors)
        self.graph = graph
        self.inputs: list[str] = list(graph["inputs"])
        self.outputs: list[str] = list(graph["outputs"])
        self.ops: list[dict[str, Any]] = [dict(op) for op in graph["ops"]]
        self.tensors = tensors
        keep = set(self.outputs)
        self._projections = {p.conv: p for p in concat_projections(self.ops, tensors, self.outputs)}
        concat_reader = {p.concat: p.conv for p in self._projections.values()}
        # conv2d output -> the names of its concat's parts; upsample outputs passed on at 1x1.
        self._projection_parts = {self.ops[p.conv]["out"]: list(self.ops[p.concat]["ins"])
                                  for p in self._projections.values()}
        self._broadcast_outputs = {self.ops[i]["out"] for p in self._projections.values() for i in p.broadcasts}
        self._last_use: dict[str, int] = {}
        self._last_binary_use: dict[str, int] = {}
        binary_readers: dict[str, int] = {}
        self._prepared: dict[tuple[str, int], kernels.PreparedWeights] = {}
        for index, op in enumerate(self.ops):
            for name in _reads(op):
                if name not in keep:
                    # A fused concat's parts are read when its projection runs.
                    self._last_use[name] = concat_reader.get(index, index)
            if op["op"] == "bconv2d":
                self._last_binary_use[op["in"]] = index
                binary_readers[op["in"]] = binary_readers.get(op["in"], 0) + 1
                key = (op["weight"], op["in_channels"])
                if key not in self._prepared:
                    self._prepared[key] = kernels.prepare_weights(tensors[op["weight"]], op["in_channels"])
        self._shared_binary_inputs = {name for name, count in binary_readers.items() if count > 1}
        # Values read by binary convs: their producer, if a binary conv or a lincomb group, also
        # writes their sign bits in its epilogue, so no conv re-reads the floats to pack them.
        self._binary_inputs = set(binary_readers)
        self._lincomb_groups = {group.indices[0]: group for group in lincomb_groups(self.ops)}
        # Group outputs that no op outside the group reads as floats (only as a binary conv's input,
        # or not at all) are never written to memory: a block's branch sum, the gated inputs of a
        # block whose residual comes from its downsampling conv.
        float_readers: dict[str, set[int]] = {}
        for index, op in enumerate(self.ops):
            for name in _reads(op):
                if op["op"] == "bconv2d" and name == op["in"] and name != op.get("residual"):
                    continue
                float_readers.setdefault(name, set()).add(index)
        self._dropped_outputs = {
            start: [m for m, name in enumerate(group.outputs)
                    if name not in keep and float_readers.get(name, set()) <= set(group.indices)]
            for start, group in self._lincomb_groups.items()}
        self._grouped = {i for group in self._lincomb_groups.values() for i in group.indices[1:]}
        self._chains = {chain[0]: chain for chain in bconv_chains(self.ops, tensors, self.outputs)}
        # Ops that run inside another op: lincomb group and chain members after the first, fused concats.
        self.computed_elsewhere = frozenset(self._grouped | set(concat_reader)
                                            | {i for chain in self._chains.values() for i in chain[1:]})
        # Filled by the environment switch SEG_PROFILE=1 (see run()).
        self.profile: RunProfile | None = None
        if os.environ.get(PROFILE_ENV, "").strip() not in ("", "0"):
            self.profile = RunProfile()
            if not _ENV_PROFILES:
                atexit.register(_print_env_profiles)
            _ENV_PROFILES.append(self.profile)

    def run(self, feeds: Mapping[str, np.ndarray], keep_all: bool = False,
            profile: RunProfile | dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Run the graph; returns the graph outputs, or every value when keep_all (for debugging).

        With keep_all, lincomb groups write every output; values that only ever exist inside a
        fused op (a chain's intermediate bases, a concat read by its projection, which gets its
        1x1 image-pooling part un-upsampled) are not in the result.

        ``profile``: a ``RunProfile`` to add this run's time per op to, or (older form) a dict that
        receives the seconds per op kind. Sign-packing of a value shared by several binary convs is
        reported as its own kind, ``pack_bits``; ``bconv2d`` includes packing its input otherwise.
        With ``SEG_PROFILE=1`` in the environment every run is also added to ``self.profile``.
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
        recorders = [p for p in (profile if isinstance(profile, RunProfile) else None, self.profile) if p is not None]
        if isinstance(profile, dict):
            recorders.append(RunProfile())
        run_start = time.perf_counter()
        packed: dict[str, np.ndarray] = {}
        for index, op in enumerate(self.ops):
            try:
                if index in self.computed_elsewhere:
                    pass  # computed with the first op of its lincomb group, or by its projection
                elif index in self._chains:
                    self._run_chain(index, values, packed, recorders)
                elif index in self._lincomb_groups:
                    self._run_lincomb_group(self._lincomb_groups[index], values, packed, recorders,
                                            [] if keep_all else self._dropped_outputs[index])
                elif recorders:
                    self._run_op_timed(index, op, values, packed, recorders)
                else:
                    values[op["out"]] = self._run_op(op, values, packed)
            except (ValueError, RuntimeError) as exc:
                raise RuntimeError(f"op #{index} ({op['op']} -> {op['out']!r}) failed: {exc}") from exc
            for name in _reads(op):
                if self._last_use.get(name) == index and not keep_all:
                    values.pop(name, None)
                if self._last_binary_use.get(name) == index:
                    packed.pop(name, None)
        elapsed = time.perf_counter() - run_start
        for recorder in recorders:
            recorder.runs += 1
            recorder.total_seconds += elapsed
        if isinstance(profile, dict):
            for kind, seconds in recorders[-1].by_kind().items():
                profile[kind] = profile.get(kind, 0.0) + seconds
        return values if keep_all else {name: values[name] for name in self.outputs}

    def _run_chain(self, index: int, values: dict[str, np.ndarray], packed: dict[str, np.ndarray],
                   recorders: list[RunProfile]) -> None:
        start = time.perf_counter()
        members = [self.ops[i] for i in self._chains[index]]
        first, last = members[0], members[-1]
        src = first["in"]
        if src not in packed:
            packed[src] = kernels.pack_bits(values[src])
        t = self.tensors
        bases = [(self._prepared[(op["weight"], op["in_channels"])], t[op["mul"]], t[op["bias"]],
                  op["relu_before"], op["relu_after"]) for op in members]
        residual = values[first["residual"]] if first.get("residual") is not None else None
        pack_output = last["out"] in self._binary_inputs
        result = kernels.bconv2d_chain(packed[src], bases, first["in_channels"], first["stride"], first["padding"],
                                       first["dilation"], residual=residual, pack_output=pack_output)
        if pack_output:
            values[last["out"]], packed[last["out"]] = result
        else:
            values[last["out"]] = result
        seconds = time.perf_counter() - start
        if recorders:
            detail, macs = self._describe(first, values, packed, values[last["out"]])
            for recorder in recorders:
                recorder.add(index, "bconv2d", last["out"], f"{detail} x{len(members)}", macs * len(members),
                             seconds)

    def _run_lincomb_group(self, group: LincombGroup, values: dict[str, np.ndarray],
                           packed: dict[str, np.ndarray], recorders: list[RunProfile], drop: list[int]) -> None:
        start = time.perf_counter()
        inputs = [values[name] for name in group.inputs]
        first = inputs[0]
        if all(x.dtype == np.float32 and x.shape == first.shape for x in inputs):
            pack = [m for m, name in enumerate(group.outputs) if name in self._binary_inputs] if first.ndim == 3 else []
            outs, bits = kernels.lincomb_group(inputs, group.program, pack_outputs=pack, drop_outputs=drop)
            values.update((name, out) for name, out in zip(group.outputs, outs, strict=True) if out is not None)
            packed.update((group.outputs[m], bits[m]) for m in pack)
        else:
            for index in group.indices:
                op = self.ops[index]
                values[op["out"]] = ops.lincomb([values[n] for n in op["ins"]], op["coeffs"])
        seconds = time.perf_counter() - start
        if recorders:
            detail = f"{_shape_str(first.shape)} x{len(group.outputs)} from {len(group.inputs)}"
            for recorder in recorders:
                recorder.add(group.indices[0], "lincomb", group.outputs[0], detail, 0, seconds)

    def _run_op_timed(self, index: int, op: dict[str, Any], values: dict[str, np.ndarray],
                      packed: dict[str, np.ndarray], recorders: list[RunProfile]) -> None:
        if op["op"] == "bconv2d" and op["in"] in self._shared_binary_inputs and op["in"] not in packed:
            start = time.perf_counter()
            packed[op["in"]] = kernels.pack_bits(values[op["in"]])
            seconds = time.perf_counter() - start
            x = values[op["in"]]
            for recorder in recorders:
                recorder.add(index, "pack_bits", op["in"], _shape_str(x.shape), 0, seconds)
        start = time.perf_counter()
        out = values[op["out"]] = self._run_op(op, values, packed)
        seconds = time.perf_counter() - start
        detail, macs = self._describe(op, values, packed, out)
        for recorder in recorders:
            recorder.add(index, op["op"], op["out"], detail, macs, seconds)

    def _describe(self, op: dict[str, Any], values: dict[str, np.ndarray], packed: dict[str, np.ndarray],
                  out: np.ndarray) -> tuple[str, int]:
        """A short description of an op's shapes and its multiply-adds per run."""
        kind = op["op"]
        if kind in ("bconv2d", "conv2d"):
            weight = self.tensors[op["weight"]]
            k = weight.shape[1]
            in_channels = op["in_channels"] if kind == "bconv2d" else weight.shape[3]
            macs = out.shape[0] * out.shape[1] * out.shape[2] * k * k * in_channels
            params = f"k{k}" + (f" s{op['stride']}" if op["stride"] != 1 else "") + \
                (f" d{op['dilation']}" if op["dilation"] != 1 else "")
            if op["out"] in self._projection_parts:
                # A concat that was never built: count the MACs of its full-size parts only (a 1x1
                # part went into the bias).
                full = [values[n].shape[2] for n in self._projection_parts[op["out"]] if values[n].shape[:2] != (1, 1)]
                macs = out.shape[0] * out.shape[1] * out.shape[2] * sum(full)
                return (f"{out.shape[0]}x{out.shape[1]}x{sum(full)} (+{in_channels - sum(full)} as bias) "
                        f"-> {out.shape[2]} {params}"), int(macs)
            # The input may exist as packed bits only (its producer never wrote the floats).
            src = values.get(op["in"], packed.get(op["in"]))
            src_shape = f"{src.shape[0]}x{src.shape[1]}x{in_channels}" if src is not None else f"?x?x{in_channels}"
            return f"{src_shape} -> {out.shape[2]} {params}", int(macs)
        return _shape_str(out.shape), 0

    def _run_op(self, op: dict[str, Any], values: dict[str, np.ndarray],
                packed: dict[str, np.ndarray]) -> np.ndarray:
        kind = op["op"]
        t = self.tensors
        if kind == "bconv2d":
            src = op["in"]
            weight = self._prepared[(op["weight"], op["in_channels"])]
            residual = values[op["residual"]] if op.get("residual") is not None else None
            pack_output = op["out"] in self._binary_inputs
            if src not in packed and src not in self._shared_binary_inputs:
                result = kernels.bconv2d_float(values[src], weight, op["stride"], op["padding"], op["dilation"],
                                               t[op["mul"]], t[op["bias"]], op["relu_before"], op["relu_after"],
                                               residual, pack_output=pack_output)
            else:
                if src not in packed:
                    packed[src] = kernels.pack_bits(values[src])
                result = kernels.bconv2d(packed[src], weight, op["in_channels"], op["stride"],
                                         op["padding"], op["dilation"], t[op["mul"]], t[op["bias"]],
                                         op["relu_before"], op["relu_after"], residual, pack_output=pack_output)
            if not pack_output:
                return result
            out, packed[op["out"]] = result
            return out
        if kind == "conv2d" and op["out"] in self._projection_parts:
            parts = [values[n] for n in self._projection_parts[op["out"]]]
            return ops.conv1x1_of_concat(parts, t[op["weight"]], t[op["bias"]], op["relu"])
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
            src = values[op["in"]]
            if op["out"] in self._broadcast_outputs and src.shape[:2] == (1, 1):
                return src  # a constant map: its concat's projection adds it as a bias
            like = values[op["like"]]
            return ops.upsample_bilinear(values[op["in"]], like.shape[0], like.shape[1])
        if kind == "concat":
            return ops.concat([values[n] for n in op["ins"]])
        raise ModelFormatError(f"unknown op {kind!r}")  # unreachable after validate_graph
