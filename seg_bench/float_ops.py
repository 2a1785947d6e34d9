"""seg-bench ops: every float op the packed runtime executes, against the same op in PyTorch (oneDNN).

The ops are not a hand-written list: they are the float steps of each model's own plan (the steps
``seg_service.runtime`` builds at load, see ``seg_service/runtime/plan.py``), on the feature maps a
real forward pass gives them at the chosen input size. For each step:

- **ours**: the step itself, as the runtime runs it (``step.run`` on its recorded inputs): the stem
  conv (``kernels.conv2d_direct`` on AVX-512/AVX2), the 1x1 convs (numpy matmuls split over rows;
  an ASPP/pyramid projection without its concat, ``conv1x1_of_concat``), max pooling, bilinear
  upsampling, per-channel affine (a BatchNorm left standing), concat, pooling, and each group of
  branch linear combinations (``kernels.lincomb_group``; it also writes the sign bits of the
  outputs binary convs read, and skips outputs no one reads as floats, as in the runtime);
- **torch**: the same op with ``torch.nn.functional`` on the CPU (oneDNN for convolutions and
  pooling) at the same thread count, on the same numbers, in two layouts: ``channels_last`` (a
  zero-copy view of our NHWC arrays) and contiguous NCHW (copied beforehand, untimed); the faster
  median of the two is the reference. A projection gets its full-size parts already concatenated
  (untimed) and the 1x1 parts (image pooling) as a bias; a linear-combination group computes the
  outputs ours writes (and what they need).

Before timing, each op's outputs are compared with PyTorch's (max difference relative to the
largest value): the two must be the same op. Timing: ``repeats`` rounds, each one block of ours
then one of each torch layout (``layers.time_in_blocks`` with one timed sample per block, after an
untimed warm-up: with several threads its settle pause before the block, with one a 5 ms sleep
between warm-up and sample), so ours and PyTorch alternate every repeat; a sample times enough
consecutive calls to last ``--min-sample-ms``; figures are medians (``min ratio``: the same ratio
of the fastest samples, less hit by other processes on a shared machine).
**ratio** = torch ms / ours ms (ours' speed over PyTorch's): the target of issue 18 is >= 0.5.

Per model it also reports the share of the whole forward pass spent in float ops, from the
runtime's own per-op profile (``bench.profile_runtime``, as ``seg-bench model`` prints it): every
op kind but ``bconv2d`` and ``pack_bits`` counts as float; the target is <= 15 %.

    seg-bench ops [--packed weights/person.gnpk weights/camvid.gnpk] [--size 320x240] [--threads 1,2]
                  [--repeats 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seg_service import format as gnpk
from seg_service import kernels
from seg_service.runtime import PackedModel, RunProfile, load_model, set_num_threads

from . import bench
from . import layers as bench_layers

TARGET_SPEED_RATIO = 0.5  # ours' speed / PyTorch's on the same op and threads (issue 18)
TARGET_FLOAT_SHARE = 0.15  # at most this share of a model's forward time in float ops (issue 18)
BINARY_KINDS = frozenset({"bconv2d", "pack_bits"})  # profile kinds that are not float ops
SAME_OP_TOLERANCE = 1e-4  # max |ours - torch| relative to max |torch|: the same op to float rounding
DEFAULT_SIZE = "320x240"
DEFAULT_REPEATS = 7
MIN_SAMPLE_MS = 1.0
PAUSE_SECONDS = 0.005  # sleep before each timed sample with one thread (see time_case)
TORCH_LAYOUTS = ("channels_last", "nchw")

Outputs = list[np.ndarray]


@dataclass
class FloatOpCase:
    """One float step of a model's plan with its recorded inputs, ready to run both ways."""

    index: int  # the op index the runtime's profile reports it under
    kind: str  # the profile's op kind (conv2d, lincomb, upsample_bilinear, ...)
    label: str  # the value it writes (first output of a lincomb group)
    detail: str  # shapes and parameters, as in the runtime's profile
    names: list[str]  # the outputs compared: what ours writes as floats or as sign bits
    ours: Callable[[], Outputs]  # the timed call, as the runtime runs it
    check: Callable[[], Outputs]  # ours' float values of ``names`` (every output written)
    torch: dict[str, Callable[[], list[torch.Tensor]]] = field(default_factory=dict)  # by layout


# --------------------------------------------------------------------------------------------
# The model's float steps
# --------------------------------------------------------------------------------------------


def _steps(model: PackedModel) -> list[Any]:
    """The model's planned steps (``PackedModel.steps``)."""
    return list(model.steps)


def _run_all(model: PackedModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every value of one forward pass on ``x`` (the inputs each step reads)."""
    return model.forward_values(x)


def _nchw(a: np.ndarray, layout: str) -> torch.Tensor:
    """[H, W, C] array -> [1, C, H, W] tensor: a zero-copy channels_last view, or an NCHW copy."""
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)
    return t if layout == "channels_last" else t.contiguous()


def _conv_weight(weight: np.ndarray, layout: str) -> torch.Tensor:
    """[O, kh, kw, I] -> OIHW, in the memory format that goes with ``layout``."""
    w = torch.from_numpy(np.ascontiguousarray(weight)).permute(0, 3, 1, 2)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return w.contiguous(memory_format=fmt)


def _per_channel(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(1, -1, 1, 1)


def _inference(fn: Callable[[], list[torch.Tensor]]) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        with torch.inference_mode():
            return fn()

    return run


def _torch_float_op(
    step: Any, values: dict[str, np.ndarray], layout: str
) -> Callable[[], list[torch.Tensor]]:
    """PyTorch's version of a one-op float step (``plan.FloatOpStep``) on the same inputs."""
    op, kind = step.op, step.kind
    if kind in ("conv2d", "conv2d_u8"):
        source = values[op["in"]]
        if kind == "conv2d_u8":  # PyTorch gets the image the integer stem sees: its pixels, normalised
            pixel_scale = np.asarray(op["pixel_scale"], dtype=np.float32)
            pixel_zero = np.asarray(op["pixel_zero"], dtype=np.float32)
            pixels = (
                source if source.dtype == np.uint8 else kernels.image_pixels(source, pixel_scale, pixel_zero)
            )
            source = ((pixels.astype(np.float32) - pixel_zero) / pixel_scale).astype(np.float32)
        x = _nchw(source, layout)
        # the integer stem against the float conv it stands for (docs/format.md): PyTorch's fp32
        # conv of the normalised image, the op a float model runs there
        weight = (
            gnpk.u8_conv_float_weight(op, step.tensors) if kind == "conv2d_u8" else step.tensors[op["weight"]]
        )
        w = _conv_weight(weight, layout)
        b = None if op.get("bias") is None else torch.from_numpy(step.tensors[op["bias"]])
        stride, padding, dilation, relu = op["stride"], op["padding"], op.get("dilation", 1), op["relu"]

        def conv() -> list[torch.Tensor]:
            y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
            return [torch.relu_(y) if relu else y]

        return _inference(conv)
    if kind == "affine":
        x = _nchw(values[op["in"]], layout)
        mul, bias = _per_channel(step.tensors[op["mul"]]), _per_channel(step.tensors[op["bias"]])
        res = None if op.get("residual") is None else _nchw(values[op["residual"]], layout)
        relu_before, relu_after = op["relu_before"], op["relu_after"]

        def affine() -> list[torch.Tensor]:
            y = torch.addcmul(bias, F.relu(x) if relu_before else x, mul)
            if res is not None:
                y += res
            return [torch.relu_(y) if relu_after else y]

        return _inference(affine)
    single: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": F.relu,
        "maxpool2d": lambda t: F.max_pool2d(t, op.get("kernel"), op.get("stride"), op.get("padding", 0)),
        "global_avgpool": lambda t: F.adaptive_avg_pool2d(t, 1),
        "adaptive_avgpool": lambda t: F.adaptive_avg_pool2d(t, op.get("size")),
    }
    if kind == "upsample_bilinear":
        size = tuple(values[op["like"]].shape[:2])
        single[kind] = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    if kind in single:
        x, fn = _nchw(values[op["in"]], layout), single[kind]
        return _inference(lambda: [fn(x)])
    if kind == "concat":
        parts = [_nchw(values[n], layout) for n in op["ins"]]
        return _inference(lambda: [torch.cat(parts, dim=1)])
    raise NotImplementedError(f"no PyTorch version of float op {kind!r}")


def _torch_projection(
    step: Any, values: dict[str, np.ndarray], layout: str
) -> Callable[[], list[torch.Tensor]]:
    """A 1x1 conv of a concat (``plan.ProjectionStep``): PyTorch gets the full-size parts already
    concatenated (untimed) and adds the 1x1 parts through the bias, as ours does."""
    weight = step.weight  # [O, 1, 1, I]
    full_x, full_w, const_x, const_w = [], [], [], []
    offset = 0
    for name in step.reads:
        part = values[name]
        w_part = weight[..., offset : offset + part.shape[2]]
        offset += part.shape[2]
        if part.shape[:2] == (1, 1):
            const_x.append(torch.from_numpy(np.ascontiguousarray(part.reshape(-1))))
            const_w.append(torch.from_numpy(np.ascontiguousarray(w_part.reshape(weight.shape[0], -1))))
        else:
            full_x.append(part)
            full_w.append(w_part)
    x = _nchw(np.concatenate(full_x, axis=2), layout)
    w = _conv_weight(np.concatenate(full_w, axis=3), layout)
    bias = torch.zeros(weight.shape[0]) if step.bias is None else torch.from_numpy(step.bias)
    relu = step.op["relu"]

    def projection() -> list[torch.Tensor]:
        b = bias
        for p, wp in zip(const_x, const_w):
            b = b + wp @ p
        y = F.conv2d(x, w, b)
        return [torch.relu_(y) if relu else y]

    return _inference(projection)


def _torch_concat_bits(
    step: Any, values: dict[str, np.ndarray], layout: str
) -> Callable[[], list[torch.Tensor]]:
    """A concat only binary convs read (``plan.ConcatBitsStep``): ours writes its sign bits from the
    parts and upsamples the parts only it reads itself; PyTorch upsamples those parts and
    concatenates (its binary conv would binarise the concat afterwards)."""
    parts: list[tuple[torch.Tensor, tuple[int, int] | None]] = []
    for name in step.op["ins"]:
        up = step.upsamples.get(name)
        if up is None:
            parts.append((_nchw(values[name], layout), None))
        else:
            parts.append((_nchw(values[up["in"]], layout), tuple(values[up["like"]].shape[:2])))

    def concat() -> list[torch.Tensor]:
        return [
            torch.cat(
                [
                    t if size is None else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                    for t, size in parts
                ],
                dim=1,
            )
        ]

    return _inference(concat)


def _torch_lincomb(
    step: Any, values: dict[str, np.ndarray], layout: str, written: list[str]
) -> Callable[[], list[torch.Tensor]]:
    """A group of linear combinations (``plan.LincombGroupStep``): each member output ours writes
    as floats or as sign bits (``written``), and the members they read, as ``c0 * x0 + c1 * x1 +
    ...`` in torch (floats only: sign-packing is ours' extra work)."""
    group = step.group
    inputs = [_nchw(values[n], layout) for n in group.inputs]
    n_in = len(group.inputs)
    wanted = {group.outputs.index(name) for name in written}
    needed = set(wanted)
    for m in range(len(group.program) - 1, -1, -1):  # the members a needed member reads
        if m in needed:
            needed.update(s - n_in for s, _ in group.program[m] if s >= n_in)
    order = [group.outputs.index(name) for name in written]

    def lincomb() -> list[torch.Tensor]:
        sources: list[torch.Tensor | None] = list(inputs)
        for m, terms in enumerate(group.program):
            if m not in needed:
                sources.append(None)
                continue
            (s0, c0), *rest = terms
            first = sources[s0]
            assert first is not None
            y = first * c0
            for s, c in rest:
                src = sources[s]
                assert src is not None
                y.add_(src, alpha=c)
            sources.append(y)
        return [t for t in (sources[n_in + m] for m in order) if t is not None]

    return _inference(lincomb)


def _ours(
    step: Any, values: dict[str, np.ndarray]
) -> tuple[Callable[[], Outputs], Callable[[], Outputs], list[str]]:
    """The step as the runtime runs it, on its recorded inputs; a call that returns the float
    values of every output it writes, as floats or only as sign bits (a lincomb group computes
    some outputs in scratch and keeps their bits only); and those outputs' names."""
    inputs = {name: values[name] for name in step.reads}

    def run(keep_all: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        out: dict[str, np.ndarray] = dict(inputs)
        bits: dict[str, np.ndarray] = {}
        step.run(out, bits, keep_all)
        return out, bits

    floats, bits = run()
    floats_written = [name for name in step.writes if name in floats]
    names = [name for name in step.writes if name in floats or name in bits]

    def ours() -> Outputs:
        out = run()[0]
        return [out[name] for name in floats_written]

    def check() -> Outputs:
        out = run(keep_all=True)[0]
        return [out[name] for name in names]

    return ours, check, names


def float_op_cases(model: PackedModel, x: np.ndarray) -> tuple[list[FloatOpCase], list[str]]:
    """Every float step of ``model``'s plan on the inputs a forward pass on ``x`` gives it, and
    notes on steps left out (upsamplings of a 1x1 map that only pass it on to a projection)."""
    values = _run_all(model, x)
    bits: dict[str, np.ndarray] = {}
    cases, notes = [], []
    for step in _steps(model):
        if step.kind in BINARY_KINDS:
            continue
        kind_name = type(step).__name__
        if kind_name == "BroadcastStep" and values[step.op["in"]].shape[:2] == (1, 1):
            notes.append(
                f"#{step.index} {step.kind} {step.label}: does no work (passes its 1x1 input on to "
                "the projection, which adds it as a bias); not compared"
            )
            continue
        ours, check, written = _ours(step, values)
        detail, _ = step.describe(values, bits)
        case = FloatOpCase(step.index, step.kind, step.label, detail, written, ours, check)
        for layout in TORCH_LAYOUTS:
            if kind_name == "ProjectionStep":
                case.torch[layout] = _torch_projection(step, values, layout)
            elif kind_name == "LincombGroupStep":
                case.torch[layout] = _torch_lincomb(step, values, layout, written)
            elif kind_name == "ConcatBitsStep":
                case.torch[layout] = _torch_concat_bits(step, values, layout)
            else:
                try:
                    case.torch[layout] = _torch_float_op(step, values, layout)
                except NotImplementedError as error:
                    notes.append(f"#{step.index} {step.kind} {step.label}: {error}; not compared")
                    break
        if case.torch:
            cases.append(case)
    return cases, notes


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def relative_difference(ours: Outputs, theirs: Sequence[torch.Tensor]) -> float:
    """max |ours - theirs| / max |theirs| over every output (theirs NCHW, ours NHWC)."""
    if len(ours) != len(theirs):
        raise ValueError(f"ours wrote {len(ours)} outputs, torch {len(theirs)}")
    worst = 0.0
    for a, t in zip(ours, theirs):
        b = t.detach()[0].permute(1, 2, 0).numpy()
        if a.shape != b.shape:
            raise ValueError(f"output shapes differ: ours {a.shape}, torch {b.shape}")
        scale = max(float(np.abs(b).max()), 1e-12)
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def _batched(call: Callable[[], object], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            call()

    return run


def time_case(
    case: FloatOpCase,
    repeats: int,
    warmup: int = 1,
    settle: float = 0.0,
    min_sample_ms: float = MIN_SAMPLE_MS,
    pause: float = 0.0,
) -> tuple[dict[str, list[float]], int]:
    """Milliseconds per call of ours and each torch layout, ``repeats`` samples each, the engines
    alternating every repeat; and the calls per sample (enough for the fastest engine's sample to
    last ``min_sample_ms``).

    ``settle`` > 0 (several threads): ``time_in_blocks``'s pause before each block, whose warm-up then
    lasts ``settle`` seconds (pool threads woken and placed). Else ``pause`` seconds of sleep between
    the warm-up and the timed sample: on a machine shared with busier processes a sample then starts
    on a fresh scheduler time slice instead of being cut by the end of the one the warm-up used
    (measured here under load: medians of a 2 ms op 7-16 ms without, 3 ms with)."""
    calls: dict[str, Callable[[], object]] = {"ours": case.ours, **case.torch}
    fastest = math.inf
    for call in calls.values():  # one call each to size the samples (after the parity check's warm-up)
        start = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - start)
    per_sample = max(1, min(10_000, math.ceil(min_sample_ms * 1e-3 / max(fastest, 1e-7))))
    batched: dict[str, Callable[[], object]] = {n: _batched(call, per_sample) for n, call in calls.items()}
    if settle > 0 or pause <= 0:
        samples = bench_layers.time_in_blocks(batched, repeats, warmup, rounds=repeats, settle=settle)
    else:

        def warm_then_pause(call: Callable[[], object]) -> None:
            for _ in range(warmup):
                call()
            time.sleep(pause)

        before: dict[str, Callable[[], None]] = {n: partial(warm_then_pause, c) for n, c in batched.items()}
        samples = bench_layers.time_in_blocks(batched, repeats, 0, rounds=repeats, before=before)
    return {name: [t / per_sample * 1e3 for t in s] for name, s in samples.items()}, per_sample


def float_share(profile: dict[str, Any]) -> dict[str, Any]:
    """Float-op share of one profiled forward pass (``bench.profile_runtime``'s result)."""
    by_kind = profile["runtime_profile_ms"]
    total = profile["runtime_profile_total_ms"]
    float_ms = {kind: ms for kind, ms in by_kind.items() if kind not in BINARY_KINDS}
    share = sum(float_ms.values()) / total if total > 0 else 0.0
    return {
        "forward_ms": total,
        "float_ms": sum(float_ms.values()),
        "float_ms_by_kind": float_ms,
        "binary_ms": sum(ms for kind, ms in by_kind.items() if kind in BINARY_KINDS),
        "float_share": share,
        "meets_target": share <= TARGET_FLOAT_SHARE,
    }


def float_share_of_op_minima(model: PackedModel, x: np.ndarray, runs: int) -> dict[str, Any]:
    """Float-op share from each op's fastest time over ``runs`` profiled forward passes (one
    ``RunProfile`` per run): on a shared machine nearly every whole pass has some op hit by other
    work, the fastest pass included; each op's least disturbed time is a steadier figure. The sums
    leave out the interpreter's time between steps, which the whole-pass figure includes."""
    best: dict[tuple[int, str], float] = {}
    for _ in range(runs):
        prof = RunProfile()
        model.forward(x, profile=prof)
        for t in prof.ops:
            key = (t.index, t.kind)
            best[key] = min(best.get(key, math.inf), t.seconds / max(1, t.runs))
    float_s = sum(s for (_, kind), s in best.items() if kind not in BINARY_KINDS)
    binary_s = sum(s for (_, kind), s in best.items() if kind in BINARY_KINDS)
    share = float_s / (float_s + binary_s) if float_s + binary_s > 0 else 0.0
    return {
        "runs": runs,
        "float_ms": float_s * 1e3,
        "binary_ms": binary_s * 1e3,
        "float_share": share,
        "meets_target": share <= TARGET_FLOAT_SHARE,
    }


def run_float_op_benchmark(
    packed_files: Sequence[str | Path],
    size: tuple[int, int],
    threads: Sequence[int] = (1, 2),
    repeats: int = DEFAULT_REPEATS,
    warmup: int = 1,
    settle: float | None = None,
    min_sample_ms: float = MIN_SAMPLE_MS,
    pause: float = PAUSE_SECONDS,
    profile: bool = True,
    only: Sequence[str] = (),
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Rows (one per model, float op and thread count) and per-model float shares; see the module
    docstring. ``size`` is (height, width); ``settle=None``: ``layers.SETTLE_SECONDS`` with several
    threads, none with one. ``only``: time just the ops whose output name or kind contains one of
    these strings (the float shares still cover the whole forward pass)."""
    log = log or (lambda message: None)
    if repeats < 1 or warmup < 0 or not threads or min(threads) < 1:
        raise ValueError("repeats must be >= 1, warmup >= 0 and thread counts >= 1")
    h, w = size
    x = np.random.default_rng(seed).standard_normal((h, w, 3)).astype(np.float32)
    saved = (kernels.get_num_threads(), torch.get_num_threads())
    rows: list[dict[str, Any]] = []
    shares: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        for path in map(Path, packed_files):
            model = load_model(path)
            cases, model_notes = float_op_cases(model, x)
            if only:
                cases = [c for c in cases if any(t in c.label or t == c.kind for t in only)]
            notes += [f"{path.name}: {n}" for n in model_notes]
            for count in sorted(set(threads)):
                set_num_threads(count)
                torch.set_num_threads(count)
                settling = (
                    settle if settle is not None else (bench_layers.SETTLE_SECONDS if count > 1 else 0.0)
                )
                for case in cases:
                    ours = case.check()
                    diffs = {layout: relative_difference(ours, call()) for layout, call in case.torch.items()}
                    samples, per_sample = time_case(case, repeats, warmup, settling, min_sample_ms, pause)
                    medians = {name: statistics.median(ms) for name, ms in samples.items()}
                    layout = min(case.torch, key=lambda name: medians[name])
                    row = {
                        "model": path.name,
                        "index": case.index,
                        "op": case.kind,
                        "output": case.label,
                        "detail": case.detail,
                        "threads": count,
                        "ours_ms": medians["ours"],
                        "torch_ms": medians[layout],
                        "torch_layout": layout,
                        "torch_ms_by_layout": {name: medians[name] for name in case.torch},
                        "ours_min_ms": min(samples["ours"]),
                        "torch_min_ms": min(samples[layout]),
                        # the same ratio from the fastest samples: less hit by other processes
                        "speed_ratio_of_minima": min(samples[layout]) / min(samples["ours"]),
                        "speed_ratio": medians[layout] / medians["ours"],
                        "meets_target": medians[layout] / medians["ours"] >= TARGET_SPEED_RATIO,
                        "max_rel_diff": max(diffs.values()),
                        "same_output": max(diffs.values()) <= SAME_OP_TOLERANCE,
                        "repeats": repeats,
                        "calls_per_sample": per_sample,
                    }
                    rows.append(row)
                    log(format_rows([row]).splitlines()[-1])
                if profile:
                    # the least disturbed of several profiled runs (one hit by other work is discarded)
                    share = float_share(bench.profile_runtime(model, x, runs=max(3, repeats)))
                    share["op_minima"] = float_share_of_op_minima(model, x, max(3, repeats))
                    shares.append({"model": path.name, "threads": count, **share})
                    log(format_shares([shares[-1]]))
    finally:
        set_num_threads(saved[0])
        torch.set_num_threads(saved[1])
    return {"size": f"{w}x{h}", "rows": rows, "float_shares": shares, "notes": notes}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

_COLUMNS = [
    ("model", 11, "<"),
    ("#", 3, ">"),
    ("op", 17, "<"),
    ("output", 22, "<"),
    ("shape", 34, "<"),
    ("thr", 3, ">"),
    ("ours ms", 8, ">"),
    ("torch ms", 8, ">"),
    ("torch layout", 13, "<"),
    ("ratio", 6, ">"),
    ("min ratio", 9, ">"),
    (">= 0.5", 6, "<"),
    ("rel diff", 8, ">"),
]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(format(c, f"{a}{w}") for c, (_, w, a) in zip(cells, _COLUMNS)) + " |"


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one line per (model, op, threads); ratio = ours' speed / PyTorch's."""
    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if a == ">" else (":" + "-" * (w + 1)) for _, w, a in _COLUMNS
    )
    lines = [_line([name for name, _, _ in _COLUMNS]), rule + "|"]
    for r in rows:
        lines.append(
            _line(
                [
                    r["model"].removesuffix(".gnpk"),
                    str(r["index"]),
                    r["op"],
                    r["output"][:22],
                    r["detail"][:34],
                    str(r["threads"]),
                    f"{r['ours_ms']:.3f}",
                    f"{r['torch_ms']:.3f}",
                    r["torch_layout"],
                    f"{r['speed_ratio']:.2f}",
                    f"{r['speed_ratio_of_minima']:.2f}",
                    "yes" if r["meets_target"] else "NO",
                    f"{r['max_rel_diff']:.0e}" + ("" if r["same_output"] else "!"),
                ]
            )
        )
    return "\n".join(lines)


def format_shares(shares: Sequence[dict[str, Any]]) -> str:
    lines = []
    for s in shares:
        kinds = ", ".join(f"{kind} {ms:.2f}" for kind, ms in s["float_ms_by_kind"].items())
        verdict = "met" if s["meets_target"] else "MISSED"
        lines.append(
            f"{s['model']}, {s['threads']} thread(s): fastest forward {s['forward_ms']:.2f} ms, float "
            f"ops {s['float_ms']:.2f} ms = {s['float_share'] * 100:.1f} % (target <= "
            f"{TARGET_FLOAT_SHARE * 100:.0f} %): {verdict}; by kind (ms): {kinds}"
        )
        minima = s.get("op_minima")
        if minima:
            lines.append(
                f"    each op's fastest of {minima['runs']} runs: float {minima['float_ms']:.2f} ms, binary "
                f"{minima['binary_ms']:.2f} ms: float share {minima['float_share'] * 100:.1f} %: "
                + ("met" if minima["meets_target"] else "MISSED")
            )
    return "\n".join(lines)


def summarize_targets(result: dict[str, Any]) -> list[str]:
    """Per thread count: the ops below the speed-ratio target (or none), then the float shares."""
    lines = []
    for count in sorted({r["threads"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["threads"] == count]
        missed = [r for r in rows if not r["meets_target"]]
        status = (
            "met by all"
            if not missed
            else "MISSED on "
            + ", ".join(
                f"{r['model'].removesuffix('.gnpk')} {r['output']} {r['speed_ratio']:.2f}" for r in missed
            )
        )
        lines.append(
            f"{count} thread(s): {len(rows) - len(missed)} of {len(rows)} float ops at >= "
            f"{TARGET_SPEED_RATIO:g}x PyTorch's speed; {status}"
        )
    differ = [r for r in result["rows"] if not r["same_output"]]
    if differ:
        lines.append(
            "OUTPUTS DIFFER from PyTorch's (rel diff > "
            f"{SAME_OP_TOLERANCE:g}) on: " + ", ".join(f"{r['model']} #{r['index']}" for r in differ)
        )
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"thread counts are integers, e.g. 1,2 - got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    repo_root = Path(__file__).resolve().parent.parent
    parser.add_argument(
        "--packed",
        nargs="+",
        metavar="FILE",
        default=[str(repo_root / p) for p in bench.SHIPPED_MODELS],
        help="packed models whose float ops are timed (default: " + " ".join(bench.SHIPPED_MODELS) + ")",
    )
    parser.add_argument(
        "--size",
        type=bench.parse_size,
        default=bench.parse_size(DEFAULT_SIZE),
        metavar="WxH",
        help=f"input size of the forward pass that gives each op its shapes (default {DEFAULT_SIZE})",
    )
    parser.add_argument(
        "--threads",
        type=_thread_list,
        nargs="+",
        default=[[1, 2]],
        help="thread counts for both engines, as 1,2 or 1 2 (default 1,2)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"timed samples per engine and op, ours and PyTorch alternating (default {DEFAULT_REPEATS})",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before each sample (default 1)")
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds of pause before each sample (default 0.05 with several threads, else 0; "
        "see seg_bench.layers.time_in_blocks)",
    )
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=PAUSE_SECONDS * 1e3,
        help="without --settle (the default with 1 thread): sleep between the warm-up and each timed "
        f"sample, so that it starts on a fresh time slice of a shared CPU (default {PAUSE_SECONDS * 1e3:g})",
    )
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=MIN_SAMPLE_MS,
        help=f"a timed sample repeats a short op until it lasts this long (default {MIN_SAMPLE_MS:g})",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="time only the ops whose output value contains NAME (e.g. head.project) or of kind NAME "
        "(e.g. lincomb)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the float-op share of each model's forward pass"
    )
    parser.add_argument("--verbose", action="store_true", help="print each row as it is measured")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run_from_args(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Runs the benchmark for parsed ``add_arguments`` options, prints the report and returns the
    JSON-ready result. ValueError on bad options or a missing model file."""
    threads = sorted({t for group in args.threads for t in group})
    missing = [p for p in args.packed if not Path(p).is_file()]
    if missing:
        raise ValueError(f"no packed model at {', '.join(missing)}")
    env = bench.environment(max(threads))
    env["threads"] = threads
    env["mkldnn"] = torch.backends.mkldnn.is_available()
    h, w = args.size
    print(
        f"CPU: {env['cpu']} ({', '.join(env['cpu_flags']) or 'no AVX flags'}; {env['logical_cores']} "
        f"logical cores); ISA path {env['isa']}; torch {env['torch']} (oneDNN "
        f"{'on' if env['mkldnn'] else 'OFF'}); threads {', '.join(map(str, threads))} for both engines",
        flush=True,
    )
    print("load average (1, 5, 15 min) at start: " + ", ".join(f"{v:.2f}" for v in env["load_average_start"]))
    if env["load_average_start"] and env["load_average_start"][0] > 0.5:
        print("WARNING: other processes are running; the figures are noisy")
    log = (lambda message: print(message, flush=True)) if args.verbose else None
    hand_off_start = kernels.cpu_round_trip_ns()
    result = run_float_op_benchmark(
        args.packed,
        (h, w),
        threads,
        repeats=args.repeats,
        warmup=args.warmup,
        settle=args.settle,
        min_sample_ms=args.min_sample_ms,
        pause=args.pause_ms / 1e3,
        profile=not args.no_profile,
        only=args.only,
        log=log,
    )
    env["load_average_end"] = bench.load_average()
    env["cpu_round_trip_ns"] = [hand_off_start, kernels.cpu_round_trip_ns()]
    result["targets"] = summarize_targets(result)
    print(
        f"\nfloat ops at {w}x{h}: medians of {args.repeats} samples per engine, ours and PyTorch "
        f"alternating; ratio = torch ms / ours ms (target >= {TARGET_SPEED_RATIO:g}; min ratio: the "
        "same of the fastest samples); torch layout: the faster of channels_last and NCHW; rel diff: "
        "max |ours - torch| / max |torch|\n"
    )
    print(format_rows(result["rows"]))
    for note in result["notes"]:
        print(f"note: {note}")
    if result["float_shares"]:
        print(
            f"\nfloat-op share of the forward pass at {w}x{h} (runtime profile, the fastest of "
            f"{max(3, args.repeats)} profiled runs):"
        )
        print(format_shares(result["float_shares"]))
    print()
    print("\n".join(result["targets"]))
    print("load average (1, 5, 15 min) at end: " + ", ".join(f"{v:.2f}" for v in env["load_average_end"]))
    print(kernels.cpu_round_trip_note(*env["cpu_round_trip_ns"]))
    return {"environment": env, "command": command, "repeats": args.repeats, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_bench.float_ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = " ".join(["python -m seg_bench.float_ops", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = run_from_args(args, command)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
