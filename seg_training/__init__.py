"""Training side of the project: Group-Net models, data, training loops, export.

Importing ``seg_training.models`` (which every model-building path does) registers the Group-Net
encoders in segmentation-models-pytorch's registry (groupnet_resnet18, groupnet_resnet34,
groupnet_resnet50). The package itself imports nothing heavy, so ``train-seg --help`` answers
without loading PyTorch.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
