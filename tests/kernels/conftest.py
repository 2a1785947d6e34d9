"""Shared fixtures of the kernel tests (`isa`, every ISA path this CPU has, is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from seg_service import kernels


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    previous = kernels.get_num_threads()
    yield
    kernels.set_num_threads(previous)
