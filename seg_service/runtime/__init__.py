"""Torch-free runtime for packed Group-Net models.

    from seg_service.runtime import load_model
    model = load_model("weights/person.gnpk")
    mask = model.predict(rgb)          # u8 [H, W] label mask at the original size

``set_num_threads(n)`` sets the thread count of the binary kernels and (best effort) numpy's BLAS
(``seg_service.runtime.threads``). The public API is listed in docs/architecture.md (Runtime API).

``load_model``, ``PackedModel`` and ``set_num_threads`` are imported lazily so that
``seg_service.runtime.format`` (used by the exporter) does not need the compiled kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seg_service.runtime.format import FORMAT_VERSION, ModelFormatError

if TYPE_CHECKING:
    from seg_service.runtime.model import PackedModel, load_model
    from seg_service.runtime.threads import set_num_threads

__all__ = ["FORMAT_VERSION", "ModelFormatError", "PackedModel", "load_model", "set_num_threads"]


def __getattr__(name: str) -> Any:
    if name in ("PackedModel", "load_model"):
        from seg_service.runtime import model

        return getattr(model, name)
    if name == "set_num_threads":
        from seg_service.runtime.threads import set_num_threads

        return set_num_threads
    raise AttributeError(f"module 'seg_service.runtime' has no attribute {name!r}")
