"""Fixtures for the training pipeline tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TEST_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture()
def ccp_copy(tmp_path: Path) -> Path:
    """A writable copy of the CCP test images and masks (for breaking files on purpose)."""
    dst = tmp_path / "ccp"
    shutil.copytree(TEST_DATA / "ccp", dst)
    return dst
