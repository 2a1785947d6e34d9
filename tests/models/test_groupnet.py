"""The Group-Net model library: shapes, gradients, binarization, BPAC, baselines, smp registration."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import seg_training.models  # noqa: F401  (registers the smp encoders)
from seg_training.binary import BinaryConv2d, binary_convs, binary_param_count, get_mode, set_mode
from seg_training.models import ModelConfig, bpac_rates, create_model, model_name


class ConvRecorder(TorchFunctionMode):
    """Records (input, dilation) of every F.conv2d call made during a forward pass."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            dilation = args[5] if len(args) > 5 else kwargs.get("dilation", 1)
            self.calls.append((args[0].detach(), dilation))
        return func(*args, **kwargs)


def small(**kw):
    base = dict(num_classes=3, k=2, width=0.125, head_channels=16)
    base.update(kw)
    return create_model(**base)


# ResNet-34/50 at every head and stride: 20-60 s each on a loaded 2-core machine.
@pytest.mark.parametrize(
    "arch",
    [
        "groupnet_resnet18",
        pytest.param("groupnet_resnet34", marks=pytest.mark.slow),
        pytest.param("groupnet_resnet50", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("head", ["aspp", "fcn", "psp"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_shapes(arch, head, output_stride):
    model = small(arch=arch, head=head, output_stride=output_stride).eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 96))
        logits = model(torch.randn(1, 3, 61, 83))
    assert logits.shape == (1, 3, 61, 83)
    assert [f.shape[1] for f in features] == list(model.encoder.feature_channels)
    assert features[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)


@pytest.mark.slow
def test_gradients_reach_every_branch_scale_and_gate():
    torch.manual_seed(0)
    model = small(k=3, head="aspp", output_stride=8).train()
    x = torch.randn(2, 3, 64, 64)
    F.cross_entropy(model(x), torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    blocks = [b for stage in model.encoder.stages for b in stage]
    assert all(b.scales.grad.abs().min() > 0 for b in blocks)
    assert sum(b.gate is not None for b in blocks) == len(blocks) - 1  # the first block has no gate
    assert all(b.gate.grad.abs() > 0 for b in blocks if b.gate is not None)


def test_gates_switch_off():
    model = small(gates=False)
    assert all(b.gate is None for s in model.encoder.stages for b in s)


@pytest.mark.parametrize("head", ["aspp", "fcn", "psp"])
def test_every_binary_conv_reads_plus_minus_one_including_padding(head):
    torch.manual_seed(0)
    model = small(head=head, output_stride=8).eval()
    n_binary = []
    hooks = [m.register_forward_hook(lambda *_: n_binary.append(1)) for m in binary_convs(model)]
    with ConvRecorder() as rec, torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    for h in hooks:
        h.remove()
    binary_inputs = [x for x, _ in rec.calls if torch.isin(x, torch.tensor([-1.0, 1.0])).all()]
    # Every binary conv call sees only +-1 (padded border included), and the float stem and
    # classifier calls do not.
    assert len(binary_inputs) == len(n_binary) > 0
    assert len(rec.calls) > len(binary_inputs)


def test_tanh_mode_versus_sign_mode():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        sign_out = model(x)
        set_mode(model, "tanh")
        assert get_mode(model) == "tanh"
        with ConvRecorder() as rec:
            tanh_out = model(x)
        set_mode(model, "sign")
        assert torch.equal(model(x), sign_out)
    assert not torch.allclose(tanh_out, sign_out)
    assert not any(torch.isin(x, torch.tensor([-1.0, 1.0])).all() for x, _ in rec.calls if x.shape[1] > 3)
    tanh_model = create_model(num_classes=3, k=2, width=0.125, head_channels=16, mode="tanh")
    assert get_mode(tanh_model) == "tanh"


def test_bpac_rates_differ_per_branch():
    assert bpac_rates(5) == ((2, 3, 4, 5, 6), (6, 7, 8, 9, 10))
    assert bpac_rates(1) == ((2,), (4,))
    for k in (3, 4, 5):
        model = small(k=k, output_stride=8, bpac=True)
        l3, l4 = bpac_rates(k)
        for block in model.encoder.layer3:
            assert block.dilations == list(l3) and len(set(block.dilations)) == k
        for block in model.encoder.layer4:
            assert block.dilations == list(l4) and len(set(block.dilations)) == k
    # The rates are really used by the convolutions that run, not just stored.
    model = small(k=5, output_stride=8).eval()
    with ConvRecorder() as rec, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    used = {d if isinstance(d, int) else d[0] for _, d in rec.calls}
    assert set(range(2, 11)) <= used
    # Without BPAC every branch shares the plain dilation.
    plain = small(k=5, output_stride=8, bpac=False)
    assert plain.encoder.layer3[0].dilations == [2] * 5 and plain.encoder.layer4[0].dilations == [4] * 5


def test_explicit_bpac_rates_are_validated():
    with pytest.raises(ValueError, match="bpac_rates"):
        ModelConfig(k=2, bpac_rates=((2, 3, 4), (5, 6, 7)))
    model = small(k=2, bpac_rates=((3, 5), (7, 9)))
    assert model.encoder.layer3[0].dilations == [3, 5] and model.encoder.layer4[1].dilations == [7, 9]


def test_branches_per_stage():
    """model.stage_k: K per stage; a gate only where the block before has as many branches."""
    model = small(k=2, stage_k=[1, 2, 3, 2], output_stride=8)
    counts = [[len(b.branches) for b in stage] for stage in model.encoder.stages]
    assert counts == [[1, 1], [2, 2], [3, 3], [2, 2]]
    gated = [[b.gate is not None for b in stage] for stage in model.encoder.stages]
    assert gated == [[False, False], [False, True], [False, True], [False, True]]
    # BPAC takes each stage's own count of rates
    assert model.encoder.layer3[0].dilations == list(bpac_rates(3)[0])
    assert model.encoder.layer4[0].dilations == list(bpac_rates(2)[1])
    assert model_name(ModelConfig(k=2, stage_k=[1, 2, 3, 2])).startswith("groupnet_resnet18_k1232_bpac_os8")
    # BPAC needs several branches in layer3 and layer4; with one there, both take plain dilation
    plain = small(k=2, stage_k=[2, 2, 1, 2], output_stride=8)
    assert plain.encoder.layer3[0].dilations == [2] and plain.encoder.layer4[0].dilations == [4, 4]
    assert "bpac" not in model_name(ModelConfig(k=2, stage_k=[2, 2, 1, 2]))
    assert ModelConfig(stage_k=[1, 2, 2, 2]).to_dict()["stage_k"] == [1, 2, 2, 2]
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the same counts everywhere build the plain K network, key for key
    same = small(k=2, stage_k=[2, 2, 2, 2])
    assert same.state_dict().keys() == small(k=2).state_dict().keys()


@pytest.mark.parametrize(
    "bad",
    [dict(stage_k=[1, 2, 2]), dict(stage_k=[0, 2, 2, 2]), dict(stage_k=[1, 2, 2, 2], decomposition="layer")],
)
def test_bad_branches_per_stage_are_clear_errors(bad):
    with pytest.raises(ValueError, match="model.stage_k"):
        ModelConfig(**bad)
    with pytest.raises(ValueError, match="bpac_rates"):
        ModelConfig(k=3, stage_k=[1, 2, 2, 2], bpac_rates=((2, 3, 4), (5, 6)))


def test_baselines_on_the_same_code():
    layerwise = small(k=4, decomposition="layer")
    assert all(len(b.branches) == 1 for s in layerwise.encoder.stages for b in s)
    conv1 = layerwise.encoder.layer1[0].branches[0].conv1
    assert conv1.k == 4 and isinstance(conv1.conv, BinaryConv2d) and conv1.conv.out_channels == 4 * 8
    plain = small(k=1)
    assert all(len(b.branches) == 1 and b.gate is None for s in plain.encoder.stages for b in s)
    full = small(precision="full")
    assert get_mode(full) == "full" and binary_param_count(full) == 0
    x = torch.randn(1, 3, 32, 32)
    for model in (layerwise, plain, full):
        assert model.eval()(x).shape == (1, 3, 32, 32)


def test_mean_aggregation_is_fixed():
    model = small(k=4, aggregation="mean")
    block = model.encoder.layer2[0]
    assert not isinstance(block.scales, torch.nn.Parameter) and torch.allclose(
        block.scales, torch.full((4,), 0.25)
    )


def test_parameter_count_is_k_times_resnet_binary_part():
    import torchvision

    for arch, tv in (
        ("groupnet_resnet18", torchvision.models.resnet18),
        ("groupnet_resnet50", torchvision.models.resnet50),
    ):
        ref = tv()
        # Binary part of a ResNet: every conv except the stem; shortcuts counted apart (shared by branches).
        shortcut = sum(
            m.weight.numel()
            for n, m in ref.named_modules()
            if isinstance(m, torch.nn.Conv2d) and "downsample" in n
        )
        body = (
            sum(
                m.weight.numel()
                for n, m in ref.named_modules()
                if isinstance(m, torch.nn.Conv2d) and n != "conv1"
            )
            - shortcut
        )
        for k in (1, 5):
            model = create_model(arch=arch, task="cls", num_classes=10, k=k)
            assert binary_param_count(model) == k * body + shortcut


def test_classification_and_segmentation_share_encoder_keys():
    cls = create_model(task="cls", num_classes=10, k=2, width=0.25)
    seg = create_model(task="seg", num_classes=2, k=2, width=0.25, output_stride=8)
    enc_cls = {k: v.shape for k, v in cls.state_dict().items() if k.startswith("encoder.")}
    enc_seg = {k: v.shape for k, v in seg.state_dict().items() if k.startswith("encoder.")}
    assert enc_cls == enc_seg and enc_cls
    missing, unexpected = seg.load_state_dict(
        {k: v for k, v in cls.state_dict().items() if k.startswith("encoder.")}, strict=False
    )
    assert not unexpected and all(not m.startswith("encoder.") for m in missing)
    assert cls(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_unknown_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="model.head"):
        create_model(head="unet")
    with pytest.raises(ValueError, match="unknown model config key"):
        create_model(brnaches=3)
    with pytest.raises(ValueError, match="model.arch"):
        create_model(arch="groupnet_vgg16")


@pytest.mark.slow
def test_smp_registration_builds_and_trains():
    import segmentation_models_pytorch as smp

    assert {"groupnet_resnet18", "groupnet_resnet34", "groupnet_resnet50"} <= set(smp.encoders.encoders)
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(encoder_name="groupnet_resnet18", encoder_weights=None, classes=21)
    assert model.encoder.feature_stride == 16
    assert all(c.input_quantizer.name == "sign" for c in binary_convs(model.encoder))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 21, (2, 64, 64))
    before = [p.detach().clone() for p in model.encoder.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.encoder.parameters()))
    deeplab = smp.DeepLabV3(encoder_name="groupnet_resnet50", encoder_weights=None, classes=5)
    assert deeplab.encoder.feature_stride == 8
    assert deeplab.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_stride4_stem_reaches_layer1_at_the_same_stride_without_a_pool():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 128)
    shapes = {}
    for stem in ("conv7_pool", "conv7_s4"):
        model = create_model(num_classes=2, k=2, width=0.125, head_channels=16, output_stride=32, stem=stem)
        features = model.eval().encoder(x)
        shapes[stem] = [tuple(f.shape[2:]) for f in features]
        assert isinstance(model.encoder.maxpool, torch.nn.Identity) == (stem == "conv7_s4")
    # Only the stem's own map differs (stride 4 instead of 2); layer1..layer4 are where they were.
    assert shapes["conv7_pool"][0] == (48, 64) and shapes["conv7_s4"][0] == (24, 32)
    assert shapes["conv7_pool"][1:] == shapes["conv7_s4"][1:] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    from seg_training.models.smp_encoders import SmpGroupNetEncoder

    with pytest.raises(ValueError, match="conv7_pool stem"):
        SmpGroupNetEncoder(out_channels=[], stem="conv7_s4", width=0.125)
    with pytest.raises(ValueError, match="model.stem must be one of"):
        create_model(num_classes=2, stem="conv3")


def test_reference_models_build():
    for arch in ("smp_deeplabv3_resnet18", "lraspp_mobilenet_v3_large"):
        model = create_model(arch=arch, num_classes=2).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
