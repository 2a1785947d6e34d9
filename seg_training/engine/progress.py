"""Progress bars and DataLoader workers that cannot hang a run, and end with it however it ends.

Why (issue 15): a run given bad input hung in ``tqdm.write``, waiting forever on tqdm's lock. tqdm's
default lock pairs a ``threading.RLock`` with a ``multiprocessing.RLock`` (a POSIX semaphore shared
with every process forked after it was made, DataLoader workers included), and tqdm starts a monitor
thread that takes both every 10 s. A failed run left its epoch bar open and its persistent DataLoader
iterator alive in the exception's reference cycle, so both were finalised later by the cyclic garbage
collector at an arbitrary allocation: in a forked worker (which then closes the parent's bar, taking
the shared semaphore, or runs the parent's ``_shutdown_workers``), or in the monitor thread while it
holds tqdm's lock. A worker killed or blocked while holding a shared lock (DataLoader terminates
workers that do not exit within 5 s, as on a loaded machine; a thread lock copied by fork while
another thread held it never opens in the child) leaves it held for good, and the parent's next
``tqdm.write`` waits forever.

So: tqdm gets a threading-only lock and no monitor thread (only this process's threads can hold the
lock, and only the run's own thread takes it), and ``RunScope`` closes the run's bars and shuts its
loaders' workers down deterministically when the run ends, before an error is printed: nothing is
left to the garbage collector, and an error never shares a line with a bar.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from tqdm import tqdm

_setup_lock = threading.Lock()


def use_thread_lock() -> None:
    """tqdm: a threading-only lock and no monitor thread, for the rest of the process (idempotent).

    Call before DataLoader workers are forked. The monitor only re-draws bars that stalled longer
    than ``maxinterval``; ours update every step.
    """
    with _setup_lock:
        if getattr(tqdm, "_groupnet_thread_lock", False):
            return
        tqdm.set_lock(threading.RLock())
        tqdm.monitor_interval = 0
        monitor = tqdm.monitor
        if monitor is not None:  # started by an earlier bar: stop it (it takes the lock every 10 s)
            monitor.exit()
            tqdm.monitor = None
        tqdm._groupnet_thread_lock = True


def shutdown_workers(loader: Any) -> None:
    """Stop a DataLoader's persistent workers now, in this thread (not later, from a GC finaliser)."""
    iterator = getattr(loader, "_iterator", None)  # persistent workers' iterator (torch keeps it here)
    if iterator is not None:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # no-op once done; absent with 0 workers
        if shutdown is not None:
            shutdown()
        loader._iterator = None


class RunScope(contextlib.ExitStack):
    """The bars and loaders of one run; leaving the scope closes and stops them, in reverse order."""

    def bar(self, *args: Any, **kwargs: Any) -> tqdm:
        """A tqdm bar closed when the scope ends (a leave=True bar then ends its line)."""
        return self.enter_context(tqdm(*args, **kwargs))

    def loader(self, loader: Any) -> Any:
        """A DataLoader whose workers are shut down when the scope ends."""
        self.callback(shutdown_workers, loader)
        return loader
