"""Runs a packed graph (docs/format.md): ``GraphExecutor`` interprets the steps that ``plan.plan_graph``
made of it once, at load, and ``RunProfile`` times them."""

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
from seg_service.format import validate_graph
from seg_service.runtime.plan import Step, op_reads, plan_graph

PROFILE_ENV = "SEG_PROFILE"
"""Set to 1 to profile every run of every executor and print the profile to stderr at exit."""


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
            lines.append(
                f"{t.index:>4} {t.kind:<18} {t.out[:28]:<28} {t.detail[:36]:<36} {t.ms_per_run:>8.3f} {rate}"
            )
        return "\n".join(lines)


_ENV_PROFILES: list[RunProfile] = []


def _print_env_profiles() -> None:
    for i, profile in enumerate(_ENV_PROFILES):
        if profile.runs:
            print(f"[{PROFILE_ENV}] executor {i}\n{profile.format()}", file=sys.stderr)


class GraphExecutor:
    """Executes a validated graph on one input at a time: the interpreter of ``plan.plan_graph``'s steps.

    Binary conv weights are arranged for the kernels once, here (``kernels.prepare_weights``). The
    plan (``steps``) says which ops are fused (lincomb groups, binary conv chains, concat projections),
    who sign-packs each value read by binary convs, which outputs are never written and when each
    value is freed (see ``seg_service.runtime.plan``); ``run`` only follows it. Results equal running
    the ops one by one (tests/runtime).
    """

    def __init__(self, graph: Mapping[str, Any], tensors: Mapping[str, np.ndarray]):
        validate_graph(graph, tensors)
        self.graph = graph
        self.inputs: list[str] = list(graph["inputs"])
        self.outputs: list[str] = list(graph["outputs"])
        self.ops: list[dict[str, Any]] = [dict(op) for op in graph["ops"]]
        self.tensors = tensors
        prepared: dict[tuple[str, int], kernels.PreparedWeights] = {}

        def prepare(op: Mapping[str, Any]) -> kernels.PreparedWeights:
            key = (op["weight"], op["in_channels"])
            if key not in prepared:
                prepared[key] = kernels.prepare_weights(tensors[op["weight"]], op["in_channels"])
            return prepared[key]

        self.steps: list[Step] = plan_graph(graph, tensors, prepare)
        # Inputs read only by conv2d_u8 ops, which can take the image's u8 pixels instead of floats
        # (an upsampling's `like` reads only the size).
        readers: dict[str, set[str]] = {name: set() for name in self.inputs}
        for op in self.ops:
            for name in op_reads(op):
                if name in readers and name != op.get("like"):
                    readers[name].add(op["op"])
        self.pixel_inputs = frozenset(name for name, kinds in readers.items() if kinds == {"conv2d_u8"})
        # Ops that run inside another op's step: lincomb group and chain members after the first,
        # fused concats.
        self.computed_elsewhere = frozenset(range(len(self.ops))) - {step.index for step in self.steps}
        # Filled by the environment switch SEG_PROFILE=1 (see run()).
        self.profile: RunProfile | None = None
        if os.environ.get(PROFILE_ENV, "").strip() not in ("", "0"):
            self.profile = RunProfile()
            if not _ENV_PROFILES:
                atexit.register(_print_env_profiles)
            _ENV_PROFILES.append(self.profile)

    def run(
        self, feeds: Mapping[str, np.ndarray], keep_all: bool = False, profile: RunProfile | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph; returns the graph outputs, or every value when keep_all (for debugging).

        With keep_all, lincomb groups write every output; values that only ever exist inside a
        fused step (a chain's intermediate bases, a concat read by its projection, which gets its
        1x1 image-pooling part un-upsampled) are not in the result.

        ``profile``: a ``RunProfile`` to add this run's time per step to. Sign-packing of a value
        shared by several binary convs is reported as its own kind, ``pack_bits``; ``bconv2d``
        includes packing its input otherwise. With ``SEG_PROFILE=1`` in the environment every run
        is also added to ``self.profile``.
        """
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise ValueError(f"missing graph inputs: {', '.join(missing)}")
        values: dict[str, np.ndarray] = {}
        for name in self.inputs:
            x = np.asarray(feeds[name])
            # u8 pixels go straight to an integer stem that alone reads them (PackedModel.predict)
            pixels = name in self.pixel_inputs and x.dtype == np.uint8
            x = np.ascontiguousarray(x, dtype=np.uint8 if pixels else np.float32)
            if x.ndim != 3:
                raise ValueError(f"graph input '{name}' must be [H, W, C], got shape {x.shape}")
            values[name] = x
        recorders = [p for p in (profile, self.profile) if p is not None]
        run_start = time.perf_counter()
        bits: dict[str, np.ndarray] = {}
        for step in self.steps:
            start = time.perf_counter()
            try:
                step.run(values, bits, keep_all)
            except (ValueError, RuntimeError) as exc:
                op = self.ops[step.index]
                raise RuntimeError(f"op #{step.index} ({op['op']} -> {op['out']!r}) failed: {exc}") from exc
            if recorders:
                seconds = time.perf_counter() - start
                detail, macs = step.describe(values, bits)
                for recorder in recorders:
                    recorder.add(step.index, step.kind, step.label, detail, macs, seconds)
            if not keep_all:
                for name in step.frees:
                    values.pop(name, None)
            for name in step.frees_bits:
                bits.pop(name, None)
        elapsed = time.perf_counter() - run_start
        for recorder in recorders:
            recorder.runs += 1
            recorder.total_seconds += elapsed
        return values if keep_all else {name: values[name] for name in self.outputs}
