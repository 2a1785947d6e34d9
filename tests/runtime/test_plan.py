"""The executor's plan (seg_service.runtime.plan): on the shipped models' graphs every step reads only
what earlier steps wrote or packed, every op is computed by exactly one step, nothing is freed
before its last reader, and the fusions the runtime relies on are found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_service import format as gnpk
from seg_service import kernels
from seg_service.runtime import ops
from seg_service.runtime.executor import GraphExecutor, RunProfile
from seg_service.runtime.plan import (
    _FLOAT_OPS,
    BinaryConvStep,
    ConcatBitsStep,
    FloatOpStep,
    LincombGroupStep,
    PackStep,
    PointwiseConvStep,
    ProjectionStep,
    plan_graph,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@pytest.fixture(scope="module", params=["person", "camvid"])
def packed(request) -> gnpk.PackedFile:
    path = WEIGHTS / f"{request.param}.gnpk"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return gnpk.read_model(path)


@pytest.fixture
def threads():
    """Restores the kernels' thread count after a test that changes it."""
    previous = kernels.get_num_threads()
    yield
    kernels.set_num_threads(previous)


def test_steps_read_only_what_earlier_steps_made(packed) -> None:
    steps = plan_graph(packed.graph, packed.tensors, lambda op: None)
    keep = set(packed.graph["outputs"])
    floats, bits = set(packed.graph["inputs"]), set()
    computed: list[int] = []
    for step in steps:
        assert set(step.reads) <= floats, (step, set(step.reads) - floats)
        assert set(step.reads_bits) <= bits, (step, set(step.reads_bits) - bits)
        assert not (set(step.frees) & keep)
        drop = set(step.group.outputs[m] for m in step.drop) if isinstance(step, LincombGroupStep) else set()
        floats |= set(step.writes) - drop
        bits |= set(step.packs)
        floats -= set(step.frees)
        bits -= set(step.frees_bits)
        if not isinstance(step, PackStep):
            computed.extend(step.ops)
    assert sorted(computed) == list(range(len(packed.graph["ops"])))  # each op in exactly one step
    assert keep <= floats


def test_fusions_found_on_the_shipped_models(packed) -> None:
    steps = plan_graph(packed.graph, packed.tensors, lambda op: None)
    kinds = {type(step) for step in steps}
    assert LincombGroupStep in kinds and BinaryConvStep in kinds
    # every binary conv input is packed once: by its producer, a PackStep or (one reader) itself
    packers = [name for step in steps for name in step.packs]
    assert len(packers) == len(set(packers))
    if packed.model["name"] == "camvid":  # binary ASPP: chains of K bases and a fused projection
        assert any(isinstance(s, BinaryConvStep) and len(s.bases) > 1 for s in steps)
        assert any(isinstance(s, ProjectionStep) for s in steps)
    # The skip decoder: its concat is packed straight from the parts, which the fuse conv reads as
    # bits; the projection and classifier are pointwise conv steps.
    (concat,) = [s for s in steps if isinstance(s, ConcatBitsStep)]
    assert concat.label.startswith("decoder.cat") and concat.packs == (concat.label,)
    fuse = [s for s in steps if isinstance(s, BinaryConvStep) and s.binary_in == concat.label]
    assert fuse and all(s.reads_bits == (concat.label,) and concat.label not in s.reads for s in fuse)
    pointwise = {s.label.split("#")[0] for s in steps if isinstance(s, PointwiseConvStep)}
    assert pointwise == {"decoder.project", "classifier"}


def test_keep_all_gives_the_same_outputs(packed) -> None:
    executor = GraphExecutor(packed.graph, packed.tensors)
    x = np.random.default_rng(0).standard_normal((64, 96, 3)).astype(np.float32)
    feeds = {executor.inputs[0]: x}
    everything = executor.run(feeds, keep_all=True)
    for name, value in executor.run(feeds).items():
        np.testing.assert_array_equal(value, everything[name])


def plain_op_by_op_values(
    graph: dict, tensors: dict, x: np.ndarray, numpy_pointwise: bool = True
) -> dict[str, np.ndarray]:
    """Every value of the graph computed one op at a time, without the planner: each binary conv
    packs its own float input (``bconv2d_float``), a concat is built with numpy, a 1x1 conv is a
    numpy matmul (float32) unless not ``numpy_pointwise``, the other float ops are the runtime's."""
    values = {graph["inputs"][0]: x}
    for op in graph["ops"]:
        kind = op["op"]
        if kind == "bconv2d":
            w = kernels.prepare_weights(tensors[op["weight"]], op["in_channels"])
            residual = values[op["residual"]] if op.get("residual") else None
            out = kernels.bconv2d_float(
                values[op["in"]], w, op["stride"], op["padding"], op["dilation"], tensors[op["mul"]],
                tensors[op["bias"]], op["relu_before"], op["relu_after"], residual,
            )  # fmt: skip
        elif kind == "concat":
            out = np.concatenate([values[n] for n in op["ins"]], axis=2)
        elif kind == "conv2d" and tensors[op["weight"]].shape[1:3] == (1, 1) and numpy_pointwise:
            weight, src = tensors[op["weight"]], values[op["in"]]
            out = src @ weight.reshape(weight.shape[0], -1).T + tensors[op["bias"]]
            out = np.maximum(out, 0) if op["relu"] else out
        else:
            out = _FLOAT_OPS[kind](op, tensors, values)
        values[op["out"]] = out
    return values


@pytest.mark.parametrize("n_threads", [1, 2])
def test_shipped_logits_equal_the_plain_op_by_op_path(packed, threads, n_threads: int) -> None:
    """The planned steps (fused concat packing, C++ pointwise convs, ...) give the logits of running
    the graph op by op: equal to float rounding (the 1x1 convs sum in another order than numpy's
    matmul; every other difference would be bit-exact or a flipped sign bit, far above it)."""
    kernels.set_num_threads(n_threads)
    x = np.random.default_rng(3).standard_normal((96, 128, 3)).astype(np.float32)
    executor = GraphExecutor(packed.graph, packed.tensors)
    got = executor.run({executor.inputs[0]: x})[executor.outputs[0]]
    want = plain_op_by_op_values(packed.graph, packed.tensors, x)[packed.graph["outputs"][0]]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def concat_graph(float_reader: bool, parts: tuple[str, ...] = ("a", "b")) -> tuple[dict, dict]:
    """input -> two 1x1 convs (a: 50 channels, b: 64) -> concat of ``parts`` -> two binary convs
    reading it; with ``float_reader`` a relu reads the concat too. Part "up" is ``b`` pooled to
    half size and upsampled back (an upsampling only the concat reads); "a" is read by that relu."""
    rng = np.random.default_rng(5)
    tensors = {
        "w_a": (rng.standard_normal((50, 1, 1, 6)) * 0.3).astype(np.float32),
        "b_a": rng.standard_normal(50).astype(np.float32),
        "w_b": (rng.standard_normal((64, 1, 1, 6)) * 0.3).astype(np.float32),
        "b_b": rng.standard_normal(64).astype(np.float32),
        "mul": np.full(8, 0.1, np.float32),
        "bias": np.zeros(8, np.float32),
    }
    channels = sum({"a": 50, "b": 64, "up": 64}[p] for p in parts)
    tensors["wbin"] = gnpk.pack_sign_bits(rng.standard_normal((8, 3, 3, channels)).astype(np.float32))
    conv = {"stride": 1, "padding": 0, "dilation": 1, "relu": False}
    bconv = {
        "in_channels": channels,
        "kernel": 3,
        "stride": 1,
        "padding": 1,
        "dilation": 1,
        "relu_before": False,
        "relu_after": False,
    }
    graph_ops = [
        {"op": "conv2d", "in": "input", "out": "a", "weight": "w_a", "bias": "b_a", **conv},
        {"op": "conv2d", "in": "input", "out": "b", "weight": "w_b", "bias": "b_b", **conv},
        {"op": "maxpool2d", "in": "b", "out": "half", "kernel": 2, "stride": 2, "padding": 0},
        {"op": "upsample_bilinear", "in": "half", "like": "a", "out": "up"},
        {"op": "concat", "ins": list(parts), "out": "cat"},
        {"op": "bconv2d", "in": "cat", "out": "y0", "weight": "wbin", "mul": "mul", "bias": "bias", **bconv},
        {"op": "bconv2d", "in": "cat", "out": "y1", "weight": "wbin", "mul": "mul", "bias": "bias", **bconv},
    ]
    outputs = ["y0", "y1"]
    if float_reader:
        graph_ops.append({"op": "relu", "in": "cat", "out": "r"})
        outputs.append("r")
    return {"inputs": ["input"], "outputs": outputs, "ops": graph_ops}, tensors


@pytest.mark.parametrize("float_reader", [False, True])
def test_concat_read_by_binary_convs_is_packed_from_its_parts(float_reader: bool) -> None:
    graph, tensors = concat_graph(float_reader)
    steps = plan_graph(graph, tensors, lambda op: kernels.prepare_weights(tensors[op["weight"]], 114))
    by_label = {s.label: s for s in steps if not isinstance(s, PackStep)}
    assert isinstance(by_label["a"], PointwiseConvStep) and isinstance(by_label["b"], PointwiseConvStep)
    if float_reader:  # a float op reads it too: the concat is built, and packed once for the two
        assert type(by_label["cat"]) is FloatOpStep
        assert any(isinstance(s, PackStep) and s.label == "cat" for s in steps)
    else:
        assert isinstance(by_label["cat"], ConcatBitsStep) and by_label["cat"].packs == ("cat",)
    x = np.random.default_rng(6).standard_normal((13, 11, 6)).astype(np.float32)
    executor = GraphExecutor(graph, tensors)
    profile = RunProfile()
    got = executor.run({"input": x}, profile=profile)
    want = {
        "a": ops.conv2d(x, tensors["w_a"], tensors["b_a"]),
        "b": ops.conv2d(x, tensors["w_b"], tensors["b_b"]),
    }
    cat = np.concatenate([want["a"], want["b"]], axis=2)
    for name in ("y0", "y1"):
        w = kernels.prepare_weights(tensors["wbin"], 114)
        np.testing.assert_array_equal(
            got[name],
            kernels.bconv2d_float(cat, w, 1, 1, 1, tensors["mul"], tensors["bias"], False, False, None),
        )
    if float_reader:
        np.testing.assert_array_equal(got["r"], np.maximum(cat, 0))
    else:
        assert "cat" not in executor.run({"input": x}, keep_all=False)
        np.testing.assert_array_equal(executor.run({"input": x}, keep_all=True)["cat"], cat)
        (timing,) = [t for t in profile.ops if t.out == "cat"]
        assert timing.kind == "concat" and timing.detail == "13x11x114 -> bits"


@pytest.mark.parametrize("parts", [("up", "a"), ("a", "up"), ("up", "b", "a")])
def test_upsampled_part_of_a_binary_read_concat_is_packed_as_it_is_upsampled(parts) -> None:
    """("up", "a") and ("up", "b", "a"): every part starts at a word boundary, the upsampled one is
    packed as it is upsampled (its floats are never written); ("a", "up"): it starts inside a word,
    so it is upsampled to floats and packed with the others."""
    graph, tensors = concat_graph(False, parts)
    channels = sum({"a": 50, "b": 64, "up": 64}[p] for p in parts)
    steps = plan_graph(graph, tensors, lambda op: kernels.prepare_weights(tensors[op["weight"]], channels))
    (concat,) = [s for s in steps if isinstance(s, ConcatBitsStep)]
    assert set(concat.upsamples) == {"up"} and "up" not in concat.reads and "half" in concat.reads
    assert not any(s.label == "up" for s in steps)
    x = np.random.default_rng(8).standard_normal((14, 11, 6)).astype(np.float32)
    executor = GraphExecutor(graph, tensors)
    got = executor.run({"input": x})
    values = plain_op_by_op_values(graph, tensors, x, numpy_pointwise=False)
    np.testing.assert_array_equal(got["y0"], values["y0"])
    everything = executor.run({"input": x}, keep_all=True)
    np.testing.assert_array_equal(everything["up"], values["up"])
    np.testing.assert_array_equal(everything["cat"], values["cat"])
