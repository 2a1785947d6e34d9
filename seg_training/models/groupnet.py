"""Group-Net encoders: ResNet groups rebuilt as K parallel binary branches.

Each ResNet block (a "group") is copied K times. Inside a branch the Bi-Real ordering holds:
binarize -> binary conv -> ReLU -> BN -> + real-valued residual. The block output is the
aggregate sum_k lambda_k * y_k (or the mean). Between blocks a soft gate g lets branch k of the
next block read sigmoid(g) * y_k + (1 - sigmoid(g)) * aggregate. The stem (7x7 conv) stays full
precision (conv + BN, no ReLU, so the first binarization sees both signs); the 1x1 downsampling
shortcut is binary and shared by the branches of its block.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..binary import BinaryConvEnsemble
from .config import BACKBONES, ModelConfig, bpac_rates
from .layers import ConvFactory, EncoderConv

# What flows between blocks: the K branch outputs of the previous block (None after the stem) and
# their aggregate.
BlockState = tuple[list[torch.Tensor] | None, torch.Tensor]


class BasicBranch(nn.Module):
    """One branch of a BasicBlock group: two binary 3x3 convs, each with its own residual."""

    expansion = 1

    def __init__(self, convs: ConvFactory, cin: int, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = convs.encoder_conv(cin, channels, 3, stride, dilation)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = convs.encoder_conv(channels, channels, 3, 1, dilation)
        self.bn2 = nn.BatchNorm2d(channels)

    def configure(self, stride: int, dilation: int) -> None:
        self.conv1.set_dilation(dilation, stride)
        self.conv2.set_dilation(dilation)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x))) + residual
        return self.bn2(F.relu(self.conv2(out))) + out


class BottleneckBranch(nn.Module):
    """One branch of a Bottleneck group: 1x1 -> 3x3 -> 1x1 binary convs.

    The 3x3 conv carries a residual from the first 1x1 output where shapes allow (stride 1), so
    every binary conv but the channel-changing 1x1s keeps a real-valued shortcut.
    """

    expansion = 4

    def __init__(self, convs: ConvFactory, cin: int, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = convs.encoder_conv(cin, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = convs.encoder_conv(channels, channels, 3, stride, dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = convs.encoder_conv(channels, channels * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)

    def configure(self, stride: int, dilation: int) -> None:
        self.conv2.set_dilation(dilation, stride)

    @property
    def inner_residual(self) -> bool:
        conv2 = self.conv2.conv if isinstance(self.conv2, BinaryConvEnsemble) else self.conv2
        return conv2.stride == 1

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out1 = self.bn1(F.relu(self.conv1(x)))
        out2 = self.bn2(F.relu(self.conv2(out1)))
        if self.inner_residual:
            out2 = out2 + out1
        return self.bn3(F.relu(self.conv3(out2))) + residual


Branch = BasicBranch | BottleneckBranch


class GroupBlock(nn.Module):
    """K branches of one ResNet block, their aggregation, soft gate and shared shortcut."""

    def __init__(
        self,
        convs: ConvFactory,
        branch_cls: type[Branch],
        cin: int,
        channels: int,
        stride: int,
        branches: int,
        aggregation: str,
        gated: bool,
    ) -> None:
        super().__init__()
        cout = channels * branch_cls.expansion
        self.branches = nn.ModuleList(branch_cls(convs, cin, channels, stride, 1) for _ in range(branches))
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(convs.encoder_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        init = torch.full((branches,), 1.0 / branches)
        if aggregation == "learned":
            self.scales = nn.Parameter(init)
        else:
            self.register_buffer("scales", init)
        self.gate = nn.Parameter(torch.zeros(1)) if gated else None
        self.out_channels = cout

    def branch_modules(self) -> list[Branch]:
        """``branches`` as what they are (an ``nn.ModuleList`` types its items as plain modules)."""
        return cast("list[Branch]", list(self.branches))

    def shortcut(self) -> tuple[EncoderConv, nn.BatchNorm2d] | None:
        """The conv and BatchNorm of the shared shortcut (``downsample``), None without one."""
        if self.downsample is None:
            return None
        return cast(EncoderConv, self.downsample[0]), cast(nn.BatchNorm2d, self.downsample[1])

    def configure(self, stride: int, dilations: list[int]) -> None:
        for branch, dilation in zip(self.branch_modules(), dilations, strict=True):
            branch.configure(stride, dilation)
        shortcut = self.shortcut()
        if shortcut is not None:
            shortcut[0].set_dilation(1, stride)

    @property
    def dilations(self) -> list[int]:
        rates = []
        for branch in self.branch_modules():
            conv = branch.conv1 if isinstance(branch, BasicBranch) else branch.conv2
            rates.append((conv.conv if isinstance(conv, BinaryConvEnsemble) else conv).dilation)
        return rates

    def branch_inputs(self, state: BlockState) -> list[torch.Tensor]:
        previous, aggregate = state
        if self.gate is None or previous is None or len(previous) != len(self.branches):
            return [aggregate] * len(self.branches)
        g = torch.sigmoid(self.gate)
        return [g * y + (1 - g) * aggregate for y in previous]

    def forward(self, state: BlockState) -> BlockState:
        xs = self.branch_inputs(state)
        shared = self.downsample(state[1]) if self.downsample is not None else None
        ys = [branch(x, x if shared is None else shared) for branch, x in zip(self.branches, xs)]
        aggregate = sum(s * y for s, y in zip(self.scales, ys))
        return ys, aggregate


class GroupNetEncoder(nn.Module):
    """Full-precision stem + four stages of GroupBlocks. forward returns the 5 feature maps
    [stem (stride 2, or 4 for the "conv7_s4" stem), layer1 (4), layer2 (8), layer3, layer4]
    (strides of the last two depend on the output stride)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        block_type, depths = BACKBONES[cfg.backbone]
        branch_cls = BasicBranch if block_type == "basic" else BottleneckBranch
        widths = cfg.stage_widths()
        convs = ConvFactory(cfg)
        # Both stems reach stride 4 before layer1; "conv7_s4" strides the conv instead of pooling.
        pooled = cfg.stem == "conv7_pool"
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2 if pooled else 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if pooled else nn.Identity()
        cin = widths[0]
        stages = []
        stage_channels: list[int] = []
        stage_k = cfg.stage_branches()
        for i, (channels, depth) in enumerate(zip(widths, depths)):
            blocks: list[GroupBlock] = []
            for j in range(depth):
                # a gate mixes each branch's input with its predecessor's same branch, so it needs
                # a predecessor with as many branches
                same_as_before = j > 0 or (i > 0 and stage_k[i - 1] == stage_k[i])
                block = GroupBlock(
                    convs,
                    branch_cls,
                    cin,
                    channels,
                    stride=2 if (i > 0 and j == 0) else 1,
                    branches=stage_k[i],
                    aggregation=cfg.aggregation,
                    gated=cfg.gates and stage_k[i] > 1 and same_as_before,
                )
                blocks.append(block)
                cin = block.out_channels
            stages.append(nn.Sequential(*blocks))
            stage_channels.append(blocks[-1].out_channels)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_channels: tuple[int, ...] = (widths[0], *stage_channels)
        self._init_weights()
        self.set_output_stride(cfg.output_stride)

    def _init_weights(self) -> None:
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_plan(self, output_stride: int) -> list[tuple[int, list[int]]]:
        """(stride of the first block, dilation per branch) for layer1..layer4."""
        k1, k2, k3, k4 = self.cfg.stage_branches()
        plan = [(1, [1] * k1), (2, [1] * k2), (2, [1] * k3), (2, [1] * k4)]
        if output_stride == 16:
            plan[3] = (1, [2] * k4)
        elif output_stride == 8:
            if self.cfg.bpac and k3 > 1 and k4 > 1:
                rates3, rates4 = self.cfg.bpac_rates or (bpac_rates(k3)[0], bpac_rates(k4)[1])
                plan[2], plan[3] = (1, list(rates3)), (1, list(rates4))
            else:
                plan[2], plan[3] = (1, [2] * k3), (1, [4] * k4)
        elif output_stride != 32:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        return plan

    def set_output_stride(self, output_stride: int) -> None:
        """Switch strides to dilations in place (the weights do not change)."""
        for blocks, (stride, dilations) in zip(self.stage_blocks(), self.stage_plan(output_stride)):
            for j, block in enumerate(blocks):
                block.configure(stride if j == 0 else 1, dilations)
        self.feature_stride = output_stride

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stage_blocks(self) -> list[list[GroupBlock]]:
        """The GroupBlocks of layer1..layer4 (an ``nn.Sequential`` types its items as plain modules)."""
        return [cast("list[GroupBlock]", list(stage)) for stage in self.stages]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # No ReLU here: the next layer binarizes, and sign() of a non-negative map is all +1, which
        # would leave the first binary convs of layer1 a constant input.
        return self.bn1(self.conv1(x))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.forward_stem(x)
        state: BlockState = (None, self.maxpool(stem))
        features = [stem]
        for stage in self.stages:
            state = stage(state)
            features.append(state[1])
        return features
