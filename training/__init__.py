"""Training side of the project: Group-Net models, data, training loops, export.

Importing it registers the Group-Net encoders in segmentation-models-pytorch's registry
(groupnet_resnet18, groupnet_resnet34, groupnet_resnet50).
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .models.smp_encoders import register_smp_encoders  # noqa: E402

register_smp_encoders()
