"""Tensor layout rules shared by the exporter, the kernels' numpy reference and the runtime.

Sign bits are packed along the last axis (channels) into little-endian uint64 words: bit ``i`` of
word ``j`` is channel ``64*j + i``, bit = 1 where the value is negative (x < 0; zero, -0.0 and NaN
give 0, i.e. +1), and the unused high bits of the last word are 0. The C++ kernels' ``pack_bits``
reproduces :func:`pack_sign_bits` bit for bit (tests/kernels/test_pack_bits.py).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def packed_words(channels: int) -> int:
    """uint64 words that hold ``channels`` sign bits."""
    return -(-channels // WORD_BITS)


def pack_sign_bits(x: np.ndarray) -> np.ndarray:
    """[..., C] numbers -> uint64 [..., ceil(C/64)], bit = 1 where x < 0 (the format's bit layout).

    A binary conv weight in the file is this applied to the weight as [O, kh, kw, C].
    """
    negative = np.asarray(x) < 0
    *lead, c = negative.shape
    words = packed_words(c)
    bits = np.zeros((*lead, words * WORD_BITS), dtype=np.uint8)
    bits[..., :c] = negative
    # 8 bytes per word, channel 8b + i at bit i of byte b: a little-endian uint64 per 64 channels
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").reshape(*lead, words)


def unpack_sign_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """The inverse of :func:`pack_sign_bits`: uint64 [..., Wd] -> bool [..., channels], True where
    negative."""
    words = np.ascontiguousarray(words, dtype="<u8")
    *lead, wd = words.shape
    if not 0 < channels <= wd * WORD_BITS:
        raise ValueError(f"{channels} channels do not fit {wd} words of sign bits")
    as_bytes = words.view(np.uint8).reshape(*lead, wd * 8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :channels].astype(bool)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """PyTorch's convolution and pooling output size along one axis (floor mode)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
