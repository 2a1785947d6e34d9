"""One thread-count setting for everything the runtime computes with: the binary kernels (their own
persistent ``std::thread`` pool, seg_service/kernels/threadpool.cpp; no OpenMP) and the BLAS behind
numpy's matmul (the float stem, projection and classifier convs).

Defaults, when ``set_num_threads`` is never called: the kernels use every processor this process
may run on (its CPU affinity), or ``SEG_THREADS`` when set at the import of ``seg_service.kernels``
(kernels only); numpy's BLAS keeps its own default (usually all cores, or ``OPENBLAS_NUM_THREADS``)."""

from __future__ import annotations

import ctypes

from seg_service import kernels

# Thread-count setters of the OpenBLAS builds numpy ships or links (64-bit-integer and plain).
_BLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _loaded_blas_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "blas" in line.lower() and ".so" in line})
    except OSError:  # not Linux
        return []


def get_blas_threads() -> int | None:
    """numpy's OpenBLAS thread count, or None where it cannot be read."""
    import numpy  # noqa: F401

    for path in _loaded_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SETTERS:
            getter = getattr(lib, symbol.replace("set_num_threads", "get_num_threads"), None)
            if getter is not None:
                return int(getter())
    return None


def set_blas_threads(n: int) -> bool:
    """Best effort: set numpy's OpenBLAS thread count; returns False where it cannot be found."""
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)

    done = False
    for path in _loaded_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done = True
                break
    return done


_blas_quieted = False


def quiet_blas() -> None:
    """Give numpy's BLAS one thread, once per process (load_model calls it).

    The runtime's float convs (stem, projections, classifiers) are small matmuls; after each one
    OpenBLAS's worker threads busy-wait and take the cores the binary kernels' pool needs. Measured
    with the shipped person model, 2 kernel threads, 2 cores: 51 -> 31 ms at 320x240 and
    149 -> 116 ms at 512x512. Call ``set_blas_threads(n)`` afterwards to undo it.
    """
    global _blas_quieted
    if not _blas_quieted:
        set_blas_threads(1)
        _blas_quieted = True


def set_num_threads(n: int) -> None:
    """Threads for the binary kernels' pool (n >= 1); numpy's BLAS keeps one (see quiet_blas)."""
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    kernels.set_num_threads(n)
    quiet_blas()
