"""pack_bits: bit i of word j is channel 64*j + i, 1 where x < 0; zero, -0.0 and NaN pack as +1 (0)."""

from __future__ import annotations

import numpy as np
import pytest

from seg_service import kernels
from seg_service.kernels import reference


def unpack(words: np.ndarray, channels: int) -> np.ndarray:
    """uint64 [..., words] -> bool [..., channels] (True = bit set), independent of the packers."""
    bits = (words[..., :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.reshape(*words.shape[:-1], -1)[..., :channels].astype(bool)


@pytest.mark.parametrize("channels", [1, 3, 15, 16, 17, 63, 64, 65, 130, 200])
def test_pack_bits_matches_numpy(isa: str, channels: int) -> None:
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((5, 7, channels)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    packed = kernels.pack_bits(x)
    assert packed.dtype == np.uint64
    assert packed.shape == (5, 7, (channels + 63) // 64)
    np.testing.assert_array_equal(unpack(packed, channels), x < 0)
    np.testing.assert_array_equal(packed, reference.pack_bits(x))
    # unused high bits of the last word stay 0
    if channels % 64:
        assert not np.any(packed[..., -1] >> np.uint64(channels % 64))


def test_pack_bits_special_values(isa: str) -> None:
    values = np.array(
        [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, -1.0, 1.0], dtype=np.float32
    )
    x = np.tile(values, 7)[None, None, :]  # 70 channels: crosses a word boundary
    packed = kernels.pack_bits(x)
    expected = np.tile([False, False, False, False, False, True, False, True, True, False], 7)
    np.testing.assert_array_equal(unpack(packed, x.shape[2])[0, 0], expected)
    np.testing.assert_array_equal(packed, reference.pack_bits(x))


def test_pack_bits_large_map_and_views(isa: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, 90, 96)).astype(np.float32)  # > one pack chunk of pixels
    np.testing.assert_array_equal(kernels.pack_bits(x), reference.pack_bits(x))
    view = x[::2, 1::3, :]  # not C-contiguous: copied, same result
    np.testing.assert_array_equal(kernels.pack_bits(view), reference.pack_bits(view))
