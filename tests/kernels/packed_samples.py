"""Random packed inputs and weights for the binary conv tests (imported by them; not a test file)."""

from __future__ import annotations

import numpy as np

from seg_service import kernels


def random_bits(rng: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    """Packed words of random +-1 values along the last axis (`channels` of them)."""
    x = rng.standard_normal((*shape, channels)).astype(np.float32)
    return kernels.pack_bits(x.reshape(-1, 1, channels)).reshape(*shape, -1)


def random_weights(rng: np.random.Generator, out_c: int, k: int, channels: int) -> np.ndarray:
    """Packed weights u64[O, k, k, words] (pack_bits on an [O, k*k, C] array gives this layout)."""
    w = rng.standard_normal((out_c, k * k, channels)).astype(np.float32)
    return kernels.pack_bits(w).reshape(out_c, k, k, -1)
