"""Registration of the Group-Net encoders in segmentation-models-pytorch's encoder registry.

After `import seg_training.models`,
`smp.DeepLabV3Plus(encoder_name="groupnet_resnet18", encoder_weights=None)` builds a binary
Group-Net backbone under any smp decoder.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders._base import EncoderMixin

from .config import BACKBONES, ModelConfig
from .groupnet import GroupNetEncoder


class SmpGroupNetEncoder(GroupNetEncoder, EncoderMixin):
    """GroupNetEncoder behind smp's EncoderMixin API (features start with the input itself)."""

    # The list-of-branches state between blocks is not TorchScript-friendly.
    _is_torch_scriptable = False

    def __init__(
        self, out_channels: list[int], depth: int = 5, output_stride: int = 32, **model_kwargs
    ) -> None:
        cfg = ModelConfig(task="seg", output_stride=output_stride, **model_kwargs)
        if cfg.stem != "conv7_pool":
            # smp's decoders expect the stem's feature at stride 2 (checked before building).
            raise ValueError(f"smp decoders need the conv7_pool stem, got {cfg.stem!r}")
        GroupNetEncoder.__init__(self, cfg)
        self._depth = depth
        self._in_channels = 3
        self._output_stride = output_stride
        self._out_channels = [3, *self.feature_channels]
        if depth != 5:
            raise ValueError("groupnet encoders support depth=5 only")

    def make_dilated(self, output_stride: int) -> None:
        # smp's generic patch would re-pad our convs with zeros; binary convs must pad with +1, so
        # switch strides to dilations through the encoder's own plan instead.
        if output_stride not in (8, 16):
            raise ValueError(f"Output stride should be 16 or 8, got {output_stride}.")
        self.set_output_stride(output_stride)
        self._output_stride = output_stride

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        if in_channels != 3:
            raise ValueError("groupnet encoders take 3 input channels")

    def get_stages(self):
        return {
            2: [self.conv1, self.bn1],
            4: [self.maxpool, self.layer1],
            8: [self.layer2],
            16: [self.layer3],
            32: [self.layer4],
        }

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [x, *GroupNetEncoder.forward(self, x)]


def register_smp_encoders() -> None:
    for backbone in BACKBONES:
        name = f"groupnet_{backbone}"
        expansion = 1 if BACKBONES[backbone][0] == "basic" else 4
        smp_encoders[name] = {
            "encoder": SmpGroupNetEncoder,
            "pretrained_settings": {},
            "params": {"out_channels": [3, 64, *(c * expansion for c in (64, 128, 256, 512))], "arch": name},
        }
