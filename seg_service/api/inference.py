"""Runs CPU-bound work off the event loop with a bounded number of jobs in flight.

HTTP requests over the limit are refused at once (503) instead of queueing without bound; the
WebSocket handler waits for a slot instead, since its own one-frame mailbox already bounds its backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from seg_service.api.metrics import Metrics
from seg_service.runtime import PackedModel

T = TypeVar("T")


class Busy(Exception):
    """All inference slots are taken."""


class InferenceGate:
    def __init__(self, max_in_flight: int, metrics: Metrics) -> None:
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self._slots = asyncio.Semaphore(max_in_flight)
        # One thread per slot: a job never waits for a thread once it holds a slot.
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="seg-infer")

    def full(self) -> bool:
        """Every slot is taken (a new HTTP job would be refused)."""
        return self._slots.locked()

    async def run_now(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(*args) in the pool, or raise Busy when every slot is taken."""
        if self._slots.locked():
            self.metrics.add("rejected_busy")
            raise Busy(f"server busy: {self.max_in_flight} inference jobs already in flight, retry later")
        return await self._run(fn, *args)

    async def run_when_free(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(*args) in the pool, waiting for a free slot."""
        return await self._run(fn, *args)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            self.metrics.add("in_flight")
            job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # A running thread cannot be interrupted: it keeps its slot until it finishes, so the
                # in-flight count stays true even when the client that asked for it has gone.
                await asyncio.wait([job])
                raise
            finally:
                self.metrics.add("in_flight", -1)

    def shutdown(self) -> None:
        # Running jobs finish (uvicorn has already stopped taking requests); queued ones cannot exist.
        self._pool.shutdown(wait=True, cancel_futures=True)


def timed_predict(
    model: PackedModel,
    rgb: np.ndarray,
    flip: bool | None = None,
    refine: bool = True,
    scales: Sequence[float] | None = None,
) -> tuple[np.ndarray, float]:
    """The model's label mask and the inference time in milliseconds (``flip``, ``scales``: the
    test-time augmentation, None for the model's own; ``refine=False``: skip the model's stored
    post-processing)."""
    start = time.perf_counter()
    mask = model.predict(rgb, flip=flip, refine=refine, scales=scales)
    return mask, (time.perf_counter() - start) * 1e3
