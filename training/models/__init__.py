"""Group-Net model library: encoders, heads, task wrappers, and the create_model entry point."""

from .config import BACKBONES, ModelConfig, bpac_rates
from .factory import REFERENCE_MODELS, create_model, model_name
from .groupnet import BasicBranch, BottleneckBranch, GroupBlock, GroupNetEncoder
from .heads import ASPPHead, FCNHead, PSPHead
from .wrappers import GroupNetClassifier, GroupNetSegmentation

__all__ = [
    "ASPPHead",
    "BACKBONES",
    "BasicBranch",
    "BottleneckBranch",
    "FCNHead",
    "GroupBlock",
    "GroupNetClassifier",
    "GroupNetEncoder",
    "GroupNetSegmentation",
    "ModelConfig",
    "PSPHead",
    "REFERENCE_MODELS",
    "bpac_rates",
    "create_model",
    "model_name",
]
