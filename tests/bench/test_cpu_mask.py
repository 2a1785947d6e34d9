"""``seg-bench as-avx2``: a command and its children see a CPU without AVX-512, so every engine
takes the code path of an AVX2-only CPU (seg_bench/cpu_mask.py). Runs real processes under the
real shim; needs CPUID faulting, a C compiler and a CPU with AVX-512 to hide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seg_bench import cpu_mask
from seg_service import kernels

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "tests" / "data" / "portraits" / "images" / "00005.jpg"

pytestmark = [
    pytest.mark.skipif(cpu_mask.unsupported_reason() is not None, reason=str(cpu_mask.unsupported_reason())),
    pytest.mark.skipif(
        not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler to build the CPUID shim"
    ),
]

PROBE = """
import json, sys
import cv2
import numpy as np
from seg_service import kernels
from seg_service.runtime import load_model
info = kernels.dispatch_info()
rgb = cv2.cvtColor(cv2.imread(sys.argv[1]), cv2.COLOR_BGR2RGB)
mask = load_model(sys.argv[2]).predict(rgb)
print(json.dumps({"isas": info["available_isas"], "u8_dot": info["u8_dot"], "mask": mask.tobytes().hex()}))
"""


def probe(env: dict[str, str] | None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(PHOTO), str(ROOT / "weights" / "person.gnpk")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shim_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if "avx512" not in kernels.available_isas():
        pytest.skip("this CPU has no AVX-512 to hide")
    base = dict(os.environ, XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")))  # a fresh build
    base.pop("SEG_ISA", None)
    env = cpu_mask.masked_env(base=base)
    # A seccomp filter may refuse CPUID faulting though the CPU has it; the shim then says so.
    started = subprocess.run(
        [sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, timeout=60
    )
    if "CPUID faulting refused" in started.stderr:
        pytest.skip("this environment refuses CPUID faulting (arch_prctl ARCH_SET_CPUID)")
    return env


def test_a_masked_process_takes_the_avx2_path_with_the_same_mask(shim_env: dict[str, str]) -> None:
    """The kernels find no AVX-512 (their own CPUID check, not SEG_ISA) nor AVX-VNNI, and the
    shipped model's mask is bit for bit the one of the AVX-512 path."""
    masked = probe(shim_env)
    assert "avx512" not in masked["isas"] and "avx2" in masked["isas"]
    assert masked["u8_dot"] == "maddubs"
    plain = probe({k: v for k, v in shim_env.items() if k != "LD_PRELOAD"})
    assert "avx512" in plain["isas"]
    assert masked["mask"] == plain["mask"]


def test_keep_avx_vnni_hides_avx512_only(shim_env: dict[str, str]) -> None:
    if kernels.dispatch_info()["u8_dot"] != "vnni" or "avx_vnni" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-VNNI to keep")
    masked = probe(dict(shim_env, **{cpu_mask.KEEP_AVX_VNNI_ENV: "1"}))
    assert "avx512" not in masked["isas"] and masked["u8_dot"] == "vnni"


GRANDCHILD = (
    "import sys; from seg_service import kernels; sys.exit(3 if 'avx512' in kernels.available_isas() else 0)"
)


def test_children_are_masked_and_real_faults_still_crash(shim_env: dict[str, str]) -> None:
    child = (
        f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {GRANDCHILD!r}]).returncode)"
    )
    assert subprocess.run([sys.executable, "-c", child], env=shim_env, timeout=120).returncode == 0
    crash = subprocess.run(
        [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"],
        env=shim_env,
        capture_output=True,
        timeout=60,
    )
    assert crash.returncode == -11  # SIGSEGV, not swallowed by the CPUID handler


def test_the_command_line(shim_env: dict[str, str]) -> None:
    run = [sys.executable, "-m", "seg_bench.bench", "as-avx2"]
    env = {k: v for k, v in shim_env.items() if k != "LD_PRELOAD"}
    done = subprocess.run(
        [
            *run,
            "--",
            sys.executable,
            "-c",
            "from seg_service import kernels; print(kernels.available_isas())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "avx512" not in done.stdout and "hidden from CPUID" in done.stderr
    missing = subprocess.run([*run], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no command given" in missing.stderr


def test_reports_say_the_cpu_is_masked(shim_env: dict[str, str]) -> None:
    """/proc/cpuinfo still lists AVX-512 under the mask; the benchmark headers must not."""
    code = "from seg_bench import layers; print(layers.cpu_model()); print(' '.join(layers.cpu_flags()))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=shim_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    model, flags = done.stdout.strip().splitlines()[-2:]
    assert "[seg-bench as-avx2: AVX-512 and AVX-VNNI hidden from CPUID]" in model
    assert "avx2" in flags.split() and not any(flag.startswith("avx512") for flag in flags.split())
