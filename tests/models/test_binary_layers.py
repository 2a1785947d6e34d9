"""Quantizers and the binary conv: values, gradients and +1 padding."""

import pytest
import torch
import torch.nn.functional as F

from seg_training.binary import BinaryConv2d, ScaledSign, SignApprox, binary_sign, set_mode
from seg_training.binary.layers import BinaryConvEnsemble


def test_sign_maps_zero_to_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-8, 3.0])
    assert binary_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]


def test_approx_sign_gradient_is_bireal_triangle():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0], requires_grad=True)
    SignApprox()(x).sum().backward()
    expected = torch.clamp(2 - 2 * x.detach().abs(), min=0)
    assert torch.allclose(x.grad, expected)
    assert x.grad[3] == 2.0 and x.grad[0] == 0.0


def test_scaled_sign_per_output_channel_and_straight_through():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    wq = ScaledSign()(w)
    scale = w.detach().abs().mean(dim=(1, 2, 3))
    for o in range(4):
        values = wq[o].detach().abs().unique()
        assert torch.allclose(values, scale[o].expand_as(values))
    assert torch.equal(torch.sign(wq.detach()), binary_sign(w.detach()))
    (wq * torch.arange(4.0).view(4, 1, 1, 1)).sum().backward()
    # Straight-through: the latent weight gets the incoming gradient times the (constant) scale.
    assert torch.allclose(w.grad, (torch.arange(4.0) * scale).view(4, 1, 1, 1).expand_as(w))


@pytest.mark.parametrize("dilation", [1, 2, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_binary_conv_pads_with_plus_one(stride, dilation):
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=stride, dilation=dilation)
    x = torch.randn(2, 5, 9, 11)
    p = dilation
    padded = torch.ones(2, 5, 9 + 2 * p, 11 + 2 * p)
    padded[:, :, p:-p, p:-p] = binary_sign(x)
    expected = F.conv2d(padded, ScaledSign()(conv.weight), stride=stride, dilation=dilation)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    # A zero-padded conv gives different border outputs: the +1 padding is real.
    zero_padded = F.conv2d(
        binary_sign(x), ScaledSign()(conv.weight), stride=stride, padding=p, dilation=dilation
    )
    assert not torch.allclose(conv(x), zero_padded)


def test_tanh_mode_and_back():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 4, 3)
    x = torch.randn(1, 4, 6, 6)
    sign_out = conv(x)
    set_mode(conv, "tanh")
    q = conv.quantized_input(x)
    assert ((q.abs() < 1) | (q == 1)).all() and not torch.isin(
        q[:, :, 1:-1, 1:-1], torch.tensor([-1.0, 1.0])
    ).all()
    assert not torch.allclose(conv(x), sign_out)
    set_mode(conv, "sign")
    assert torch.equal(conv(x), sign_out)
    with pytest.raises(ValueError, match="mode"):
        set_mode(conv, "relu")


def test_ensemble_is_weighted_sum_of_k_binary_convs():
    torch.manual_seed(0)
    ens = BinaryConvEnsemble(6, 4, 3, k=3, reduction="learned")
    with torch.no_grad():
        ens.scales.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(1, 6, 7, 7)
    full = ens.conv(x)
    expected = sum(ens.scales[i] * full[:, 4 * i : 4 * (i + 1)] for i in range(3))
    assert torch.allclose(ens(x), expected, atol=1e-5)
