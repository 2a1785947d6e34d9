"""Segmentation heads on Group-Net features.

Every context conv is K binary convs averaged (the official binary ASPP); projection and classifier
layers stay full precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import ConvFactory


class ConvBNReLU(nn.Sequential):
    """A head conv (binary ensemble, or float for full precision) -> BN -> ReLU."""

    def __init__(self, convs: ConvFactory, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__(convs.head_conv(cin, cout, kernel, dilation), nn.BatchNorm2d(cout), nn.ReLU())


class Classifier(nn.Sequential):
    """Dropout and the full-precision 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int, dropout: float) -> None:
        super().__init__(nn.Dropout(dropout), nn.Conv2d(cin, num_classes, 1))


class FCNHead(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        mid = max(8, in_channels // 4)
        self.block = ConvBNReLU(ConvFactory(cfg), in_channels, mid, 3)
        self.out_channels = mid
        self.classifier: nn.Module = Classifier(mid, cfg.num_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(x))


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> head conv -> BN -> ReLU -> broadcast."""

    def __init__(self, convs: ConvFactory, cin: int, cout: int) -> None:
        super().__init__()
        self.block = ConvBNReLU(convs, cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def aspp_rates_for(cfg: ModelConfig) -> tuple[int, ...]:
    """The configured rates are for output stride 8; coarser strides scale them down (16: 6, 12, 18)."""
    return tuple(max(1, r * 8 // cfg.output_stride) for r in cfg.aspp_rates)


class ASPPHead(nn.Module):
    """Binary DeepLabv3 ASPP: 1x1 + three atrous 3x3 + image pooling, float projection and classifier."""

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        convs = ConvFactory(cfg)
        c = cfg.head_channels
        self.rates = aspp_rates_for(cfg)
        self.branches = nn.ModuleList(
            [ConvBNReLU(convs, in_channels, c, 1)]
            + [ConvBNReLU(convs, in_channels, c, 3, r) for r in self.rates]
        )
        self.pooling = ASPPPooling(convs, in_channels, c)
        n = len(self.branches) + 1
        self.project = nn.Sequential(nn.Conv2d(n * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.out_channels = c
        self.classifier: nn.Module = Classifier(c, cfg.num_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [b(x) for b in self.branches] + [self.pooling(x)]
        return self.classifier(self.project(torch.cat(parts, dim=1)))


class PSPHead(nn.Module):
    """Binary pyramid pooling: pooled bins -> head conv each -> upsample, concat with the input,
    a binary 3x3 bottleneck, float classifier."""

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        convs = ConvFactory(cfg)
        self.bins = cfg.psp_bins
        reduced = max(8, in_channels // len(self.bins))
        self.stages = nn.ModuleList(ConvBNReLU(convs, in_channels, reduced, 1) for _ in self.bins)
        self.bottleneck = ConvBNReLU(convs, in_channels + reduced * len(self.bins), cfg.head_channels, 3)
        self.out_channels = cfg.head_channels
        self.classifier: nn.Module = Classifier(cfg.head_channels, cfg.num_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [x] + [
            F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, stage in zip(self.bins, self.stages)
        ]
        return self.classifier(self.bottleneck(torch.cat(pyramid, dim=1)))


class SkipJoin(nn.Module):
    """One decoder stage: a map upsampled to an earlier, finer one, joined with a float 1x1
    projection of that map, one binary 3x3 conv, the float classifier.

    The upsampled map comes out of a ReLU and the projection is left signed: a BatchNorm on the
    joined map re-centres every channel before the binary conv binarizes it, since sign() of a ReLU
    output is all +1 and would carry nothing.
    """

    def __init__(
        self, cfg: ModelConfig, in_channels: int, skip_in: int, skip_channels: int, out: int
    ) -> None:
        super().__init__()
        c = skip_channels
        self.project = nn.Sequential(nn.Conv2d(skip_in, c, 1, bias=False), nn.BatchNorm2d(c))
        self.norm = nn.BatchNorm2d(in_channels + c)
        self.fuse = ConvBNReLU(ConvFactory(cfg), in_channels + c, out, 3)
        self.classifier = Classifier(out, cfg.num_classes, cfg.dropout)

    def join(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The binary conv's output (before the classifier) at the skip's resolution."""
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(self.norm(torch.cat([x, self.project(skip)], dim=1)))


class SkipDecoder(SkipJoin):
    """DeepLabv3+-style decoder for coarse output strides: the context head's features joined with an
    early encoder stage (``skip_stage``), and optionally a second stage at the stem's stride."""

    def __init__(self, cfg: ModelConfig, head_channels: int, skip_in: int, stem_in: int = 0) -> None:
        super().__init__(cfg, head_channels, skip_in, cfg.skip_channels, cfg.decoder_channels)
        self.stem_refine: StemRefine | None = None
        if cfg.stem_skip_channels:
            self.stem_refine = StemRefine(cfg, cfg.decoder_channels, stem_in)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, stem: torch.Tensor | None = None) -> torch.Tensor:
        fused = self.join(x, skip)
        logits = self.classifier(fused)
        if self.stem_refine is not None:
            if stem is None:
                raise ValueError("this decoder has a stem stage: pass the stem's features")
            logits = self.stem_refine(fused, logits, stem)
        return logits


class StemRefine(SkipJoin):
    """The skip decoder's second stage, at the stem's stride 2: the first stage's features joined
    with the stem, and a classifier whose logits are added to the first stage's upsampled logits.

    The stage's classifier starts at zero, so the network it is added to predicts what it did and
    the stage learns only a correction: the fine edges the stride-4 map cannot place.
    """

    def __init__(self, cfg: ModelConfig, decoder_channels: int, stem_in: int) -> None:
        super().__init__(cfg, decoder_channels, stem_in, cfg.stem_skip_channels, cfg.stem_decoder_channels)
        for p in self.classifier[-1].parameters():
            nn.init.zeros_(p)

    def forward(self, fused: torch.Tensor, logits: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(logits, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.classifier(self.join(fused, stem))


# A context head: its classifier is nn.Identity under a decoder (create_head).
Head = ASPPHead | FCNHead | PSPHead

HEADS: dict[str, type[Head]] = {"aspp": ASPPHead, "fcn": FCNHead, "psp": PSPHead}


def create_head(cfg: ModelConfig, in_channels: int) -> Head:
    """The context head; with a decoder its classifier is left out (the decoder classifies)."""
    head = HEADS[cfg.head](cfg, in_channels)
    if cfg.decoder != "none":
        head.classifier = nn.Identity()
    return head
