"""Model configuration as data: one dataclass describes every variant the library builds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Block type and blocks per stage of each backbone (torchvision's ResNet layouts).
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
ARCH_PREFIX = "groupnet_"

CHOICES: dict[str, tuple[Any, ...]] = {
    "task": ("seg", "cls"),
    "decomposition": ("group", "layer"),
    "precision": ("binary", "full"),
    "aggregation": ("learned", "mean"),
    "output_stride": (8, 16, 32),
    "head": ("aspp", "fcn", "psp"),
    "decoder": ("none", "skip"),
    "mode": ("sign", "tanh"),
    "stem": ("conv7_pool", "conv7_s4"),
}


@dataclass
class ModelConfig:
    """Everything that defines a Group-Net model. Field docs are in docs/architecture.md.

    arch: "groupnet_resnet18" | "groupnet_resnet34" | "groupnet_resnet50".
    k: number of binary branches (bases) per group; for layer-wise decomposition, binary convs per conv.
    stage_k: None, or Group-Net's branches per stage (layer1..layer4), in place of K everywhere: fewer
        where the maps are largest (layer1 at stride 4 is a third of a webcam network's binary work).
        A block whose predecessor has another branch count takes the plain aggregate (no gate).
    decomposition: "group" (Group-Net) or "layer" (each conv rebuilt by K binary convs; baseline).
    precision: "binary", or "full" for the full-precision network on the same code.
    aggregation: "learned" per-branch scales (conference version) or plain "mean" (journal version).
    gates: soft gates between groups (one learnt scalar per block).
    output_stride: 32, 16 or 8 (layer4, then layer3, dilated instead of strided).
    bpac: at output stride 8, one dilation rate per branch in layer3 and layer4.
    bpac_rates: explicit (layer3 rates, layer4 rates), K each; None derives them from K.
    head: segmentation head, "aspp", "fcn" or "psp". Ignored for task "cls".
    decoder: "none" (the head's logits are upsampled to the input) or "skip" (a light decoder: the
        head's features, upsampled to the resolution of encoder stage ``skip_stage``, joined with a
        float 1x1 projection of that stage to ``skip_channels``, then one binary 3x3 conv of
        ``decoder_channels`` and the classifier; DeepLabv3+-style, so coarse output strides keep edges).
    stem_skip_channels: 0, or (with decoder "skip" and stem "conv7_pool") a second decoder stage at
        the stem's stride 2: the decoder's features upsampled, joined with a float 1x1 projection of
        the stem to this many channels, one binary 3x3 conv of ``stem_decoder_channels`` and a
        classifier whose logits are added to the first stage's (upsampled). It starts at zero, so a
        trained skip-decoder network grows the stage without losing what it knows; thin structures
        (a pole 3 pixels wide) are under one cell of the stride-4 skip, not of the stem's.
    width: channel multiplier on (64, 128, 256, 512); reduced-width models for CPU budgets.
    stem: "conv7_pool" (ResNet's 7x7 stride-2 conv, then a 3x3 stride-2 max pool) or "conv7_s4"
        (the same 7x7 conv at stride 4 and no pool: a quarter of the stem's multiply-adds, for
        webcam-sized models where the float stem is a large share of the time; its weights have
        the same shape, so a conv7_pool encoder can initialise it).
    mode: "sign" (binary) or "tanh" (stage 1 of the two-stage recipe).
    """

    arch: str = "groupnet_resnet18"
    task: str = "seg"
    num_classes: int = 21
    k: int = 5
    stage_k: tuple[int, int, int, int] | None = None
    decomposition: str = "group"
    precision: str = "binary"
    aggregation: str = "learned"
    gates: bool = True
    output_stride: int = 8
    bpac: bool = True
    bpac_rates: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    head: str = "aspp"
    head_channels: int = 256
    aspp_rates: tuple[int, int, int] = (12, 24, 36)
    psp_bins: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    decoder: str = "none"
    skip_stage: int = 1
    skip_channels: int = 32
    decoder_channels: int = 64
    stem_skip_channels: int = 0
    stem_decoder_channels: int = 32
    width: float = 1.0
    mode: str = "sign"
    stem: str = "conv7_pool"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"model.{name} must be one of {list(allowed)}, got {value!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"model.arch must be one of {[ARCH_PREFIX + b for b in BACKBONES]}, got {self.arch!r}"
            )
        if self.k < 1:
            raise ValueError(f"model.k must be >= 1, got {self.k}")
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {self.num_classes}")
        if not 0 < self.width <= 4:
            raise ValueError(f"model.width must be in (0, 4], got {self.width}")
        if self.skip_stage not in (1, 2, 3):
            raise ValueError(f"model.skip_stage must be 1, 2 or 3 (layer1..layer3), got {self.skip_stage}")
        if self.skip_channels < 1 or self.decoder_channels < 1:
            raise ValueError("model.skip_channels and model.decoder_channels must be >= 1")
        if self.stem_skip_channels < 0 or self.stem_decoder_channels < 1:
            raise ValueError("model.stem_skip_channels must be >= 0 and model.stem_decoder_channels >= 1")
        if self.stem_skip_channels and (self.decoder != "skip" or self.stem != "conv7_pool"):
            raise ValueError(
                "model.stem_skip_channels needs model.decoder 'skip' and model.stem 'conv7_pool' "
                "(the stage refines the skip decoder at the stem's stride 2)"
            )
        if self.stage_k is not None:
            ks = tuple(self.stage_k)
            if len(ks) != 4 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in ks):
                raise ValueError(
                    f"model.stage_k must be 4 integers >= 1 (layer1..layer4), got {self.stage_k!r}"
                )
            if self.decomposition != "group":
                raise ValueError("model.stage_k applies to Group-Net (model.decomposition 'group') only")
            self.stage_k = ks  # type: ignore[assignment]
        if self.bpac_rates is not None:
            l3, l4 = (tuple(int(r) for r in rates) for rates in self.bpac_rates)
            k3, k4 = self.stage_branches()[2:]
            if len(l3) != k3 or len(l4) != k4:
                raise ValueError(
                    f"model.bpac_rates needs {k3} and {k4} rates (layer3, layer4), got {self.bpac_rates}"
                )
            self.bpac_rates = (l3, l4)
        self.aspp_rates = tuple(int(r) for r in self.aspp_rates)  # type: ignore[assignment]
        self.psp_bins = tuple(int(b) for b in self.psp_bins)

    @property
    def backbone(self) -> str:
        return self.arch.removeprefix(ARCH_PREFIX)

    @property
    def branches(self) -> int:
        """Parallel branches per block: K for Group-Net, 1 for layer-wise decomposition."""
        return self.k if self.decomposition == "group" else 1

    def stage_branches(self) -> tuple[int, int, int, int]:
        """Parallel branches per block of layer1..layer4: ``stage_k``, else ``branches`` in each."""
        if self.stage_k is not None:
            return self.stage_k
        return (self.branches,) * 4  # type: ignore[return-value]

    def stage_widths(self) -> tuple[int, int, int, int]:
        return tuple(max(8, int(round(c * self.width))) for c in (64, 128, 256, 512))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["aspp_rates"] = list(self.aspp_rates)
        d["psp_bins"] = list(self.psp_bins)
        if self.stage_k is not None:
            d["stage_k"] = list(self.stage_k)
        if self.bpac_rates is not None:
            d["bpac_rates"] = [list(r) for r in self.bpac_rates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)


def bpac_rates(k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default BPAC dilation rates for K branches.

    K = 5 gives the paper's [2, 3, 4, 5, 6] in layer3 and [6, 7, 8, 9, 10] in layer4; other K keep
    the rule: layer3 counts up from 2, layer4 counts up from max(4, K + 1), so K = 1 is plain
    output-stride-8 dilation (2, 4).
    """
    layer3 = tuple(2 + i for i in range(k))
    start4 = max(4, k + 1)
    layer4 = tuple(start4 + i for i in range(k))
    return layer3, layer4
