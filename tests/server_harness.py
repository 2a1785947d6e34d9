"""The one test harness for a real `seg-service`: a subprocess on a free loopback port, started through
the CLI as users start it, stopped with SIGTERM. The service, client and weights tests all use it.

The server runs through ``die_with_parent`` (it dies with the test process however that ends) and
with one kernel thread. Its output is appended to a log file, so a server killed and started again
on the same port (the client's reconnect tests) keeps one log.
"""

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

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Environment variables that choose the kernels' code path (seg_service.kernels): passed on to servers.
KERNEL_PATH_VARIABLES = ("SEG_ISA", "SEG_POPCOUNT")


class ServerProcess:
    """`python -m seg_service.api.cli` on 127.0.0.1; ``args``: extra CLI arguments, ``env``: extra
    environment (every SEG_* variable of the test process is dropped first, except the kernel path
    it forces: with ``SEG_ISA=avx2`` the server computes what the test's own runtime does, as both
    would on a CPU without AVX-512).

    ``launch()`` starts it, ``start()`` starts it and waits for /ready; ``kill()`` (SIGKILL, a crash)
    or ``stop()`` (SIGTERM) end it, and ``start()`` may run it again on the same port.
    """

    def __init__(
        self, model_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.model_dir = model_dir
        self.args = args
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> ServerProcess:
        """Start the process (no wait)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEG_") or k in KERNEL_PATH_VARIABLES}
        env.update(
            {
                "SEG_MODEL_DIR": str(self.model_dir),
                "SEG_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "NO_ALBUMENTATIONS_UPDATE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            }
        )
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            # Through the launcher: the server dies with this process even where no teardown runs.
            self.proc = subprocess.Popen(
                guarded(
                    [
                        sys.executable,
                        "-m",
                        "seg_service.api.cli",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        *self.args,
                    ]
                ),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        kill_at_exit(self.proc)
        return self

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        """Start the process and return once /ready answers 200; RuntimeError with the log's tail
        if it exits or is not ready in ``timeout`` seconds."""
        proc = self.launch().proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"seg-service exited with code {proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"seg-service not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections, as in a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (SIGKILL after ``timeout`` s); the exit status, None if it never ran."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    model_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """A ready server (see ServerProcess.start)."""
    return ServerProcess(model_dir, log_path, *args, env=env).start()
