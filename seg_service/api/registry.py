"""The set of packed models a server process serves, loaded once at start-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from seg_service.runtime import ModelFormatError, PackedModel, load_model

log = logging.getLogger("seg_service.models")

MODEL_SUFFIX = ".gnpk"


@dataclass(frozen=True)
class RefusedModel:
    path: Path
    reason: str


class ModelRegistry:
    """Loads every `*.gnpk` in a folder; a file that fails its format/version/checksum check is
    refused with one log line and the others still serve."""

    def __init__(self, model_dir: Path, default_model: str) -> None:
        self.model_dir = Path(model_dir)
        self.default_name = default_model
        self.models: dict[str, PackedModel] = {}
        self.refused: list[RefusedModel] = []

    def load_all(self) -> None:
        if not self.model_dir.is_dir():
            log.error("model folder %s does not exist: no model is served", self.model_dir)
            return
        for path in sorted(self.model_dir.glob("*" + MODEL_SUFFIX)):
            start = time.perf_counter()
            try:
                model = load_model(path)
            except (ModelFormatError, OSError, ValueError) as e:
                reason = " ".join(str(e).split()) or type(e).__name__
                self.refused.append(RefusedModel(path, reason))
                log.error("refused model file %s: %s", path, reason)
                continue
            if model.name in self.models:
                reason = f"duplicate model name {model.name!r} (already loaded from another file)"
                self.refused.append(RefusedModel(path, reason))
                log.error("refused model file %s: %s", path, reason)
                continue
            self.models[model.name] = model
            log.info("loaded model %r from %s (%d classes, %d bytes, %.0f ms)", model.name, path,
                     len(model.classes), model.file_size, (time.perf_counter() - start) * 1e3)
        if self.default_name not in self.models:
            log.error("default model %r is not loaded (folder %s; loaded: %s)", self.default_name,
                      self.model_dir, sorted(self.models) or "none")

    @property
    def ready(self) -> bool:
        return self.default_name in self.models

    def get(self, name: str | None) -> PackedModel | None:
        return self.models.get(self.default_name if name is None else name)
