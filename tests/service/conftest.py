"""Fixtures for the service tests: real servers on the packed test models (tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import CORS_ORIGIN, TEST_API_KEY, VIDEO, ServerProcess, start_server


@pytest.fixture(scope="session")
def server(packed_model_dir: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    """The open server (no API key) with test-sized limits, shared by most tests."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(
        packed_model_dir,
        log_path,
        "--max-in-flight",
        "2",
        "--max-video-frames",
        "30",
        "--max-upload-bytes",
        str(2 * 1024 * 1024),
        "--max-image-pixels",
        "4000000",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def restricted_model_dir(packed_model_dir: Path, tmp_path_factory) -> Path:
    """The test models plus two broken files: one with a corrupted tensor byte (checksum fails) and
    one claiming an unknown format version."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    out = tmp_path_factory.mktemp("restricted_models")
    for path in packed_model_dir.glob("*.gnpk"):
        shutil.copy(path, out / path.name)
    corrupt = bytearray((packed_model_dir / "street.gnpk").read_bytes())
    corrupt[-5] ^= 0xFF  # last bytes are tensor data: the stored sha256 no longer matches
    (out / "corrupt.gnpk").write_bytes(bytes(corrupt))
    with safe_open(str(packed_model_dir / "street.gnpk"), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = dict(f.metadata())
    metadata["format_version"] = "999"
    save_file(tensors, str(out / "future.gnpk"), metadata=metadata)
    return out


@pytest.fixture(scope="session")
def restricted_server(restricted_model_dir: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    """API key required, one inference at a time, and broken model files."""
    log_path = tmp_path_factory.mktemp("restricted") / "server.log"
    srv = start_server(
        restricted_model_dir,
        log_path,
        "--max-in-flight",
        "1",
        env={"SEG_API_KEY": TEST_API_KEY, "SEG_CORS_ORIGINS": CORS_ORIGIN},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def looped_video(tmp_path_factory) -> Path:
    """The test video played 4 times (120 frames): long enough to hold an inference slot while a test
    checks what happens meanwhile."""
    import cv2

    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    path = tmp_path_factory.mktemp("video") / "looped.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (320, 240))
    for frame in frames * 4:
        writer.write(frame)
    writer.release()
    return path
