"""Torch-free runtime for packed Group-Net models.

    from seg_service.runtime import load_model
    model = load_model("weights/person.gnpk")
    mask = model.predict(rgb)          # u8 [H, W] label mask at the original size

This package's namespace is its public API (docs/architecture.md, Runtime API): code outside the
serving side (training, tools) imports from here, never from the modules below it (an import-linter
contract in pyproject.toml). The file format itself is ``seg_service.format``.
"""

from __future__ import annotations

from seg_service.format import FORMAT_VERSION, ModelFormatError
from seg_service.runtime.executor import RunProfile
from seg_service.runtime.model import PackedModel, load_model
from seg_service.runtime.refine import apply_postprocess
from seg_service.runtime.resize import resize_area, resize_nearest
from seg_service.runtime.threads import set_num_threads

__all__ = [
    "FORMAT_VERSION",
    "ModelFormatError",
    "PackedModel",
    "RunProfile",
    "apply_postprocess",
    "load_model",
    "resize_area",
    "resize_nearest",
    "set_num_threads",
]
