"""The set of packed models a server process serves, loaded once at start-up."""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from seg_service.runtime import PackedModel, load_model

log = logging.getLogger("seg_service.models")

MODEL_SUFFIX = ".gnpk"
# The default model when none is configured and the folder holds several (the shipped weights/).
FALLBACK_DEFAULT = "person"


class StartupRefused(RuntimeError):
    """The server cannot start as configured (the message is one line for the operator)."""


@dataclass(frozen=True)
class RefusedModel:
    path: Path
    reason: str  # one line, naming the file by its base name only (never the server's folders)


class ModelRegistry:
    """Loads every `*.gnpk` in a folder. A file that fails in any way (format, version, checksum,
    description, graph, dry run, even a bug of ours) is refused with one log line and the others
    still serve.

    The default model is `default_model` when one is configured; otherwise the only model when the
    folder holds one, else `person`. With several models and none of them the default, or a
    configured default that is not loaded, `load_all` raises StartupRefused.
    """

    def __init__(self, model_dir: Path, default_model: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.configured_default = default_model
        self.default_name: str | None = default_model
        self.models: dict[str, PackedModel] = {}
        self.refused: list[RefusedModel] = []

    def _refuse(self, path: Path, reason: str) -> None:
        # Error texts name the file by its full path; /ready shows reasons to clients, so keep the name.
        reason = " ".join(reason.replace(str(path), path.name).replace(str(self.model_dir), "").split())
        self.refused.append(RefusedModel(path, reason[:300]))
        log.error("refused model file %s: %s", path, reason)

    def load_all(self) -> None:
        if not self.model_dir.is_dir():
            log.error("model folder %s does not exist: no model is served", self.model_dir)
        else:
            for path in sorted(self.model_dir.glob("*" + MODEL_SUFFIX)):
                self._load_one(path)
        self._choose_default()

    def _load_one(self, path: Path) -> None:
        start = time.perf_counter()
        try:
            # stat, never open: a FIFO or device in the folder must not block start-up or stream.
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                self._refuse(path, f"{path.name}: not a regular file")
                return
            model = load_model(path)
        except Exception as e:  # noqa: BLE001 - one bad file must never stop the others from serving
            self._refuse(path, " ".join(str(e).split()) or type(e).__name__)
            return
        if model.name in self.models:
            self._refuse(path, f"duplicate model name {model.name!r} (already loaded from another file)")
            return
        self.models[model.name] = model
        log.info(
            "loaded model %r from %s (%d classes, %d bytes, %.0f ms)",
            model.name,
            path,
            len(model.classes),
            model.file_size,
            (time.perf_counter() - start) * 1e3,
        )

    def _choose_default(self) -> None:
        loaded = ", ".join(sorted(self.models)) or "none"
        if self.configured_default is not None:
            if self.configured_default not in self.models and self.models:
                raise StartupRefused(
                    f"default model {self.configured_default!r} is not loaded from "
                    f"{self.model_dir} (loaded: {loaded}); fix --default-model / SEG_DEFAULT_MODEL"
                )
            self.default_name = self.configured_default
        elif len(self.models) == 1:
            self.default_name = next(iter(self.models))
        elif FALLBACK_DEFAULT in self.models or not self.models:
            self.default_name = FALLBACK_DEFAULT
        else:
            raise StartupRefused(
                f"{len(self.models)} models in {self.model_dir} ({loaded}) and none is the "
                "default: choose one with --default-model / SEG_DEFAULT_MODEL"
            )
        if not self.ready:
            # No model at all: the server starts (its /health answers) and /ready says why it is not ready.
            log.error("no model loaded from %s: /ready answers 503 until one is", self.model_dir)

    @property
    def ready(self) -> bool:
        return self.default_name in self.models

    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if not self.models:
            return "no model is loaded (see refused)"
        return f"default model {self.default_name!r} is not loaded"

    def get(self, name: str | None) -> PackedModel | None:
        return self.models.get(self.default_name if name is None else name)  # type: ignore[arg-type]
