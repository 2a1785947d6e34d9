"""The OpenVINO graph the layer benchmark times computes exactly what our kernel computes.

Three independent computations of one binary 3x3 conv (float in, sign with zero -> +1, +1 padding,
+-1 weights, per-channel mul/bias epilogue) must agree: a float64 torch reference on explicitly
padded signs, our kernels on every ISA path, and the OpenVINO FakeQuantize -> BinaryConvolution
graph from ``seg_bench.layers``. Otherwise the benchmark would compare unequal work.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip(
    "openvino", reason="openvino is not installed (pip install '.[bench]'): no parity to check"
)

import torch.nn.functional as F  # noqa: E402

from seg_bench import layers as bench_layers  # noqa: E402
from seg_service import kernels  # noqa: E402

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"

# (height, width, in_channels, out_channels, dilation). OpenVINO's u1 path needs channel counts that
# are a multiple of 8 (the benchmark's are multiples of 64); 40 and 72 leave our 64-bit words partly
# filled, so the unused-bit handling is exercised on our side.
SHAPES = [(9, 7, 72, 24, 1), (10, 9, 40, 16, 2), (12, 12, 128, 32, 3)]


def reference_output(inputs: bench_layers.LayerInputs) -> np.ndarray:
    """float64 torch: sign (zero -> +1), pad with +1, conv with +-1 weights, then mul * dot + bias."""
    s = inputs.shape
    signs = torch.from_numpy(np.where(inputs.x < 0, -1.0, 1.0)).permute(2, 0, 1)[None]
    padded = F.pad(signs, (s.padding,) * 4, value=1.0)
    dots = F.conv2d(padded, torch.from_numpy(inputs.weight_sign).double(), dilation=s.dilation)[0]
    out = (
        dots * torch.from_numpy(inputs.mul).double()[:, None, None]
        + torch.from_numpy(inputs.bias).double()[:, None, None]
    )
    return out.permute(1, 2, 0).numpy()


def make_inputs(shape: tuple[int, int, int, int, int], seed: int) -> bench_layers.LayerInputs:
    height, width, cin, cout, dilation = shape
    layer = bench_layers.LayerShape("parity", "test", height, width, cin, cout, dilation)
    inputs = bench_layers.make_layer_inputs(layer, seed=seed)
    # Exact zeros and negative zeros binarise to +1 in every engine (OpenVINO via its threshold).
    inputs.x[0, :, :5] = 0.0
    inputs.x[-1, :, -5:] = -0.0
    return inputs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}->{s[3]}_d{s[4]}")
def test_kernel_matches_reference_on_every_isa(shape, threads):
    """Ours on every ISA path this CPU has (the forced lower ones included); never skipped."""
    inputs = make_inputs(shape, seed=sum(shape))
    expected = reference_output(inputs)
    tolerance = 1e-5 * float(np.abs(expected).max()) + 1e-6
    for isa, ours in kernel_outputs(inputs, threads).items():
        np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance, err_msg=f"ours on {isa}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}->{s[3]}_d{s[4]}")
def test_openvino_graph_matches_kernel_and_reference(shape, threads):
    inputs = make_inputs(shape, seed=sum(shape))
    expected = reference_output(inputs)

    try:
        layer = bench_layers.OpenVinoLayer(inputs, threads)
    except bench_layers.OpenVinoUnsupported as refusal:
        # OpenVINO's AVX2 binary convolution refuses some dilated shapes its AVX-512 one takes: a
        # limit of the peer engine on this CPU. Only that refusal skips; any other error fails.
        pytest.skip(f"OpenVINO cannot compile this case on this CPU: {refusal.reason}")
    openvino_out = layer.output_nhwc()
    # Outputs are mul * dot + bias with |dot| <= 9 * Cin: compare at float32 rounding of that size.
    tolerance = 1e-5 * float(np.abs(expected).max()) + 1e-6
    np.testing.assert_allclose(openvino_out, expected, rtol=0, atol=tolerance)
    for isa, ours in kernel_outputs(inputs, threads).items():
        np.testing.assert_allclose(
            ours, openvino_out, rtol=0, atol=tolerance, err_msg=f"ours ({isa}) vs OpenVINO"
        )


def kernel_outputs(inputs: bench_layers.LayerInputs, threads: int) -> dict[str, np.ndarray]:
    """The benchmark's call of our kernels on each available ISA path, settings restored after."""
    saved_isa, saved_threads = kernels.isa(), kernels.get_num_threads()
    outputs = {}
    try:
        kernels.set_num_threads(threads)
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            outputs[isa] = bench_layers.ours_call(inputs)()
    finally:
        kernels.set_isa(saved_isa)
        kernels.set_num_threads(saved_threads)
    return outputs


def test_openvino_runs_a_fused_binary_convolution():
    """The binarisation feeds u1 bits straight into a BinaryConvolution, with the epilogue fused in."""
    layer = bench_layers.OpenVinoLayer(make_inputs(SHAPES[0], seed=1), threads=1)
    nodes = bench_layers.openvino_exec_graph(layer.compiled)
    by_type = {node["layerType"]: node for node in nodes}
    assert by_type["FakeQuantize"]["outputPrecisions"] == "u1", nodes
    assert by_type["BinaryConvolution"]["runtimePrecision"] == "u1", nodes
    assert layer.impl == by_type["BinaryConvolution"]["primitiveType"]
    # Multiply and Add are fused into the convolution: no float elementwise node runs on its own.
    assert not {"Multiply", "Add", "Eltwise", "Convert"} & by_type.keys(), nodes
    # Only layout reorders (input, output) and the weight reorder remain besides the two nodes.
    assert {node["layerType"] for node in nodes} <= {"Reorder", "FakeQuantize", "BinaryConvolution"}, nodes
