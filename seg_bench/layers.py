"""Per-layer benchmark: this project's packed-bit binary 3x3 convolution against PyTorch fp32 and OpenVINO.

Every engine does the same work on the same inputs at the same thread count: a float32 feature map
is binarised (sign, zero -> +1), convolved with +-1 weights (3x3, padding = dilation with +1
values) and turned back into float32 by a per-channel ``mul * dot + bias`` epilogue (the folded
weight scale and BatchNorm).

- **ours**: ``seg_service.kernels.bconv2d_float`` (binarise + pack + conv + epilogue in one call),
  once per available ISA path, with the weights arranged once beforehand (``prepare_weights``).
- **torch**: ``F.conv2d`` in fp32 (oneDNN) with the scale folded into the weights and the bias.
  It gets the already binarised input, so its output equals ours up to float rounding.
- **openvino**: the graph OpenVINO runs for binary models: FakeQuantize(levels=2) ->
  BinaryConvolution(xnor-popcount, pad_value 1) -> Multiply -> Add, compiled for CPU with
  ``INFERENCE_NUM_THREADS`` and the LATENCY hint. The compiled graph is inspected to prove a JIT
  binary convolution ran (``openvino_impl`` in each row).

Each engine is timed in blocks of consecutive runs, after warm-up runs, in several rounds (see
``_time_in_blocks`` for why not round-robin); each figure is the median over all timed runs. Binary
MACs per second per core count ``Ho*Wo*Cout*Cin*9`` multiply-adds per call, divided by the
thread count.

    python -m seg_bench.layers [--quick] [--threads 1 2] [--repeats 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from seg_service import kernels

from . import cpu_mask

KERNEL = 3
TIMING_ROUNDS = 5  # repeats are split over this many rounds of per-engine blocks
SETTLE_SECONDS = 0.05  # pause before each block with several threads (see time_in_blocks)


@dataclass(frozen=True)
class LayerShape:
    """One binary 3x3 convolution, stride 1, padding = dilation (output size = input size)."""

    name: str
    group: str  # "resnet18" (224x224 ImageNet input) or "seg512" (512x512 input, output stride 8)
    height: int
    width: int
    in_channels: int
    out_channels: int
    dilation: int = 1

    @property
    def padding(self) -> int:
        return self.dilation

    @property
    def binary_macs(self) -> int:
        """Binary multiply-adds per call (stride 1 and 'same' padding: output map = input map)."""
        return self.height * self.width * self.out_channels * self.in_channels * KERNEL * KERNEL


def _shape(group: str, size: int, channels: int, dilation: int = 1) -> LayerShape:
    name = f"{size}x{size}x{channels}->{channels}" + (f" d{dilation}" if dilation > 1 else "")
    return LayerShape(name, group, size, size, channels, channels, dilation)


RESNET18_SHAPES = [
    _shape("resnet18", 56, 64),
    _shape("resnet18", 28, 128),
    _shape("resnet18", 14, 256),
    _shape("resnet18", 7, 512),
]
SEGMENTATION_SHAPES = [
    _shape("seg512", 128, 64),
    _shape("seg512", 64, 128),
    _shape("seg512", 64, 256, dilation=2),
    _shape("seg512", 64, 512, dilation=4),
]
DEFAULT_SHAPES = RESNET18_SHAPES + SEGMENTATION_SHAPES

# OpenVINO's FakeQuantize sends x <= threshold to output_low. Our sign sends x < 0 to -1 and zero
# (also -0.0) to +1, so the threshold sits just below zero. The smallest *normal* float is used,
# not the smallest subnormal, so the result does not depend on denormals-are-zero settings; only
# negative subnormals (never produced by real layers) binarise differently.
OPENVINO_THRESHOLD = -float(np.finfo(np.float32).tiny)


@dataclass
class LayerInputs:
    """Random inputs for one shape, in each engine's native layout."""

    shape: LayerShape
    x: np.ndarray  # f32 [H, W, Cin], float input (NHWC, ours)
    weight_sign: np.ndarray  # f32 [Cout, Cin, 3, 3] of +-1 (OIHW, torch/OpenVINO)
    weight_packed: np.ndarray  # u64 [Cout, 3, 3, ceil(Cin/64)] (ours)
    mul: np.ndarray  # f32 [Cout]
    bias: np.ndarray  # f32 [Cout]


def pack_weights(weight_sign: np.ndarray) -> np.ndarray:
    """OIHW +-1 float weights -> the kernels' u64 [O, kh, kw, ceil(I/64)] (bit = 1 for -1)."""
    out_c, in_c, kh, kw = weight_sign.shape
    ohwi = np.ascontiguousarray(weight_sign.transpose(0, 2, 3, 1), dtype=np.float32)
    packed = kernels.pack_bits(ohwi.reshape(out_c * kh, kw, in_c))
    return packed.reshape(out_c, kh, kw, -1)


def make_layer_inputs(shape: LayerShape, seed: int = 0) -> LayerInputs:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.height, shape.width, shape.in_channels), dtype=np.float32)
    weight_sign = np.where(
        rng.random((shape.out_channels, shape.in_channels, KERNEL, KERNEL)) < 0.5, -1.0, 1.0
    ).astype(np.float32)
    mul = rng.uniform(0.01, 0.05, shape.out_channels).astype(np.float32)
    bias = rng.uniform(-1.0, 1.0, shape.out_channels).astype(np.float32)
    return LayerInputs(shape, x, weight_sign, pack_weights(weight_sign), mul, bias)


# --- ours -------------------------------------------------------------------------------------


def ours_call(inputs: LayerInputs) -> Callable[[], np.ndarray]:
    """Float in -> float out through the project's kernels (the ISA and threads set globally).

    The weights are arranged for the kernels once, beforehand (``kernels.prepare_weights``), as a
    loaded model does at load time and as OpenVINO does when it compiles the layer.
    """
    s = inputs.shape
    weights = kernels.prepare_weights(inputs.weight_packed, s.in_channels)
    return partial(
        kernels.bconv2d_float,
        inputs.x,
        weights,
        1,
        s.padding,
        s.dilation,
        inputs.mul,
        inputs.bias,
        False,
        False,
    )


def dots_only_call(inputs: LayerInputs) -> Callable[[], np.ndarray]:
    """The binary dot products alone: input packed beforehand, int32 out, no float epilogue."""
    s = inputs.shape
    packed = kernels.pack_bits(inputs.x)
    weights = kernels.prepare_weights(inputs.weight_packed, s.in_channels)
    return partial(kernels.bconv2d_int, packed, weights, s.in_channels, 1, s.padding, s.dilation)


def ours_api_name() -> str:
    return "bconv2d_float"


# --- PyTorch ----------------------------------------------------------------------------------


def torch_call(inputs: LayerInputs) -> Callable[[], Any]:
    """fp32 F.conv2d on the binarised input with the epilogue folded into weights and bias."""
    import torch
    import torch.nn.functional as F

    s = inputs.shape
    signs = np.where(inputs.x < 0, -1.0, 1.0).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(signs.transpose(2, 0, 1)))[None]
    # Zero padding of a +-1 map differs from +1 padding, so pad explicitly with +1 first: the
    # conv itself then runs unpadded on a map 2*padding larger (a few percent more work).
    x = F.pad(x, (s.padding,) * 4, value=1.0).contiguous()
    weight = torch.from_numpy(inputs.weight_sign * inputs.mul[:, None, None, None])
    bias = torch.from_numpy(inputs.bias)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return F.conv2d(x, weight, bias, stride=1, padding=0, dilation=s.dilation)

    return run


# --- OpenVINO ---------------------------------------------------------------------------------


class _SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack(new: _SignalStack | None) -> _SignalStack | None:
    """Set the calling thread's alternate signal stack (if ``new``); the previous one, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    old = _SignalStack()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(ctypes.byref(new) if new is not None else None, ctypes.byref(old)) != 0:
        return None
    return old


@contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run OpenVINO work and put back the calling thread's alternate signal stack afterwards.

    OpenVINO's CPU plugin (2026.4) installs an alternate signal stack of its own on the thread that
    creates its engine (at compile time) and, when the engine dies, restores the one it found.
    Engines that die in the order they were created leave the thread's stack pointing at freed
    memory; the next signal handled on it (Python registers its handlers with SA_ONSTACK: Ctrl-C,
    or the SIGCHLD handler of a torch DataLoader) then kills the process with SIGSEGV. That killed
    the test suite on an AVX2-only AMD EPYC. Restoring the caller's stack after each compile keeps
    every engine's saved stack the caller's own, whatever order the engines die in.
    """
    saved = _sigaltstack(None)
    try:
        yield
    finally:
        if saved is not None:
            _sigaltstack(saved)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def build_openvino_layer(inputs: LayerInputs):
    """ov.Model: NCHW float [1, Cin, H, W] -> binary conv with the epilogue -> NCHW float [1, Cout, H, W].

    OpenVINO's CPU plugin turns a 2-level FakeQuantize in front of a BinaryConvolution into its
    binarisation kernel only when the output levels are 0 and 1 (with -1/+1 it silently converts the
    float -1/+1 to u1 and computes a wrong result); xnor-popcount mode then reads bit 0 as -1 and
    bit 1 as +1. Weights are u1 with bit 1 = +1, packed LSB-first within each byte, OIHW order.
    The plugin computes in NHWC and adds layout reorders at the graph's ends (timed separately, see
    ``OpenVinoLayer``); wrapping the model in NHWC<->NCHW transposes made the plugin insert more
    reorders and a u1->f32 convert instead (and crash once), so the model stays NCHW.
    """
    import openvino as ov
    from openvino import opset1, opset13

    s = inputs.shape
    param = opset13.parameter([1, s.in_channels, s.height, s.width], ov.Type.f32, name="x")

    def scalar(value: float):
        return opset13.constant(np.full((1, 1, 1, 1), value, dtype=np.float32))

    threshold = scalar(OPENVINO_THRESHOLD)
    binarised = opset13.fake_quantize(param, threshold, threshold, scalar(0.0), scalar(1.0), 2)

    weight_bits = (inputs.weight_sign > 0).astype(np.uint8).reshape(-1)
    weight_tensor = ov.Tensor(ov.Type.u1, ov.Shape(list(inputs.weight_sign.shape)))
    weight_tensor.data[:] = np.packbits(weight_bits, bitorder="little")
    weights = ov.op.Constant(weight_tensor)

    conv = opset1.binary_convolution(
        binarised,
        weights,
        strides=[1, 1],
        pads_begin=[s.padding] * 2,
        pads_end=[s.padding] * 2,
        dilations=[s.dilation] * 2,
        mode="xnor-popcount",
        pad_value=1.0,
    )
    per_channel = (1, s.out_channels, 1, 1)
    scaled = opset13.multiply(conv, opset13.constant(inputs.mul.reshape(per_channel)))
    shifted = opset13.add(scaled, opset13.constant(inputs.bias.reshape(per_channel)))
    return ov.Model([shifted], [param], f"bconv_{s.height}x{s.width}x{s.in_channels}")


class OpenVinoUnsupported(RuntimeError):
    """OpenVINO's CPU plugin refused to compile a graph on this CPU; ``reason`` is its own message.

    Its AVX2 binary convolution takes fewer shapes than its AVX-512 one (OpenVINO 2026.4 on an
    AVX2-only CPU: "BinaryConvolution node with name '...' has unsupported parameters" for some
    dilated maps). That is a property of the peer engine on the CPU at hand, not a failure of ours:
    the benchmark reports such a shape as n/a and the parity test skips it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# The messages of OpenVINO's own "this CPU path cannot run this node" checks at compile time. Kept
# narrow on purpose: any other compile error (a malformed graph, a bad option, a crash) must still fail.
OPENVINO_REFUSALS = ("has unsupported parameters",)


def openvino_refusal(error: BaseException) -> str | None:
    """The engine's reason when ``error`` is OpenVINO refusing a node on this CPU, else None.

    OpenVINO wraps the plugin's check in "Exception from <file>:<line>:" lines; the reason keeps
    the check itself on one line, e.g. "Check 'args_ok' failed at .../bin_conv.cpp:1209:
    BinaryConvolution node with name 'X' has unsupported parameters".
    """
    if not isinstance(error, RuntimeError) or isinstance(error, OpenVinoUnsupported):
        return None
    text = str(error)
    if not any(marker in text for marker in OPENVINO_REFUSALS):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("Exception from ")) or text.strip()


def compile_openvino(model, threads: int, core=None, profile: bool = False):
    """Compile for CPU; OpenVinoUnsupported (with OpenVINO's reason) if the plugin refuses a node here."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        # Keep the float parts (epilogue) in f32 on CPUs where OpenVINO would default to bf16.
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": profile,
    }
    try:
        with keep_signal_stack():
            return (core or ov.Core()).compile_model(model, "CPU", config)
    except RuntimeError as error:
        reason = openvino_refusal(error)
        if reason is None:
            raise
        raise OpenVinoUnsupported(reason) from error


def openvino_exec_graph(compiled) -> list[dict[str, str]]:
    """The compiled graph's executed nodes: name, layer type, implementation and precisions."""
    nodes = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        fields = {
            key: info[key].astype(str)
            for key in ("layerType", "primitiveType", "runtimePrecision", "outputPrecisions")
            if key in info
        }
        if fields.get("layerType") in ("Const", "Input", "Output"):
            continue
        nodes.append({"name": op.get_friendly_name(), **fields})
    return nodes


def openvino_binary_conv_impl(compiled) -> str:
    """The implementation of the compiled BinaryConvolution (e.g. 'jit_avx512_u1'); raises if none ran."""
    nodes = openvino_exec_graph(compiled)
    binary = [n for n in nodes if n.get("layerType") == "BinaryConvolution"]
    if len(binary) != 1:
        raise RuntimeError(f"OpenVINO did not run one BinaryConvolution; executed nodes: {nodes}")
    return binary[0].get("primitiveType", "unknown")


class OpenVinoLayer:
    """A compiled OpenVINO layer with its input set; calling it runs one inference.

    Compiled with per-node profiling, so ``record_profile`` can split each inference into the
    layout reorders at the graph's ends (NCHW API <-> the plugin's NHWC) and the work proper
    (binarise + binary conv + fused epilogue): ``core_ms`` is the latter, what the layer costs
    inside a network that stays in NHWC.
    """

    def __init__(self, inputs: LayerInputs, threads: int, core=None):
        import openvino as ov

        self.compiled = compile_openvino(build_openvino_layer(inputs), threads, core, profile=True)
        self.impl = openvino_binary_conv_impl(self.compiled)
        self.request = self.compiled.create_infer_request()
        self.request.set_input_tensor(0, ov.Tensor(np.ascontiguousarray(inputs.x.transpose(2, 0, 1))[None]))
        self.core_seconds: list[float] = []

    def __call__(self) -> None:
        # share_outputs: no copy of the result into a fresh numpy array on every call.
        self.request.infer(share_inputs=True, share_outputs=True)

    def output_nhwc(self) -> np.ndarray:
        self.request.infer()
        return self.request.get_output_tensor(0).data[0].transpose(1, 2, 0)

    def record_profile(self) -> None:
        self.core_seconds.append(
            sum(
                node.real_time.total_seconds()
                for node in self.request.get_profiling_info()
                if node.node_type not in ("Reorder", "Input", "Output", "Parameter", "Result")
            )
        )


# --- measurement ------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    masked = cpu_mask.active_description()
                    return line.split(":", 1)[1].strip() + (f" [{masked}]" if masked else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(
    wanted: Sequence[str] = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_bf16"),
) -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(cpu_mask.visible_flags(line.split(":", 1)[1].split()))
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _time_in_blocks(
    calls: dict[str, Callable[[], object]],
    before: dict[str, Callable[[], None]],
    after: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int,
    rounds: int = TIMING_ROUNDS,
    settle: float = 0.0,
) -> dict[str, float]:
    """Median milliseconds per named call over ``repeats`` timed runs each (see ``time_in_blocks``)."""
    samples = time_in_blocks(calls, repeats, warmup, rounds, before, after, settle)
    return {name: _median_ms(values) for name, values in samples.items()}


def time_in_blocks(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    rounds: int = TIMING_ROUNDS,
    before: dict[str, Callable[[], None]] | None = None,
    after: dict[str, Callable[[], None]] | None = None,
    settle: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` timed runs per named call.

    Each engine runs in blocks of consecutive calls, not round-robin call by call: the engines
    have their own thread pools (our pool, torch's bundled OpenMP, OpenVINO's TBB) whose workers
    spin for a while after a parallel region, and interleaving single calls makes the pools fight
    over the cores. The repeats are split over ``rounds`` rounds of blocks (engine A, B, C, A, B,
    C, ...) so that a burst of load from another process does not land on one engine only; each
    block starts with ``warmup`` untimed calls that absorb the hand-over. ``before`` (once per
    block, e.g. switching the ISA) and ``after`` (after each timed call, e.g. reading a profile)
    are untimed. ``settle`` seconds of sleep before each block let the previous engine's pool
    threads stop spinning and go to sleep (with as many threads as cores, a spinning pool of another
    engine takes a core away from the block that follows it); the block's warm-up then also lasts
    at least ``settle`` seconds, because a pool thread woken from sleep may first be placed on the
    caller's core, until the OS's load balancer moves it (a few milliseconds).
    """
    before, after = before or {}, after or {}
    rounds = max(1, min(rounds, repeats))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(rounds):
        per_round = repeats // rounds + (1 if round_index < repeats % rounds else 0)
        for name, call in calls.items():
            if settle > 0:
                time.sleep(settle)
            if name in before:
                before[name]()
            warm_start = time.perf_counter()
            done = 0
            while done < warmup or (settle > 0 and time.perf_counter() - warm_start < settle):
                call()
                done += 1
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
                if name in after:
                    after[name]()
    return samples


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))))


def run_layer_benchmark(
    shapes: Sequence[LayerShape] | None = None,
    threads: Sequence[int] = (1, 2),
    repeats: int = 30,
    warmup: int = 2,
    isa: str | Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time ours (each ISA path), torch fp32 and OpenVINO on every shape and thread count.

    Returns one row per (shape, threads, isa): the medians in ms, the speed-ups, G binary MACs/s
    per core, the thread scaling against 1 thread (when 1 is among ``threads``), the OpenVINO
    binary-conv implementation, and the max output difference of torch and OpenVINO against ours
    (a check that all three computed the same thing). ``isa=None`` times every available path.
    Breakdown fields: ``ours_dots_only_ms`` (``bconv2d_int`` on a pre-packed input: no packing, no
    float epilogue) and ``pack_bits_ms`` (binarise + pack the input alone). ``openvino_core_ms``
    is OpenVINO without the layout reorders at the graph's ends (from its per-node profile); the
    ``speedup_vs_openvino`` column uses it, ``speedup_vs_openvino_end_to_end`` the whole call.
    OpenVINO columns are None where openvino is not installed, and also where OpenVINO refuses the
    shape on this CPU; then ``openvino_unsupported`` holds its reason (else None).
    """
    import torch

    shapes = list(shapes) if shapes is not None else DEFAULT_SHAPES
    threads = sorted(set(threads))  # 1 thread first: the scaling column divides by it
    isas = [isa] if isinstance(isa, str) else list(isa or kernels.available_isas())
    for name in isas:
        if name not in kernels.available_isas():
            raise ValueError(
                f"ISA path {name!r} is not available here; available: {kernels.available_isas()}"
            )
    if repeats < 1 or warmup < 0 or not threads or min(threads) < 1:
        raise ValueError("repeats must be >= 1, warmup >= 0 and thread counts >= 1")
    log = log or (lambda message: None)

    saved = (kernels.isa(), kernels.get_num_threads(), torch.get_num_threads())
    core = None
    if openvino_available():
        import openvino as ov

        core = ov.Core()
    rows: list[dict] = []
    try:
        for shape in shapes:
            inputs = make_layer_inputs(shape)
            one_thread_ms: dict[str, float] = {}
            for thread_count in threads:
                kernels.set_num_threads(thread_count)
                torch.set_num_threads(thread_count)
                calls: dict[str, Callable[[], object]] = {}
                before: dict[str, Callable[[], None]] = {}
                for path in isas:
                    calls[f"ours:{path}"] = ours_call(inputs)
                    # Breakdown (see docstring); packing has its own code per ISA path too.
                    calls[f"dots:{path}"] = dots_only_call(inputs)
                    calls[f"pack:{path}"] = partial(kernels.pack_bits, inputs.x)
                    for part in ("ours", "dots", "pack"):
                        before[f"{part}:{path}"] = partial(kernels.set_isa, path)
                calls["torch"] = torch_call(inputs)
                after: dict[str, Callable[[], None]] = {}
                openvino_layer = None
                openvino_unsupported = None
                if core is not None:
                    try:
                        openvino_layer = OpenVinoLayer(inputs, thread_count, core)
                    except OpenVinoUnsupported as refusal:
                        # Reported as n/a with OpenVINO's reason; the other engines still run.
                        openvino_unsupported = refusal.reason
                        log(f"{shape.name} t{thread_count}: OpenVINO n/a on this CPU: {refusal.reason}")
                if openvino_layer is not None:
                    calls["openvino"] = openvino_layer
                    after["openvino"] = openvino_layer.record_profile
                    log(
                        f"{shape.name} t{thread_count}: OpenVINO exec graph: "
                        + ", ".join(
                            f"{n.get('layerType')}[{n.get('primitiveType')}]"
                            for n in openvino_exec_graph(openvino_layer.compiled)
                        )
                    )

                # Check all engines computed the same output before timing them.
                kernels.set_isa(isas[0])
                reference = np.asarray(calls[f"ours:{isas[0]}"]())
                diffs = {
                    "torch": _max_abs_diff(np.asarray(calls["torch"]())[0].transpose(1, 2, 0), reference)
                }
                if openvino_layer is not None:
                    diffs["openvino"] = _max_abs_diff(openvino_layer.output_nhwc(), reference)
                for path in isas[1:]:
                    kernels.set_isa(path)
                    diffs[path] = _max_abs_diff(np.asarray(calls[f"ours:{path}"]()), reference)

                medians = _time_in_blocks(
                    calls, before, after, repeats, warmup, settle=SETTLE_SECONDS if thread_count > 1 else 0.0
                )
                openvino_core_ms = _median_ms(openvino_layer.core_seconds) if openvino_layer else None
                for path in isas:
                    ours_ms = medians[f"ours:{path}"]
                    if thread_count == 1:
                        one_thread_ms[path] = ours_ms
                    torch_ms = medians["torch"]
                    openvino_ms = medians.get("openvino")
                    row = {
                        **asdict(shape),
                        "binary_macs": shape.binary_macs,
                        "threads": thread_count,
                        "isa": path,
                        "ours_api": ours_api_name(),
                        "ours_ms": ours_ms,
                        "ours_dots_only_ms": medians[f"dots:{path}"],
                        "pack_bits_ms": medians[f"pack:{path}"],
                        "torch_ms": torch_ms,
                        "openvino_ms": openvino_ms,
                        "openvino_core_ms": openvino_core_ms,
                        "speedup_vs_torch": torch_ms / ours_ms,
                        "speedup_vs_openvino": openvino_core_ms / ours_ms if openvino_core_ms else None,
                        "speedup_vs_openvino_end_to_end": openvino_ms / ours_ms if openvino_ms else None,
                        "gmacs_per_core": shape.binary_macs / (ours_ms * 1e-3) / thread_count / 1e9,
                        "scaling_vs_1_thread": (one_thread_ms[path] / ours_ms)
                        if path in one_thread_ms
                        else None,
                        "openvino_impl": openvino_layer.impl if openvino_layer else None,
                        "openvino_unsupported": openvino_unsupported,
                        "max_abs_diff_torch": diffs["torch"],
                        "max_abs_diff_openvino": diffs.get("openvino"),
                        "max_abs_diff_vs_first_isa": diffs.get(path, 0.0),
                        "repeats": repeats,
                    }
                    rows.append(row)
                    log(_format_row(row))
    finally:
        kernels.set_isa(saved[0])
        kernels.set_num_threads(saved[1])
        torch.set_num_threads(saved[2])
    return rows


# --- reporting --------------------------------------------------------------------------------

_COLUMNS = [
    ("shape", 20),
    ("thr", 3),
    ("isa", 6),
    ("ours ms", 9),
    ("torch ms", 9),
    ("ov ms", 9),
    ("ov e2e ms", 9),
    ("x torch", 8),
    ("x ov", 6),
    ("G bMAC/s/core", 13),
    ("2t/1t", 6),
]


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _format_row(row: dict) -> str:
    ov_missing = "n/a" if row.get("openvino_unsupported") else "-"  # refused on this CPU / not installed
    cells = [
        row["name"],
        str(row["threads"]),
        row["isa"],
        _fmt(row["ours_ms"], ".3f"),
        _fmt(row["torch_ms"], ".3f"),
        _fmt(row["openvino_core_ms"], ".3f", ov_missing),
        _fmt(row["openvino_ms"], ".3f", ov_missing),
        _fmt(row["speedup_vs_torch"], ".1f"),
        _fmt(row["speedup_vs_openvino"], ".2f", ov_missing),
        _fmt(row["gmacs_per_core"], ".0f"),
        _fmt(row["scaling_vs_1_thread"] if row["threads"] != 1 else None, ".2f"),
    ]
    return (
        "| "
        + " | ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS))
        )
        + " |"
    )


def format_layer_table(rows: Sequence[dict]) -> str:
    """Markdown table, one line per (shape, threads, isa), ordered by threads, then shape, then isa."""
    header = (
        "| "
        + " | ".join(
            name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(_COLUMNS)
        )
        + " |"
    )
    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if i else ":" + "-" * (width + 1) for i, (_, width) in enumerate(_COLUMNS)
        )
        + "|"
    )
    order = {name: i for i, name in enumerate(dict.fromkeys(row["name"] for row in rows))}
    isa_order = {"avx512": 0, "avx2": 1, "scalar": 2}
    ordered = sorted(rows, key=lambda r: (r["threads"], order[r["name"]], isa_order.get(r["isa"], 9)))
    return "\n".join([header, rule, *(_format_row(row) for row in ordered)])


def openvino_unsupported_notes(rows: Sequence[dict]) -> list[str]:
    """One line per (shape, threads) OpenVINO refused on this CPU, with its reason (below the table)."""
    refused = {
        (r["name"], r["threads"]): r["openvino_unsupported"] for r in rows if r.get("openvino_unsupported")
    }
    return [
        f"n/a: OpenVINO cannot run {name} with {threads} thread(s) on this CPU: {reason}"
        for (name, threads), reason in refused.items()
    ]


# Per-layer goals of each kernel path (issue 18): speed against OpenVINO's binary convolution at
# every thread count, and G binary MAC/s per core on 28x28-and-larger maps as a share of the
# in-register ceiling of that path on the CPU at hand (measured in the same run by
# popcount_ceilings_by_isa), not an absolute figure.
OPENVINO_GOALS = {"avx512": 1.0, "avx2": 1.5}
CEILING_SHARE_GOALS = {"avx512": 85.0, "avx2": 80.0}  # % of the path's ceiling, 28x28 and larger maps


def popcount_ceilings_by_isa(repeats: int = 9, seconds: float = 0.05) -> dict[str, dict[str, Any]]:
    """The best way to count bits of each kernel path on this core: {isa: {'isa', 'method', 'gbmacs'}},
    the method with the highest median G binary MAC/s per core of ``kernels.popcount_ceilings``
    (register-only loops, thread CPU time; see scripts/popcount_speed.py). 'avx2' needs AVX2 +
    POPCNT, 'avx512' AVX-512 VPOPCNTDQ; empty on a CPU with neither. About repeats x seconds x 11."""
    best: dict[str, dict[str, Any]] = {}
    for row in kernels.popcount_ceilings([], repeats, seconds):
        if not row["gbmacs"]:
            continue
        median = statistics.median(row["gbmacs"])
        if row["isa"] not in best or median > best[row["isa"]]["gbmacs"]:
            best[row["isa"]] = {"isa": row["isa"], "method": row["method"], "gbmacs": median}
    return best


def summarize_targets(
    rows: Sequence[dict], ceilings: Mapping[str, dict[str, Any]] | None = None
) -> list[str]:
    """One line per per-layer target of the fastest path measured: met or missed, with the worst figure.

    ``ceilings`` (popcount_ceilings_by_isa) judge each path's G binary MAC/s per core as a share of
    its in-register ceiling on this CPU, for every path measured that has one."""
    ceilings = ceilings or {}
    lines: list[str] = []

    def report(label: str, checked: list[tuple[str, float]], goal: float, unit: str) -> None:
        if not checked:
            return
        worst_name, worst = min(checked, key=lambda item: item[1])
        misses = [f"{name} {value:.2f}{unit}" for name, value in checked if value < goal]
        status = "met" if not misses else "MISSED on " + ", ".join(misses)
        lines.append(f"{label} (goal >= {goal:g}{unit}): worst {worst:.2f}{unit} ({worst_name}); {status}")

    best_isa = next((p for p in ("avx512", "avx2", "scalar") if any(r["isa"] == p for r in rows)), None)
    one = [r for r in rows if r["threads"] == 1 and r["isa"] == best_isa]
    report(
        f"1 thread, {best_isa}: ours vs torch fp32",
        [(r["name"], r["speedup_vs_torch"]) for r in one],
        10,
        "x",
    )
    for thread_count in sorted({r["threads"] for r in rows}):
        report(
            f"{thread_count} thread(s), {best_isa}: ours vs OpenVINO binary conv",
            [
                (r["name"], r["speedup_vs_openvino"])
                for r in rows
                if r["threads"] == thread_count and r["isa"] == best_isa and r["speedup_vs_openvino"]
            ],
            OPENVINO_GOALS.get(str(best_isa), 1.0),
            "x",
        )
    for path in CEILING_SHARE_GOALS:
        large = [
            (r["name"], r["gmacs_per_core"])
            for r in rows
            if r["threads"] == 1 and r["isa"] == path and r["height"] >= 28
        ]
        ceiling = ceilings.get(path)
        if large and ceiling is not None:
            report(
                f"1 thread, {path}: % of the in-register ceiling ({ceiling['method']}, "
                f"{ceiling['gbmacs']:.0f} G binary MAC/s per core, this run), 28x28 and larger maps",
                [(name, 100.0 * value / ceiling["gbmacs"]) for name, value in large],
                CEILING_SHARE_GOALS[path],
                "%",
            )
        elif large and path == best_isa:
            worst_name, worst = min(large, key=lambda item: item[1])
            lines.append(
                f"1 thread, {path}: G binary MAC/s per core, 28x28 and larger maps: worst {worst:.2f} "
                f"({worst_name}); the goal is a share of this CPU's ceiling "
                "(scripts/popcount_speed.py ceilings)"
            )
    two = [r for r in rows if r["threads"] == 2 and r["isa"] == best_isa and r["group"] == "seg512"]
    report(
        f"2 threads vs 1, {best_isa}, 512x512-input shapes",
        [(r["name"], r["scaling_vs_1_thread"]) for r in two if r["scaling_vs_1_thread"]],
        1.7,
        "x",
    )
    by_key = {(r["name"], r["threads"], r["isa"]): r["ours_ms"] for r in rows}
    ratios = [
        (f"{name} t{t}", by_key[(name, t, "avx512")] / ms)
        for (name, t, path), ms in by_key.items()
        if path == "avx2" and (name, t, "avx512") in by_key
    ]
    # Expressed as avx512 speed / avx2 speed inverted: goal is avx2 time <= 3x avx512 time.
    if ratios:
        worst_name, worst = min(ratios, key=lambda item: item[1])
        status = "met" if worst >= 1 / 3 else f"MISSED: avx2 is {1 / worst:.2f}x slower on {worst_name}"
        lines.append(
            f"AVX2 within 3x of AVX-512: worst avx2/avx512 slowdown {1 / worst:.2f}x ({worst_name}); {status}"
        )
    return lines


def environment_lines() -> list[str]:
    import torch

    lines = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores; flags: {' '.join(cpu_flags()) or 'n/a'})",
        f"ISA paths available: {', '.join(kernels.available_isas())} (default {kernels.isa()}); "
        f"ours via seg_service.kernels.{ours_api_name()}",
        f"torch {torch.__version__}",
        "load average (1, 5, 15 min) at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    ]
    if os.getloadavg()[0] > 0.5:
        lines.append(
            "WARNING: other processes are running; figures with as many threads as cores are unreliable"
        )
    if openvino_available():
        import openvino as ov

        lines.append(f"openvino {ov.__version__}")
        capped = {
            name: os.environ[name] for name in ("OV_CPU_MAX_ISA", "ONEDNN_MAX_CPU_ISA") if name in os.environ
        }
        if capped:  # OpenVINO then runs (and refuses shapes) as on a CPU with only that ISA
            lines.append("OpenVINO ISA capped: " + " ".join(f"{k}={v}" for k, v in capped.items()))
    else:
        lines.append("openvino not installed: OpenVINO columns are empty")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The layer benchmark's options (shared by ``python -m seg_bench.layers`` and ``seg-bench layers``)."""
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per engine (default 30; 3 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up runs per block (default 2; 1 with --quick)"
    )
    parser.add_argument(
        "--isa",
        action="append",
        choices=["avx512", "avx2", "scalar"],
        help="ISA path(s) of ours to time (default: every available path)",
    )
    parser.add_argument(
        "--group",
        choices=["all", "resnet18", "seg512"],
        default="all",
        help="shape set: ResNet-18 (224 input), segmentation (512 input, OS8), or both",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats, to check the set-up, not for figures"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print each row and OpenVINO's exec graph as measured"
    )


def run_from_args(args: argparse.Namespace, command: str) -> dict:
    """Runs the layer benchmark for parsed ``add_arguments`` options, prints its report and returns
    the JSON-ready result (environment, command, rows, target summary). ValueError on bad options."""
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    environment = environment_lines()
    print("\n".join(environment), flush=True)
    hand_off_start = kernels.cpu_round_trip_ns()
    log = (lambda message: print(message, flush=True)) if args.verbose else None
    shapes = [shape for shape in DEFAULT_SHAPES if args.group in ("all", shape.group)]
    rows = run_layer_benchmark(
        shapes=shapes, threads=args.threads, repeats=repeats, warmup=warmup, isa=args.isa, log=log
    )
    impls = sorted({r["openvino_impl"] for r in rows if r["openvino_impl"]})
    print(f"OpenVINO BinaryConvolution implementation(s) executed: {', '.join(impls) or 'n/a'}")
    print(
        f"medians of {repeats} timed runs per engine, in {min(TIMING_ROUNDS, repeats)} rounds of blocks "
        f"({warmup} warm-up runs per block)\n"
    )
    print(format_layer_table(rows))
    notes = openvino_unsupported_notes(rows)
    if notes:  # shapes the peer engine refused on this CPU, with its reason
        print("\n" + "\n".join(notes))
    print()
    # Each path is judged against this core's own ceiling, measured now, beside the layers.
    ceilings = popcount_ceilings_by_isa() if any(r["isa"] in CEILING_SHARE_GOALS for r in rows) else {}
    targets = summarize_targets(rows, ceilings)
    print("\n".join(targets))
    load_end = "load average (1, 5, 15 min) at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    hand_off = kernels.cpu_round_trip_note(hand_off_start, kernels.cpu_round_trip_ns())
    print(load_end, hand_off, sep="\n", flush=True)
    return {
        "environment": [*environment, load_end, hand_off],
        "command": command,
        "repeats": repeats,
        "warmup": warmup,
        "rows": rows,
        "openvino_unsupported": notes,
        "popcount_ceilings": ceilings,
        "targets": targets,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seg_bench.layers",
        description="Per-layer binary 3x3 conv benchmark: ours vs PyTorch fp32 vs OpenVINO binary conv "
        "(the `layers` part of seg-bench).",
    )
    add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write environment and rows as JSON")
    args = parser.parse_args(argv)
    command = " ".join(["python -m seg_bench.layers", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = run_from_args(args, command)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
