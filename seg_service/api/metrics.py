"""Prometheus text exposition, written by hand (no client library needed).

Counters and histograms live in one process; with `--workers N` each worker keeps its own, so scrape
the replicas individually or aggregate across workers/replicas in Prometheus.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Seconds; covers a cached tiny request up to a long video upload.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot: +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    """Thread-safe counters and histograms for the service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.inference: dict[str, _Histogram] = {}
        self.frames_processed = 0
        self.frames_dropped = 0
        self.rejected_busy = 0
        self.in_flight = 0
        self.ws_connections = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            if status >= 400:
                self.errors[str(status)] += 1
            hist = self.latency.get(route)
            if hist is None:
                hist = self.latency[route] = _Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_inference(self, model: str, seconds: float) -> None:
        with self._lock:
            hist = self.inference.get(model)
            if hist is None:
                hist = self.inference[model] = _Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def add(self, name: str, amount: int = 1) -> None:
        """Increment (or with a negative amount decrement) a plain counter/gauge attribute."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []
            _header(lines, "seg_http_requests_total", "counter", "HTTP requests by method, route and status.")
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(
                    f'seg_http_requests_total{{method="{_esc(method)}",route="{_esc(route)}",'
                    f'status="{status}"}} {n}'
                )
            _header(
                lines, "seg_http_errors_total", "counter", "HTTP responses with status >= 400, by status."
            )
            for status, n in sorted(self.errors.items()):
                lines.append(f'seg_http_errors_total{{status="{status}"}} {n}')
            _histogram(
                lines, "seg_http_request_duration_seconds", "Request latency by route.", "route", self.latency
            )
            _histogram(
                lines,
                "seg_inference_duration_seconds",
                "Model inference time per image or frame.",
                "model",
                self.inference,
            )
            for name, kind, help_text, value in (
                (
                    "seg_frames_processed_total",
                    "counter",
                    "WebSocket and video frames segmented.",
                    self.frames_processed,
                ),
                (
                    "seg_frames_dropped_total",
                    "counter",
                    "WebSocket frames replaced by a newer frame before processing.",
                    self.frames_dropped,
                ),
                (
                    "seg_rejected_busy_total",
                    "counter",
                    "Requests answered 503 over the in-flight limit.",
                    self.rejected_busy,
                ),
                ("seg_inference_in_flight", "gauge", "Inference jobs running now.", self.in_flight),
                ("seg_websocket_connections", "gauge", "Open WebSocket connections.", self.ws_connections),
            ):
                _header(lines, name, kind, help_text)
                lines.append(f"{name} {value}")
            return "\n".join(lines) + "\n"


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram(lines: list[str], name: str, help_text: str, label: str, hists: dict[str, _Histogram]) -> None:
    _header(lines, name, "histogram", help_text)
    for key, hist in sorted(hists.items()):
        lab = f'{label}="{_esc(key)}"'
        cumulative = 0
        for bound, count in zip(hist.buckets, hist.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{{lab},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{lab},le="+Inf"}} {hist.n}')
        lines.append(f"{name}_sum{{{lab}}} {hist.total:.6f}")
        lines.append(f"{name}_count{{{lab}}} {hist.n}")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
