"""Keep the memory of one run's activations for the next run, instead of handing it back to the
operating system after every run and faulting it in again.

A forward pass allocates and frees the same set of large activation arrays each time (about 1 MB
each at webcam sizes). glibc serves blocks above its mmap threshold with fresh ``mmap`` calls and
trims the heap's free top after a ``free``; its thresholds adapt to the history of allocations, and
some histories settle where every run hands its activations back and faults them in again (a minor
page fault, the kernel zeroing a 4 KiB page, per page written). Measured with the shipped person
model at 320x240 on one core: runs on one input array, then runs on fresh arrays, settle at about
1,250 faults and 5 ms per run (19 -> 14 ms with this setting); a stream of fresh frames or of
varied sizes settles at a few faults per run either way. Raising the mmap and trim thresholds rules
the faulting state out; the process's resident memory then stays at its peak between runs (the
peak itself does not change). glibc only; elsewhere nothing changes. ``SEG_KEEP_FREED_MEMORY=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): arrays
# above it (a 512x512x64 float map is 64 MiB) are still mmapped and returned when freed.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 256 * 1024 * 1024

_ENV = "SEG_KEEP_FREED_MEMORY"
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process (``load_model`` calls it). Returns
    whether the setting is in effect (False off glibc, or with ``SEG_KEEP_FREED_MEMORY=0``)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return _applied
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None) if libc is not None else None
        # gnu_get_libc_version exists only in glibc; musl's mallopt is a no-op that returns 0
        if mallopt is None or getattr(libc, "gnu_get_libc_version", None) is None:
            return _applied
    except OSError:
        return _applied
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    _applied = mmap_set and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
