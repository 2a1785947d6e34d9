"""Helpers for the service tests: a real `seg-service` (uvicorn) in a subprocess on a free loopback
port, started through the CLI exactly as users start it, and stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from die_with_parent import guarded, kill_at_exit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
VIDEO = DATA / "video" / "camvid_0016E5.mp4"
PERSON_IMAGES = sorted((DATA / "ccp" / "images").glob("*.jpg"))
STREET_IMAGES = sorted((DATA / "camvid" / "images").glob("*.jpg"))
SMALL_IMAGE = next((DATA / "imagenette" / "val").rglob("*.jpg"))

STARTUP_TIMEOUT_S = 90.0
TEST_API_KEY = "test-key-0123"
CORS_ORIGIN = "http://allowed.example"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m seg_service.api.cli` in a subprocess; its log goes to a file."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEG_")}
        full_env.update({"SEG_MODEL_DIR": str(model_dir), "SEG_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self._log = open(log_path, "wb")
        # Through the launcher: the server dies with this process even where no teardown runs.
        self.proc = subprocess.Popen(
            guarded([sys.executable, "-m", "seg_service.api.cli", "--port", str(self.port), *args]),
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        kill_at_exit(self.proc)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def start_server(model_dir: Path, log_path: Path, *args: str, **kwargs) -> ServerProcess:
    server = ServerProcess(model_dir, log_path, *args, **kwargs)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


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
