"""Group-Net model library: encoders, heads, task wrappers, and the create_model entry point."""

from .config import BACKBONES, ModelConfig, bpac_rates
from .factory import REFERENCE_MODELS, create_model, model_name
from .groupnet import BasicBranch, BottleneckBranch, GroupBlock, GroupNetEncoder
from .heads import ASPPHead, FCNHead, PSPHead
from .smp_encoders import register_smp_encoders
from .wrappers import GroupNetClassifier, GroupNetSegmentation

# Here rather than in seg_training/__init__.py: importing the package stays light (CLI --help), and
# anything that builds a model imports this module first.
register_smp_encoders()

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
