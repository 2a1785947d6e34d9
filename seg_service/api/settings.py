"""Service settings: environment variables (SEG_*) with command-line flags on top.

The CLI writes the final values back into the environment before uvicorn starts, so every worker
process (`--workers N`) builds the same `Settings` from `Settings.from_env()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

_REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def default_model_dir() -> Path:
    """`weights/` of the source checkout when there is one, else `./weights`."""
    return _REPO_WEIGHTS if _REPO_WEIGHTS.is_dir() else Path.cwd() / "weights"


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Field `x` is read from environment variable `SEG_X`."""

    model_dir: Path = field(default_factory=default_model_dir)
    # None: the only model of the folder, else "person" (registry.py); a name that is not loaded
    # stops start-up.
    default_model: str | None = None
    # Kernel threads per server process; 0 = the kernels' default (all cores, or SEG_THREADS).
    threads: int = 0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    # Inference jobs running at once per process; requests over it get 503 instead of queueing.
    max_in_flight: int = 2
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_video_bytes: int = 100 * 1024 * 1024
    max_video_frames: int = 900
    max_video_seconds: float = 120.0
    log_level: str = "info"
    # Connection limits, handed to uvicorn by the CLI (docs/service.md, "Errors and limits").
    max_connections: int = 100  # open HTTP connections and WebSockets together; more get 503
    max_websockets: int = 16  # open WebSocket sessions per process; more are closed with 1013
    max_header_bytes: int = 64 * 1024  # request line and headers; more get 400
    keep_alive_seconds: int = 5  # an idle keep-alive connection is closed after this
    header_timeout_seconds: float = 10.0  # the request line and headers must be in within this
    body_timeout_seconds: float = 30.0  # longest pause between two pieces of an upload (else 408)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # field name -> value of that field's type (_parse)
        for f in fields(cls):
            raw = env.get("SEG_" + f.name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as e:
                raise ValueError(f"bad value for SEG_{f.name.upper()}={raw!r}: {e}") from None
        return cls(**values).validated()

    def validated(self) -> Settings:
        positive = (
            "max_upload_bytes",
            "max_image_pixels",
            "max_in_flight",
            "max_video_bytes",
            "max_video_frames",
            "max_video_seconds",
            "max_connections",
            "max_websockets",
            "max_header_bytes",
            "keep_alive_seconds",
            "header_timeout_seconds",
            "body_timeout_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.api_key is not None and not _header_safe(self.api_key):
            # HTTP header values travel as bytes that clients encode differently (UTF-8, Latin-1), so a
            # key outside printable ASCII could never be matched reliably: refuse it at start.
            raise ValueError(
                "api_key must be 1-256 printable ASCII characters (no spaces or non-ASCII "
                "letters): clients cannot send anything else reliably in a header"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """The inverse of `from_env` (for handing settings to uvicorn worker processes)."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            env["SEG_" + f.name.upper()] = str(value)
        return env


def _header_safe(key: str) -> bool:
    return 0 < len(key) <= 256 and all(33 <= ord(ch) <= 126 for ch in key)


def _parse(name: str, raw: str) -> object:
    if name == "model_dir":
        return Path(raw).expanduser()
    if name == "cors_origins":
        return tuple(o.strip() for o in raw.split(",") if o.strip())
    if name in ("max_video_seconds", "header_timeout_seconds", "body_timeout_seconds"):
        return float(raw)
    if name in ("default_model", "api_key", "log_level"):
        return raw
    return int(raw)
