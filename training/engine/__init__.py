"""Training engine: config loading, the train/eval loop, checkpoints, distributed set-up, logging."""

from .checkpoint import init_weights, load_checkpoint, save_atomic
from .config import ConfigError, load_config
from .trainer import evaluate_checkpoint, train

__all__ = ["ConfigError", "evaluate_checkpoint", "init_weights", "load_checkpoint", "load_config", "save_atomic", "train"]
