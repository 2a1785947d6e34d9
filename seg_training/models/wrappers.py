"""Task models: the same encoder under a segmentation head or a classification head.

Both keep the encoder at attribute `encoder`, so its state-dict keys ("encoder.*") move between the
classification (pretraining) and segmentation models without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .groupnet import GroupNetEncoder
from .heads import SkipDecoder, create_head


class GroupNetSegmentation(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = GroupNetEncoder(cfg)
        self.head = create_head(cfg, self.encoder.feature_channels[-1])
        self.decoder: SkipDecoder | None = None
        if cfg.decoder == "skip":
            self.decoder = SkipDecoder(
                cfg,
                self.head.out_channels,
                self.encoder.feature_channels[cfg.skip_stage],
                self.encoder.feature_channels[0],
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        logits = self.head(features[-1])
        if self.decoder is not None:
            logits = self.decoder(logits, features[self.cfg.skip_stage], features[0])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @property
    def classifier(self) -> nn.Module:
        """The final (full-precision) classifier: the decoder's, or the head's."""
        return self.decoder.classifier if self.decoder is not None else self.head.classifier


class GroupNetClassifier(nn.Module):
    """Encoder at output stride 32, global average pooling, full-precision fully connected layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = GroupNetEncoder(cfg)
        self.encoder.set_output_stride(32)
        self.fc = nn.Linear(self.encoder.feature_channels[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))
