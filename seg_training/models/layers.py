"""Which conv a config builds where: binary or full precision, one conv or a K-conv ensemble."""

from __future__ import annotations

from ..binary import BinaryConv2d, BinaryConvEnsemble
from .config import ModelConfig

# What ConvFactory.encoder_conv builds.
EncoderConv = BinaryConv2d | BinaryConvEnsemble


class ConvFactory:
    """Builds the convs of one model consistently with its config.

    Encoder convs: a single binary conv per branch for Group-Net ("group"), or K binary convs summed
    with learned / mean scales for layer-wise decomposition ("layer"). Head convs: K binary convs
    averaged, as in the official binary ASPP. With precision "full" every conv is a plain float conv
    (zero padding), so the full-precision baseline runs on exactly the same code.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        binary = cfg.precision == "binary"
        self.input_quantizer = cfg.mode if binary else "identity"
        self.weight_quantizer = "scaled_sign" if binary else "identity"

    def _single(self, cin: int, cout: int, kernel: int, stride: int, dilation: int) -> BinaryConv2d:
        return BinaryConv2d(
            cin,
            cout,
            kernel,
            stride,
            dilation,
            input_quantizer=self.input_quantizer,
            weight_quantizer=self.weight_quantizer,
        )

    def _ensemble(
        self, cin: int, cout: int, kernel: int, stride: int, dilation: int, k: int, reduction: str
    ) -> BinaryConvEnsemble:
        return BinaryConvEnsemble(
            cin,
            cout,
            kernel,
            k,
            stride,
            dilation,
            reduction,
            input_quantizer=self.input_quantizer,
            weight_quantizer=self.weight_quantizer,
        )

    def encoder_conv(
        self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1
    ) -> EncoderConv:
        if self.cfg.decomposition == "layer" and self.cfg.precision == "binary":
            return self._ensemble(cin, cout, kernel, stride, dilation, self.cfg.k, self.cfg.aggregation)
        return self._single(cin, cout, kernel, stride, dilation)

    def head_conv(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> BinaryConvEnsemble:
        k = self.cfg.k if self.cfg.precision == "binary" else 1
        return self._ensemble(cin, cout, kernel, 1, dilation, k, "mean")
