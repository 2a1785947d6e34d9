"""Run a command as on an AVX2-only CPU: ``seg-bench as-avx2 [--keep-avx-vnni] -- CMD [ARGS...]``.

Every engine picks its code path from the CPUID instruction: our kernels, numpy's BLAS, oneDNN
(PyTorch), OpenVINO, MediaPipe's XNNPACK. ``SEG_ISA=avx2`` forces only ours, so on an AVX-512
machine a "forced AVX2" comparison set our AVX2 path against the peers' AVX-512 paths. This runs
CMD, and every process it starts, with AVX-512 hidden from CPUID (and AVX-VNNI, which AVX2-only
CPUs such as AMD Zen 2/3 lack; ``--keep-avx-vnni`` keeps it, as on Intel 12th-generation clients),
so all engines run the code they would run there, side by side on this machine.

How: an ``LD_PRELOAD`` shim (``native/hide_cpu_features.c``, compiled on first use with the
system's C compiler into ``~/.cache/seg-bench``) turns CPUID into a trap with Linux's CPUID
faulting and answers it with the feature bits cleared. Needs x86-64 Linux whose CPU or hypervisor
supports CPUID faulting (``cpuid_fault`` in ``/proc/cpuinfo``; Intel since Ivy Bridge, KVM guests).
Clock speed, caches and the AVX2 units stay this machine's: it shows the code paths of an AVX2-only
CPU, not that CPU's speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "native" / "hide_cpu_features.c"
KEEP_AVX_VNNI_ENV = "SEG_CPUID_KEEP_AVX_VNNI"


class CpuMaskError(RuntimeError):
    """The mask cannot be used here (the message says why, in one line)."""


def unsupported_reason() -> str | None:
    """Why CPUID cannot be masked on this machine, or None when it can."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64 Linux (this is {sys.platform} {platform.machine()})"
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        )
    except OSError as error:
        return f"cannot read /proc/cpuinfo ({error})"
    if "cpuid_fault" not in flags.split():
        return (
            "this CPU or hypervisor cannot fault CPUID (no cpuid_fault in /proc/cpuinfo): "
            "run on an AVX2-only machine instead"
        )
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seg-bench"


def shim_path() -> Path:
    """The compiled shim, built on first use (and again whenever its source changes)."""
    source = SOURCE.read_bytes()
    target = _cache_dir() / f"hide_cpu_features-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise CpuMaskError("no C compiler found to build the CPUID shim (set CC or install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)], capture_output=True, text=True
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise CpuMaskError(f"building the CPUID shim with {compiler} failed: {first}")
    partial.replace(target)  # atomic: concurrent first uses do not see a half-written file
    return target


def hidden_in_child(env: dict[str, str]) -> bool:
    """Whether a Python started with ``env`` finds no AVX-512 through our kernels' own CPUID check."""
    probe = "from seg_service import kernels; print('avx512' in kernels.available_isas())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and done.stdout.strip().endswith("False")


def masked_env(keep_avx_vnni: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: this environment) whose processes see an AVX2-only CPU."""
    reason = unsupported_reason()
    if reason:
        raise CpuMaskError(reason)
    env = dict(os.environ if base is None else base)
    shim = str(shim_path())
    if " " in shim or ":" in shim:  # LD_PRELOAD splits on both
        raise CpuMaskError(f"the shim's path {shim!r} has a space or colon; set XDG_CACHE_HOME elsewhere")
    env["LD_PRELOAD"] = f"{shim} {env.get('LD_PRELOAD', '')}".strip()
    env[KEEP_AVX_VNNI_ENV] = "1" if keep_avx_vnni else "0"
    return env


def active_description() -> str | None:
    """What this process's CPUID hides, when it runs under ``seg-bench as-avx2``; else None.
    (/proc/cpuinfo still lists every flag: it is the kernel's view, not CPUID's.)"""
    if "hide_cpu_features-" not in os.environ.get("LD_PRELOAD", ""):
        return None
    keep = os.environ.get(KEEP_AVX_VNNI_ENV) == "1"
    return "seg-bench as-avx2: AVX-512" + ("" if keep else " and AVX-VNNI") + " hidden from CPUID"


def visible_flags(flags: list[str]) -> list[str]:
    """``flags`` (names as /proc/cpuinfo spells them) less those CPUID hides in this process."""
    description = active_description()
    if description is None:
        return flags
    keep = os.environ.get(KEEP_AVX_VNNI_ENV) == "1"
    return [f for f in flags if not f.startswith("avx512") and (keep or f != "avx_vnni")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-avx-vnni",
        action="store_true",
        help="hide AVX-512 only, keep AVX-VNNI (an Intel 12th-generation-like client) instead of "
        "an AVX2-only CPU without it (AMD Zen 2/3, Intel before Alder Lake)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")


def run_from_args(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CpuMaskError("no command given: seg-bench as-avx2 -- CMD [ARGS...]")
    env = masked_env(args.keep_avx_vnni)
    from seg_service import kernels

    if "avx512" not in kernels.available_isas():
        print(
            "seg-bench as-avx2: this CPU has no AVX-512 to hide; running the command as it is",
            file=sys.stderr,
        )
    elif not hidden_in_child(env):
        raise CpuMaskError("the CPUID shim did not take effect here (a seccomp filter or an old kernel?)")
    hidden = "AVX-512" if args.keep_avx_vnni else "AVX-512 and AVX-VNNI"
    print(f"seg-bench as-avx2: {hidden} hidden from CPUID for {command[0]} and its children", file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        raise CpuMaskError(f"cannot run {command[0]}: {error.strerror}") from None
    return 0  # not reached
