"""load_model leaves numpy's BLAS one thread, so its spinning workers keep off the kernels' cores."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_load_model_gives_blas_one_thread(packed_model_path):
    code = textwrap.dedent(f"""
        from seg_service.runtime import load_model
        from seg_service.runtime.threads import get_blas_threads, set_blas_threads
        before = get_blas_threads()
        if before is None:
            print("no-openblas")
            raise SystemExit(0)
        set_blas_threads(2)
        assert get_blas_threads() == 2
        load_model({str(packed_model_path)!r})
        print("after", get_blas_threads())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no-openblas":
        pytest.skip("numpy's BLAS here is not OpenBLAS (its thread count cannot be read)")
    assert out.stdout.strip() == "after 1"
