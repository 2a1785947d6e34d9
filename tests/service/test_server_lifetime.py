"""A server a test starts dies with the test process, however that process ends (SIGKILL, abort).

A parent process holding a server through the test harness (tests/server_harness.py, which the
service, client and weights tests share) is killed without any chance to run teardown or atexit;
the server must then be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .helpers import ROOT

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only"),
    pytest.mark.slow,
]

PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from server_harness import start_server
    server = start_server(Path(sys.argv[2]), Path(sys.argv[3]) / "server.log")
    print(server.proc.pid, flush=True)
    time.sleep(600)
""")


def process_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (Z: exited, not yet reaped), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGABRT])
def test_server_dies_with_the_process_that_started_it(death, packed_model_dir, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(ROOT / "tests"), str(packed_model_dir), str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = parent.stdout.readline()  # the server's pid, once it answers /ready (or '' if it failed)
        assert line.strip().isdigit(), (
            f"parent failed: {line}{parent.stderr.read() if parent.poll() is not None else ''}"
        )
        server_pid = int(line)
        assert process_state(server_pid) not in (None, "Z")
        started = command_line(server_pid)  # the launcher exec'd into the server: same pid
        assert (
            "seg_service.api.cli" in started or "seg-service" in started
        ) and "die_with_parent" not in started

        parent.send_signal(death)  # no teardown, no atexit
        parent.wait(timeout=30)
        # Hang guard only: the kernel signals the server at once; it then shuts down.
        deadline = time.monotonic() + 60
        while process_state(server_pid) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_state(server_pid) in (None, "Z"), f"server {server_pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
