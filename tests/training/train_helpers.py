"""Helpers shared by the training pipeline tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"


def subprocess_env() -> dict[str, str]:
    """One thread per process: identical arithmetic across runs, and no oversubscription on small CI boxes."""
    env = dict(os.environ)
    env.update(
        NO_ALBUMENTATIONS_UPDATE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_module(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def quiet(out_dir: Path) -> list[str]:
    """Overrides every test run uses: output under tmp, no progress bars."""
    return ["--output.dir", str(out_dir), "--output.progress", "false"]
