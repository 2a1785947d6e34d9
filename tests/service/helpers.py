"""Helpers for the service tests: test data, settings and /metrics readers. The server itself is
tests/server_harness.py (shared with the client and weights tests), re-exported here."""

from __future__ import annotations

import time

import httpx
from server_harness import ROOT, ServerProcess, start_server

__all__ = [
    "CORS_ORIGIN",
    "DATA",
    "PERSON_IMAGES",
    "ROOT",
    "SMALL_IMAGE",
    "STREET_IMAGES",
    "TEST_API_KEY",
    "VIDEO",
    "ServerProcess",
    "metric_value",
    "start_server",
    "wait_for_metric",
]

DATA = ROOT / "tests" / "data"
VIDEO = DATA / "video" / "camvid_0016E5.mp4"
PERSON_IMAGES = sorted((DATA / "ccp" / "images").glob("*.jpg"))
STREET_IMAGES = sorted((DATA / "camvid" / "images").glob("*.jpg"))
SMALL_IMAGE = next((DATA / "imagenette" / "val").rglob("*.jpg"))

TEST_API_KEY = "test-key-0123"
CORS_ORIGIN = "http://allowed.example"


def wait_for_metric(url: str, line_prefix: str, value: float, timeout: float = 60.0) -> None:
    """Poll /metrics until the sample starting with `line_prefix` reads `value`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(line_prefix + " ") and float(line.split()[-1]) == value:
                return
        time.sleep(0.02)
    raise AssertionError(f"{line_prefix} never reached {value}")


def metric_value(url: str, line_prefix: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    return 0.0
