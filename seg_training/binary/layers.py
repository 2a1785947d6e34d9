"""Binary convolution layers.

`BinaryConv2d` quantizes its input and its weight with swappable quantizers and pads the quantized
input with the quantizer's pad value (+1 for binary layers), so the packed backend, which pads with
+1 bits, agrees with training bit for bit without any border correction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import (
    ActivationQuantizer,
    WeightQuantizer,
    get_activation_quantizer,
    get_weight_quantizer,
)


class BinaryConv2d(nn.Module):
    """Conv2d (no bias) on quantized inputs and weights; padding uses the input quantizer's pad value.

    stride, padding and dilation are plain attributes so an encoder can change its output stride in
    place (the weights do not depend on them).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: int | None = None,
        input_quantizer: str | ActivationQuantizer = "sign",
        weight_quantizer: str | WeightQuantizer = "scaled_sign",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.padding = dilation * (kernel_size // 2) if padding is None else padding
        if isinstance(input_quantizer, str):
            input_quantizer = get_activation_quantizer(input_quantizer)
        if isinstance(weight_quantizer, str):
            weight_quantizer = get_weight_quantizer(weight_quantizer)
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def set_dilation(self, dilation: int, stride: int | None = None) -> None:
        self.dilation = dilation
        self.padding = dilation * (self.kernel_size // 2)
        if stride is not None:
            self.stride = stride

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The padded, quantized input the convolution reads (used by tests and the exporter)."""
        xq = self.input_quantizer(x)
        if self.padding:
            xq = F.pad(xq, [self.padding] * 4, value=self.input_quantizer.pad_value)
        return xq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, scale = self.weight_quantizer.factorize(self.weight)
        y = F.conv2d(self.quantized_input(x), weight, None, self.stride, 0, self.dilation)
        return y if scale is None else y * scale.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )


class BinaryConvEnsemble(nn.Module):
    """K binary convs that read the same quantized input, combined by a weighted sum.

    With `reduction="mean"` the weights are fixed at 1/K (the official heads average K binary convs);
    with `"learned"` they are learnable scalars initialised at 1/K (layer-wise decomposition).
    The K convs run as one conv with K*out channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        k: int,
        stride: int = 1,
        dilation: int = 1,
        reduction: str = "mean",
        input_quantizer: str = "sign",
        weight_quantizer: str = "scaled_sign",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "learned"):
            raise ValueError(f"reduction must be 'mean' or 'learned', got {reduction!r}")
        self.k = k
        self.out_channels = out_channels
        self.conv = BinaryConv2d(
            in_channels,
            k * out_channels,
            kernel_size,
            stride,
            dilation,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
        )
        if reduction == "learned":
            self.scales = nn.Parameter(torch.full((k,), 1.0 / k))
        else:
            self.register_buffer("scales", torch.full((k,), 1.0 / k), persistent=False)

    def set_dilation(self, dilation: int, stride: int | None = None) -> None:
        self.conv.set_dilation(dilation, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, _, h, w = y.shape
        y = y.view(n, self.k, self.out_channels, h, w)
        return torch.einsum("nkchw,k->nchw", y, self.scales)


def binary_convs(module: nn.Module) -> list[BinaryConv2d]:
    return [m for m in module.modules() if isinstance(m, BinaryConv2d)]


COLLAPSED_LATENT = 1e-6  # mean |latent weight| of an output channel below which it has collapsed


def collapsed_channels(module: nn.Module) -> tuple[int, int]:
    """(output channels of binary convs whose latent weights collapsed towards zero, all of them).

    Healthy latent weights sit around 1e-3 to 1e-1; weight decay on them can drive a channel's to
    1e-38, where the BatchNorm after it no longer normalises and the channel is silent
    (docs/training.md, "Binary weights and weight decay")."""
    collapsed = total = 0
    for conv in binary_convs(module):
        if conv.weight_quantizer.binary:
            scale = conv.weight.detach().abs().flatten(1).mean(dim=1)
            collapsed += int((scale < COLLAPSED_LATENT).sum())
            total += scale.numel()
    return collapsed, total


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every binary layer's activation quantizer: "sign" (binary) or "tanh" (stage 1).

    Full-precision layers (identity quantizers) are left alone. Returns the model.
    """
    if mode not in ("sign", "tanh"):
        raise ValueError(f"mode must be 'sign' or 'tanh', got {mode!r}")
    for conv in binary_convs(model):
        if conv.input_quantizer.name in ("sign", "tanh"):
            conv.input_quantizer = get_activation_quantizer(mode)
    return model


def get_mode(model: nn.Module) -> str:
    names = {c.input_quantizer.name for c in binary_convs(model)} - {"identity"}
    if not names:
        return "full"
    if len(names) > 1:
        return "mixed"
    return names.pop()


def binary_param_count(module: nn.Module) -> int:
    """Parameters held by binary convs (latent weights that export as 1 bit each)."""
    return sum(c.weight.numel() for c in binary_convs(module) if c.weight_quantizer.binary)


__all__ = [
    "BinaryConv2d",
    "BinaryConvEnsemble",
    "binary_convs",
    "binary_param_count",
    "get_mode",
    "set_mode",
]
