"""OpenVINO's engines must not leave the process's alternate signal stack pointing at freed memory.

OpenVINO's CPU plugin installs a signal stack of its own while it compiles and restores the one it
found when its engine dies; engines dying in the order they were created left the main thread's
stack dangling, and the next Python-handled signal killed the process with SIGSEGV (the whole test
suite, on an AVX2-only AMD EPYC). ``seg_bench.layers.keep_signal_stack`` restores the caller's
stack around every compile. The check runs in a subprocess: a regression is a segfault.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("openvino", reason="openvino is not installed (pip install '.[bench]')")

pytestmark = [
    pytest.mark.slow,  # see README, Tests: excluded by -m "not slow"
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack is checked on Linux"),
]

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import gc, os, signal
    from seg_bench import layers as b

    def stack():
        s = b._sigaltstack(None)
        return s.ss_sp, s.ss_flags, s.ss_size

    before = stack()
    shape = b.LayerShape("t", "test", 9, 7, 72, 24, 1)
    first = b.OpenVinoLayer(b.make_layer_inputs(shape), threads=1)
    second = b.OpenVinoLayer(b.make_layer_inputs(shape), threads=1)
    print("while alive", stack() == before, flush=True)
    del first  # the first engine dies first: not the reverse of their creation
    gc.collect()
    del second
    gc.collect()
    print("after both died", stack() == before, flush=True)
    handled = []
    signal.signal(signal.SIGUSR1, lambda *args: handled.append(True))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("signal handled", handled == [True], flush=True)
""")


def test_openvino_engines_leave_the_signal_stack_as_they_found_it():
    done = subprocess.run(  # `-c` in the repository imports its seg_bench
        [sys.executable, "-X", "faulthandler", "-c", PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr[-2000:]}"
    assert done.stdout.split("\n")[:3] == [
        "while alive True",
        "after both died True",
        "signal handled True",
    ], done.stdout
