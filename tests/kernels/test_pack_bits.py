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


@pytest.mark.parametrize(
    "channels",
    [
        (64, 16),  # person's skip decoder: each part starts at a word boundary
        (128, 32),  # camvid's
        (3, 70, 5),  # parts sharing words: gathered, then packed
        (1,),
        (64, 64, 1),
        (100, 28, 64),
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_pack_bits_concat_equals_pack_bits_of_the_concat(isa: str, threads, channels, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    rng = np.random.default_rng(sum(channels))
    h, w = 61, 83  # not a multiple of the kernel's pixel chunks
    parts = [rng.standard_normal((h, w, c)).astype(np.float32) for c in channels]
    parts[0][0, 0, 0] = -0.0  # zero and -0.0 pack as +1
    got = kernels.pack_bits_concat(parts)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, reference.pack_bits_concat(parts))
    np.testing.assert_array_equal(got, kernels.pack_bits(np.concatenate(parts, axis=2)))


@pytest.mark.parametrize(
    "parts, message",
    [
        ([], "at least one map"),
        ([np.zeros((2, 2, 3), np.float32), np.zeros((2, 3, 3), np.float32)], "has shape"),
        ([np.zeros((2, 2, 3), np.float64)], "float32"),
        ([np.zeros((2, 2), np.float32)], "3 dimensions"),
        ([np.zeros((2, 2, 0), np.float32)], "non-empty"),
    ],
)
def test_pack_bits_concat_bad_input(parts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.pack_bits_concat(parts)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_pack_bits_into_writes_only_its_words(isa: str, threads, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 41, 70)).astype(np.float32)  # two words, the second partial
    out = np.full((37, 41, 4), 0xDEADBEEF, dtype=np.uint64)
    kernels.pack_bits_into(x, out, 1)
    np.testing.assert_array_equal(out[:, :, 1:3], reference.pack_bits(x))
    assert (out[:, :, 0] == 0xDEADBEEF).all() and (out[:, :, 3] == 0xDEADBEEF).all()


@pytest.mark.parametrize("h, w, c, oh, ow", [(8, 10, 64, 64, 80), (15, 20, 128, 61, 79), (5, 7, 3, 13, 2)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_upsample_bilinear_bits_packs_the_upsampled_map(
    isa: str, threads, h, w, c, oh, ow, n_threads: int
) -> None:
    kernels.set_num_threads(n_threads)
    x = np.random.default_rng(c).standard_normal((h, w, c)).astype(np.float32)
    words = -(-c // 64)
    out = np.zeros((oh, ow, words + 1), dtype=np.uint64)
    kernels.upsample_bilinear_bits(x, out, 1)
    np.testing.assert_array_equal(out[:, :, 1:], reference.pack_bits(reference.upsample_bilinear(x, oh, ow)))
    assert (out[:, :, 0] == 0).all()


@pytest.mark.parametrize(
    "out, offset, message",
    [
        (np.zeros((4, 5, 2), np.uint64), 1, "do not fit"),
        (np.zeros((4, 5, 2), np.uint64), -1, "do not fit"),
        (np.zeros((4, 6, 2), np.uint64), 0, r"out must be \[4, 5, words\]"),
        (np.zeros((4, 5, 2), np.uint64)[:, :, ::2], 0, "C-contiguous, writeable"),
        (np.zeros((4, 5, 2), np.uint32), 0, "uint64"),
    ],
)
def test_pack_bits_into_bad_output(out, offset: int, message: str) -> None:
    x = np.zeros((4, 5, 70), np.float32)
    with pytest.raises(ValueError, match=message):
        kernels.pack_bits_into(x, out, offset)


def test_upsample_bilinear_bits_bad_output() -> None:
    x = np.zeros((2, 3, 64), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.upsample_bilinear_bits(x, np.zeros((4, 6, 1), np.uint64), 1)
    readonly = np.zeros((4, 6, 1), np.uint64)
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        kernels.upsample_bilinear_bits(x, readonly, 0)
    with pytest.raises(ValueError, match="uint64"):
        kernels.upsample_bilinear_bits(x, np.zeros((4, 6, 1), np.float32), 0)
