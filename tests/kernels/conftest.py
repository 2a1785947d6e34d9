"""Shared fixtures of the kernel tests: every test that takes `isa` runs once per ISA path this CPU has."""

from __future__ import annotations

import pytest

from seg_service import kernels


@pytest.fixture(params=kernels.available_isas())
def isa(request: pytest.FixtureRequest):
    """Forces one ISA path for the test, restoring the previous one afterwards."""
    previous = kernels.isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(previous)


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    previous = kernels.get_num_threads()
    yield
    kernels.set_num_threads(previous)
