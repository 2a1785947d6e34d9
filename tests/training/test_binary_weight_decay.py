"""Latent binary weights get their own weight decay (0 by default), and export reports silent convs.

Coupled weight decay under Adam drags the latent weights of a binary conv towards zero: the
BatchNorm after the conv divides their scale out, so nothing pushes back, and once the conv's output
variance is below the BatchNorm's epsilon the conv stops contributing. The person model of the
eighth session had 57 % of its binary output channels silent that way.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from seg_training.binary.layers import BinaryConv2d, binary_convs, collapsed_channels  # noqa: E402
from seg_training.engine.config import DEFAULTS  # noqa: E402
from seg_training.engine.optim import build_optimizer, param_groups  # noqa: E402
from seg_training.export import export_model, main, silent_binary_channels  # noqa: E402
from tests.parity.helpers import small_model  # noqa: E402

SKIP_OS32 = dict(k=2, output_stride=32, head="aspp", decoder="skip", aspp_rates=[8, 16, 24])


def _train_cfg(**overrides) -> dict:
    return {**DEFAULTS["seg"]["train"], "optimizer": "adam", "lr": 1e-3, "head_lr_mult": 4.0, **overrides}


def test_binary_latent_weights_form_their_own_groups():
    model = small_model(**SKIP_OS32)
    groups = {
        g["name"]: g for g in param_groups(model, 1e-3, 4.0, weight_decay=1e-4, binary_weight_decay=0.0)
    }
    assert set(groups) == {"encoder", "encoder_binary", "head", "head_binary"}
    binary = {id(c.weight) for c in binary_convs(model)}
    assert {id(p) for p in groups["encoder_binary"]["params"] + groups["head_binary"]["params"]} == binary
    assert not binary & {id(p) for p in groups["encoder"]["params"] + groups["head"]["params"]}
    assert groups["encoder_binary"]["weight_decay"] == 0.0 and groups["encoder"]["weight_decay"] == 1e-4
    assert groups["head_binary"]["lr"] == groups["head"]["lr"] == 4e-3
    # equal decays: the two groups of runs started before the split, so their checkpoints resume
    merged = param_groups(model, 1e-3, 4.0, weight_decay=1e-4, binary_weight_decay=1e-4)
    assert [g["name"] for g in merged] == ["encoder", "head"]
    assert sum(len(g["params"]) for g in merged) == len([p for p in model.parameters() if p.requires_grad])


def _latent_scale_after_steps(binary_weight_decay: float) -> float:
    """Mean |latent weight| of a binary conv followed by a BatchNorm after Adam steps on a loss the
    BatchNorm makes blind to that scale, with a strong decay on everything else."""
    torch.manual_seed(0)
    conv = BinaryConv2d(16, 16, 3, 1, 1)
    model = nn.Sequential(conv, nn.BatchNorm2d(16))
    with torch.no_grad():
        conv.weight.mul_(0.01 / conv.weight.abs().mean())
    opt = build_optimizer(
        model, _train_cfg(lr=1e-3, weight_decay=0.5, binary_weight_decay=binary_weight_decay)
    )
    x, target = torch.randn(8, 16, 8, 8), torch.randn(8, 16, 8, 8)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
    return float(conv.weight.detach().abs().mean())


def test_decay_collapses_latent_weights_and_the_default_does_not():
    decayed, kept = _latent_scale_after_steps(0.5), _latent_scale_after_steps(0.0)
    assert kept > 0.005  # the data gradient alone keeps the scale where it was
    assert decayed < 0.5 * kept


def test_export_reports_silent_binary_channels(tmp_path, capsys):
    healthy = small_model(seed=2, **SKIP_OS32)
    export_model(healthy, tmp_path / "healthy.gnpk")
    assert silent_binary_channels(tmp_path / "healthy.gnpk")[1] == 0

    collapsed = small_model(seed=2, **SKIP_OS32)
    conv = collapsed.encoder.layer4[1].branches[0].conv1
    with torch.no_grad():
        conv.weight.mul_(1e-30)
    export_model(collapsed, tmp_path / "collapsed.gnpk")
    shares, silent, total = silent_binary_channels(tmp_path / "collapsed.gnpk")
    assert silent == conv.out_channels and total > silent
    assert list(shares.values()) == [1.0] and "layer4.1.b0.1" in next(iter(shares))

    # export-model --repack says so on stderr, and still writes the file
    assert main(["--repack", str(tmp_path / "collapsed.gnpk"), "--out", str(tmp_path / "again.gnpk")]) == 0
    err = capsys.readouterr().err
    assert f"{silent} of {total} binary conv output channels" in err and "layer4.1.b0.1" in err
    assert main(["--repack", str(tmp_path / "healthy.gnpk"), "--out", str(tmp_path / "again2.gnpk")]) == 0
    assert "silent" not in capsys.readouterr().err


def test_collapsed_channels_counts_latent_weights_near_zero():
    model = small_model(**SKIP_OS32)
    total = sum(c.out_channels for c in binary_convs(model))
    assert collapsed_channels(model) == (0, total)
    conv = model.encoder.layer3[0].branches[1].conv2
    with torch.no_grad():
        conv.weight[:5].mul_(1e-12)
    assert collapsed_channels(model) == (5, total)
