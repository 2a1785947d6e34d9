"""Child processes that tests start (seg-service servers) die with the test process, however it ends.

A fixture's teardown stops its server when pytest ends normally, but not when pytest is SIGKILLed,
aborts (a hang dumped by faulthandler, a CI timeout) or is interrupted twice: the servers then live
on as orphans holding ports and cores. So each server is started through this file as a launcher:

    python tests/die_with_parent.py <parent pid> <command...>

On Linux it asks the kernel to send SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG, which
survives exec), checks that the parent is still the one that started it (it may have died before the
request), then execs the command: the server keeps the launcher's pid. The request is made in a fresh
single-threaded interpreter, not in a ``preexec_fn`` run between fork and exec of a test process that
has threads. Note that the kernel ties the signal to the *thread* that forked the child: start servers
from the main thread (fixtures do). ``kill_at_exit`` adds an atexit stop for normal interpreter exits
(and for platforms without prctl).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

LAUNCHER = Path(__file__).resolve()
PR_SET_PDEATHSIG = 1


def guarded(command: list[str]) -> list[str]:
    """``command`` run through the launcher, so the process dies when this process dies."""
    return [sys.executable, str(LAUNCHER), str(os.getpid()), *command]


def kill_at_exit(proc: subprocess.Popen) -> None:
    """Also SIGKILL ``proc`` at a normal interpreter exit if it still runs (no teardown ran)."""
    ref = weakref.ref(proc)

    def stop() -> None:
        alive = ref()
        if alive is not None and alive.poll() is None:
            alive.kill()
            alive.wait(timeout=10)

    atexit.register(stop)


def _request_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    _request_parent_death_signal()
    if os.getppid() != parent:  # the parent died before the request: nobody would stop us
        sys.exit(f"die_with_parent: parent {parent} is gone; not starting {command[0]}")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
