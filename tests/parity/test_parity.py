"""Exported packed models run by the torch-free runtime match PyTorch eval output on real images."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("cv2")

import torch  # noqa: E402

from seg_service import kernels  # noqa: E402
from seg_service.runtime import load_model  # noqa: E402
from seg_training.export import ExportError, export_model  # noqa: E402
from seg_training.models import create_model  # noqa: E402

from .helpers import SMALL, assert_parity, load_rgb, normalise, small_model, torch_logits  # noqa: E402

# (height, width) and image: a landscape street scene at a stride-friendly size and a portrait
# person photo at an odd size that no output stride divides.
INPUTS = [((96, 128), "camvid/images/0016E5_01470.jpg"), ((132, 100), "ccp/images/0003.jpg")]

CONFIGS = {
    # Group-Net, K = 3: every head at every output stride (OS 8 uses BPAC: one dilation per branch).
    **{
        f"group_k3_os{os_}_{head}": dict(k=3, output_stride=os_, head=head)
        for os_ in (8, 16, 32)
        for head in ("aspp", "fcn", "psp")
    },
    # K = 1: a plain Bi-Real-style binary ResNet.
    "group_k1_os8_aspp": dict(k=1, output_stride=8, head="aspp"),
    "group_k1_os32_psp": dict(k=1, output_stride=32, head="psp"),
    # Layer-wise decomposition: every conv is K binary convs with learned scales.
    "layer_k3_os8_aspp": dict(k=3, decomposition="layer", output_stride=8, head="aspp"),
    "layer_k3_os16_psp": dict(k=3, decomposition="layer", output_stride=16, head="psp"),
    "layer_k3_os32_fcn": dict(k=3, decomposition="layer", output_stride=32, head="fcn"),
    "layer_k1_os16_fcn": dict(k=1, decomposition="layer", output_stride=16, head="fcn"),
    # Journal-version aggregation (plain mean) without gates.
    "group_k3_mean_nogates": dict(k=3, aggregation="mean", gates=False, output_stride=16, head="aspp"),
    # The skip decoder (DeepLabv3+-style) at coarse output strides, from layer1 and from layer2.
    "group_k3_os32_aspp_skip1": dict(
        k=3,
        output_stride=32,
        head="aspp",
        decoder="skip",
        skip_stage=1,
        skip_channels=16,
        decoder_channels=24,
    ),
    "group_k2_os16_fcn_skip2": dict(k=2, output_stride=16, head="fcn", decoder="skip", skip_stage=2),
    # The stride-4 stem without a pool (model.stem conv7_s4; the cheaper person network tried in
    # weights/README.md).
    "group_k2_os32_aspp_skip1_stem4": dict(
        k=2,
        output_stride=32,
        head="aspp",
        head_channels=48,
        decoder="skip",
        skip_stage=1,
        skip_channels=16,
        stem="conv7_s4",
    ),
    # The skip decoder's second stage at the stem's stride 2 (model.stem_skip_channels).
    "group_k2_os32_aspp_skip1_stemskip": dict(
        k=2,
        output_stride=32,
        head="aspp",
        head_channels=48,
        decoder="skip",
        skip_stage=1,
        skip_channels=16,
        stem_skip_channels=8,
        stem_decoder_channels=16,
    ),
    # Branches per stage (model.stage_k): one in layer1, where a webcam network's maps are largest,
    # and at output stride 8 with BPAC different counts in layer3 and layer4.
    "group_k1222_os32_aspp_skip1": dict(
        k=2, stage_k=(1, 2, 2, 2), output_stride=32, head="aspp", decoder="skip", skip_stage=1
    ),
    "group_k1233_os8_aspp_bpac": dict(k=3, stage_k=(1, 2, 3, 2), output_stride=8, head="aspp"),
    # Bottleneck blocks (ResNet-50 layout).
    "group_k2_resnet50_os16_fcn": dict(
        arch="groupnet_resnet50", k=2, output_stride=16, head="fcn", width=0.125
    ),
}


def export_and_load(model, tmp_path, name="m"):
    path = tmp_path / f"{name}.gnpk"
    export_model(model, path)
    return load_model(path)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_binary_model_parity(name, tmp_path):
    model = small_model(seed=len(name), **CONFIGS[name])
    runtime = export_and_load(model, tmp_path)
    for size, image in INPUTS:
        x = normalise(load_rgb(image, size))
        assert_parity(runtime.forward(x), torch_logits(model, x), what=f"{name} {image} {size}")


@pytest.mark.parametrize("config", [dict(output_stride=8, head="aspp"), dict(output_stride=16, head="psp")])
def test_full_precision_model_parity(config, tmp_path):
    model = small_model(seed=3, precision="full", k=3, **config)
    runtime = export_and_load(model, tmp_path)
    ops = {op["op"] for op in runtime._executor.ops}
    assert "bconv2d" not in ops and "conv2d" in ops
    for size, image in INPUTS:
        x = normalise(load_rgb(image, size))
        assert_parity(runtime.forward(x), torch_logits(model, x), what=f"full {config} {image}")


def test_every_isa_path(tmp_path):
    model = small_model(seed=11, k=3, output_stride=8, head="aspp")
    runtime = export_and_load(model, tmp_path)
    size, image = INPUTS[1]
    x = normalise(load_rgb(image, size))
    ref = torch_logits(model, x)
    before = kernels.isa()
    outputs = {}
    try:
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            outputs[isa] = runtime.forward(x)
            assert_parity(outputs[isa], ref, what=f"isa {isa}")
    finally:
        kernels.set_isa(before)
    assert "scalar" in outputs
    scale = float(np.abs(ref).max())
    for isa, out in outputs.items():  # identical integers; the float epilogue may round differently (FMA)
        np.testing.assert_allclose(out, outputs["scalar"], rtol=1e-5, atol=1e-6 * scale, err_msg=isa)


def test_bpac_branches_have_distinct_dilations_in_the_graph(tmp_path):
    model = small_model(seed=5, k=3, output_stride=8, head="fcn")
    runtime = export_and_load(model, tmp_path)
    layer3 = {
        op["dilation"]
        for op in runtime._executor.ops
        if op["op"] == "bconv2d" and op["out"].startswith("layer3.") and op["kernel"] == 3
    }
    assert layer3 == set(model.encoder.layer3[0].dilations) and len(layer3) == 3


def test_predict_matches_pytorch_on_full_images(tmp_path):
    """The whole predict path (resize long side, pad, crop, nearest resize back) on a real photo."""
    model = small_model(seed=7, k=3, output_stride=16, head="aspp")
    path = tmp_path / "m.gnpk"
    export_model(model, path, classes=[f"c{i}" for i in range(5)], max_side=160, size_divisor=32)
    runtime = load_model(path)
    rgb = load_rgb("ccp/images/0905.jpg")
    x, (h, w) = runtime.preprocess(rgb)
    assert max(h, w) == 160 and x.shape[0] % 32 == 0 and x.shape[1] % 32 == 0
    ref = torch_logits(model, x)[:h, :w]
    assert_parity(runtime.forward(x)[:h, :w], ref, what="padded")
    mask = runtime.predict(rgb)
    assert mask.shape == rgb.shape[:2]
    from seg_service.runtime import resize_nearest

    expected = resize_nearest(ref.argmax(axis=2).astype(np.uint8), *rgb.shape[:2])
    assert (mask == expected).mean() >= 0.999


@pytest.mark.slow
def test_briefly_trained_model_parity(tmp_path):
    """A few Adam steps on real person photos: learned (not random) weights, scales, gates and BN stats."""
    torch.manual_seed(0)
    model = create_model({**SMALL, "num_classes": 2, "k": 3, "output_stride": 16, "head": "aspp"})
    images = [load_rgb(f"ccp/images/{n}.jpg", (96, 64)) for n in ("0001", "0002", "0004", "0005")]
    masks = [load_rgb(f"ccp/masks/{n}.png", (96, 64))[:, :, 0] > 0 for n in ("0001", "0002", "0004", "0005")]
    x = torch.from_numpy(np.stack([normalise(i) for i in images])).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack(masks)).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    assert any(b.gate is not None and b.gate.abs().item() > 0 for b in model.encoder.layer2)
    runtime = export_and_load(model, tmp_path)
    for size, image in INPUTS:
        xi = normalise(load_rgb(image, size))
        assert_parity(runtime.forward(xi), torch_logits(model, xi), what=f"trained {image}")


def test_export_refuses_stage1_tanh_models(tmp_path):
    model = small_model(seed=1, k=2, output_stride=32, head="fcn", mode="tanh")
    with pytest.raises(ExportError, match="tanh"):
        export_model(model, tmp_path / "m.gnpk")
    with pytest.raises(ExportError, match="class names"):
        export_model(
            small_model(seed=1, k=2, output_stride=32, head="fcn"), tmp_path / "m.gnpk", classes=["a"]
        )


def test_stem_stage_is_in_the_graph_and_changes_the_logits(tmp_path):
    """The stem stage reads the stride-2 stem map and adds to the logits there: with its classifier
    at zero (as a new stage starts) the packed model gives other logits, the first stage's."""
    model = small_model(seed=5, **CONFIGS["group_k2_os32_aspp_skip1_stemskip"])
    size, image = INPUTS[0]
    x = normalise(load_rgb(image, size))
    runtime = export_and_load(model, tmp_path, "trained")
    ops = runtime._executor.ops
    stem_out = next(op["out"] for op in ops if op["op"] == "conv2d" and op["out"].startswith("stem"))
    readers = [op["out"] for op in ops if stem_out in (op.get("in"), *op.get("ins", []))]
    assert any(name.startswith("decoder.stem.project") for name in readers), readers
    got = runtime.forward(x)
    assert_parity(got, torch_logits(model, x), what="stem stage")
    with torch.no_grad():
        for p in model.decoder.stem_refine.classifier.parameters():
            p.zero_()
    plain = export_and_load(model, tmp_path, "zero").forward(x)
    assert_parity(plain, torch_logits(model, x), what="stem stage at zero")
    assert float(np.abs(got - plain).max()) > 0.1
