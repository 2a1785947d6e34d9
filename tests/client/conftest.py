"""Fixtures of the client tests (helpers in client_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_harness import ServerProcess, api_key_server


@pytest.fixture(scope="module")
def server(packed_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One API-key-protected server shared by the tests of a module."""
    proc = api_key_server(packed_model_dir, tmp_path_factory.mktemp("server-log")).start()
    yield proc
    proc.stop()
