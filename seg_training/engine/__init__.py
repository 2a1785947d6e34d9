"""Training engine: config loading, the train/eval loop, checkpoints, distributed set-up, logging."""

from .checkpoint import CheckpointState, init_weights, load_checkpoint, model_from_checkpoint, save_atomic
from .config import ConfigError, load_config
from .evaluation import evaluate, evaluate_checkpoint
from .trainer import train, train_one_epoch

__all__ = [
    "CheckpointState",
    "ConfigError",
    "evaluate",
    "evaluate_checkpoint",
    "init_weights",
    "load_checkpoint",
    "load_config",
    "model_from_checkpoint",
    "save_atomic",
    "train",
    "train_one_epoch",
]
