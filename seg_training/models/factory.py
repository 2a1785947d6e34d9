"""One entry point for every model the project trains or compares against."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..binary import set_mode
from .config import ModelConfig
from .wrappers import GroupNetClassifier, GroupNetSegmentation

# Full-precision reference models a user would pick instead (comparison rows; never binary).
REFERENCE_MODELS = ("smp_deeplabv3_resnet18", "lraspp_mobilenet_v3_large")


def create_model(cfg: ModelConfig | dict[str, Any] | None = None, **overrides: Any) -> nn.Module:
    """Build a model from a ModelConfig, a dict of its fields, or keyword arguments.

    `arch` may also name a full-precision reference model (REFERENCE_MODELS), built for `num_classes`
    with random weights (nothing is downloaded).
    """
    if cfg is None:
        cfg = {}
    if isinstance(cfg, ModelConfig):
        cfg = cfg.to_dict()
    cfg = {**cfg, **overrides}
    if cfg.get("arch") in REFERENCE_MODELS:
        return create_reference_model(cfg["arch"], int(cfg.get("num_classes", 21)))
    config = ModelConfig.from_dict(cfg)
    model = GroupNetSegmentation(config) if config.task == "seg" else GroupNetClassifier(config)
    if config.precision == "binary":
        set_mode(model, config.mode)
    return model


def create_reference_model(arch: str, num_classes: int) -> nn.Module:
    if arch == "smp_deeplabv3_resnet18":
        import segmentation_models_pytorch as smp

        return smp.DeepLabV3(encoder_name="resnet18", encoder_weights=None, classes=num_classes)
    if arch == "lraspp_mobilenet_v3_large":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        return _OutOnly(
            lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        )
    raise ValueError(f"unknown reference model {arch!r}; choose from {list(REFERENCE_MODELS)}")


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; the training loop wants the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def model_name(cfg: ModelConfig) -> str:
    """A readable variant name, e.g. groupnet_resnet18_k5_bpac_os8_aspp."""
    parts = [cfg.arch]
    if cfg.precision == "full":
        parts.append("fp")
    else:
        if cfg.stage_k is not None:
            parts.append("k" + "".join(str(k) for k in cfg.stage_k))  # e.g. k1222: K = 1 in layer1 only
        else:
            parts.append(f"k{cfg.k}" + ("_layerwise" if cfg.decomposition == "layer" else ""))
    if cfg.task == "seg":
        if cfg.output_stride == 8 and cfg.bpac and min(cfg.stage_branches()[2:]) > 1:
            parts.append("bpac")
        parts += [f"os{cfg.output_stride}", cfg.head]
        if cfg.decoder == "skip":
            parts.append(f"skip{cfg.skip_stage}" + ("_stemskip" if cfg.stem_skip_channels else ""))
    if cfg.width != 1.0:
        parts.append(f"w{cfg.width:g}")
    return "_".join(parts)
