"""Binary building blocks: quantizers and binary convolutions."""

from .layers import BinaryConv2d, BinaryConvEnsemble, binary_convs, binary_param_count, get_mode, set_mode
from .quantizers import (
    ActivationQuantizer,
    IdentityQuantizer,
    IdentityWeight,
    ScaledSign,
    SignApprox,
    TanhQuantizer,
    WeightQuantizer,
    binary_sign,
    get_activation_quantizer,
    get_weight_quantizer,
)

__all__ = [
    "ActivationQuantizer",
    "BinaryConv2d",
    "BinaryConvEnsemble",
    "IdentityQuantizer",
    "IdentityWeight",
    "ScaledSign",
    "SignApprox",
    "TanhQuantizer",
    "WeightQuantizer",
    "binary_convs",
    "binary_param_count",
    "binary_sign",
    "get_activation_quantizer",
    "get_mode",
    "get_weight_quantizer",
    "set_mode",
]
