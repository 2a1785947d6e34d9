"""Binarization as named, swappable quantizer objects (in the spirit of Larq).

Activation quantizers map a real tensor to the values a binary conv sees; weight quantizers map a
latent real weight to the weight the conv uses. Each activation quantizer also says which value
padded taps take, so a binary conv pads with +1 (a valid binary value) and a full-precision conv
pads with 0.
"""

from __future__ import annotations

import torch
from torch import nn


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, the convention of the packed backend (bit 0 means +1)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _ApproxSignFunction(torch.autograd.Function):
    """Forward: sign. Backward: Bi-Real's ApproxSign, d/dx = 2 - 2|x| on [-1, 1], 0 outside."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class ActivationQuantizer(nn.Module):
    """Base class: `pad_value` is what a conv pads its quantized input with."""

    name = "base"
    pad_value = 0.0
    binary = False

    def extra_repr(self) -> str:
        return f"pad_value={self.pad_value}"


class SignApprox(ActivationQuantizer):
    """Binary activations in {-1, +1} with the ApproxSign gradient."""

    name = "sign"
    pad_value = 1.0
    binary = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ApproxSignFunction.apply(x)


class TanhQuantizer(ActivationQuantizer):
    """Stage 1 of the two-stage recipe: a smooth stand-in for sign with the same padding."""

    name = "tanh"
    pad_value = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class IdentityQuantizer(ActivationQuantizer):
    """Full precision: the input passes unchanged and convs pad with zeros."""

    name = "identity"
    pad_value = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class WeightQuantizer(nn.Module):
    name = "base"
    binary = False

    def factorize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight to convolve with, per-output-channel scale to apply to the output or None)."""
        return self(weight), None


class ScaledSign(WeightQuantizer):
    """sign(W) * mean|W| per output channel; straight-through gradient to the latent weight.

    The scale is a constant for the backward pass (as in Bi-Real / XNOR-Net practice); at export it
    folds into the per-channel multiplier of the packed conv.
    """

    name = "scaled_sign"
    binary = True

    @staticmethod
    def scale(weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)

    def factorize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sign weights with a straight-through gradient, per-output-channel scale).

        Convolving with the +-1 weights and scaling the output afterwards keeps the dot products
        exact integers in float32, so a zero dot stays exactly zero (and binarizes to +1 in the next
        layer, as in the packed backend) instead of becoming +-1e-8 from rounding.
        """
        signs = weight + (binary_sign(weight) - weight).detach()
        return signs, self.scale(weight).flatten()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        signs, scale = self.factorize(weight)
        return scale.view(-1, *([1] * (weight.dim() - 1))) * signs


class IdentityWeight(WeightQuantizer):
    name = "identity"

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


ACTIVATION_QUANTIZERS: dict[str, type[ActivationQuantizer]] = {
    q.name: q for q in (SignApprox, TanhQuantizer, IdentityQuantizer)
}
WEIGHT_QUANTIZERS: dict[str, type[WeightQuantizer]] = {q.name: q for q in (ScaledSign, IdentityWeight)}


def get_activation_quantizer(name: str) -> ActivationQuantizer:
    try:
        return ACTIVATION_QUANTIZERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation quantizer {name!r}; choose from {sorted(ACTIVATION_QUANTIZERS)}"
        ) from None


def get_weight_quantizer(name: str) -> WeightQuantizer:
    try:
        return WEIGHT_QUANTIZERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown weight quantizer {name!r}; choose from {sorted(WEIGHT_QUANTIZERS)}"
        ) from None
