"""Real components for the client tests: a seg-service subprocess (tests/server_harness.py), TCP proxies
that add latency or refuse WebSocket upgrades, and helpers that run seg-client as its own process, as a
user would."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from server_harness import ROOT, ServerProcess, free_port

__all__ = [
    "API_KEY",
    "VIDEO",
    "ClientProcess",
    "DelayProxy",
    "ServerProcess",
    "WebSocketRefusingProxy",
    "api_key_server",
    "client_command",
    "free_port",
    "run_client",
]
VIDEO = ROOT / "tests" / "data" / "video" / "camvid_0016E5.mp4"
API_KEY = "client-test-key"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _console_script(name: str, module: str) -> list[str]:
    """The installed console script when there is one, else `python -m module` (same entry point)."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def api_key_server(model_dir: Path, log_dir: Path) -> ServerProcess:
    """A `seg-service` wanting API_KEY (not started; ``.start()`` it)."""
    return ServerProcess(model_dir, log_dir / "seg-service.log", env={"SEG_API_KEY": API_KEY})


def client_command(*args: str | Path) -> list[str]:
    return [*_console_script("seg-client", "seg_client"), *map(str, args)]


def run_client(*args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        client_command(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


class ClientProcess:
    """seg-client running in the background, its stderr lines collected as they come."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            client_command(*args),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (
                self.proc.poll() is not None and self._queue.empty() and not self._reader.is_alive()
            ):
                raise AssertionError(f"no stderr line containing {text!r}; got:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if text in line:
                return line

    def wait(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class DelayProxy:
    """A loopback TCP proxy that delivers every chunk, in both directions, `delay` seconds late.

    The added latency is a hard lower bound on the client's round trip, so a server behind it is
    slower than any video frame rate we feed, whatever the machine's speed.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(downstream)
            threading.Thread(target=self._serve_connection, args=(downstream,), daemon=True).start()

    def _serve_connection(self, downstream: socket.socket, head: bytes = b"") -> None:
        """Pumps one connection; `head`: bytes already read from the client, sent on first."""
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._sockets.append(upstream)
        for src, dst in ((downstream, upstream), (upstream, downstream)):
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
            if head and src is downstream:
                chunks.put((time.monotonic() + self.delay, head))
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.Queue) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, dst: socket.socket, chunks: queue.Queue) -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


class WebSocketRefusingProxy(DelayProxy):
    """A loopback proxy that forwards plain HTTP to the server but answers every WebSocket upgrade
    with `status`, like a reverse proxy without upgrade support."""

    def __init__(self, target_port: int, status: int = 403) -> None:
        self.status = status  # before the accept thread starts
        self.upgrades_refused = 0
        super().__init__(target_port, delay=0.0)

    def _serve_connection(self, downstream: socket.socket, head: bytes = b"") -> None:
        while b"\r\n\r\n" not in head:
            try:
                chunk = downstream.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                downstream.close()
                return
            head += chunk
        if b"upgrade: websocket" not in head.lower():
            super()._serve_connection(downstream, head)
            return
        self.upgrades_refused += 1
        with contextlib.suppress(OSError):
            downstream.sendall(
                f"HTTP/1.1 {self.status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
        downstream.close()
