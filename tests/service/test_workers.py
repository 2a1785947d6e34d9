"""`seg-service --workers N`: N server processes, each with its share of the threads and its own
copy of the models, all answering on one port."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .helpers import DATA, start_server

pytestmark = pytest.mark.slow  # see README, Tests: excluded by -m "not slow"


def test_two_workers_each_load_the_models_and_answer(packed_model_dir, tmp_path):
    srv = start_server(packed_model_dir, tmp_path / "server.log", "--workers", "2", "--threads", "2")
    try:
        photo = (DATA / "ccp" / "images" / "0905.jpg").read_bytes()

        def segment(_: int) -> int:
            return httpx.post(
                f"{srv.url}/segment", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=60
            ).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(segment, range(12)))
        # Over the per-worker in-flight limit the answer is a quick 503, never an error or a queue.
        assert codes.count(200) >= 3 and set(codes) <= {200, 503}, codes
        # Both workers finished starting (the ready probe may have reached only one).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = srv.log()
            loaded = set(re.findall(r"\[(\d+)\] loaded model 'person'", log))
            if len(loaded) == 2:
                break
            time.sleep(0.2)
        assert len(loaded) == 2, log[-3000:]
        # --threads 2 split over 2 workers: one kernel thread each.
        assert len(re.findall(r"kernel threads per process: 1\b", log)) == 2, log[-3000:]
        # ... and which code path the CPU gets (the test's environment is the server's).
        from seg_service import kernels

        assert len(re.findall(rf"kernel path {kernels.isa()} \(popcount \w+", log)) == 2, log[-3000:]
    finally:
        assert srv.stop() == 0
