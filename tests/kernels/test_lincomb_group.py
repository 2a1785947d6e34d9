"""kernels.lincomb_group: a run of linear combinations in one pass, bit-identical to numpy's ops.

The numpy reference (``kernels.reference.lincomb_group``) evaluates each combination term by term
(first term a product, then ``+`` of each product, every step rounded to float32), so the kernel must match it
bit for bit on every ISA path and thread count, at sizes that are not multiples of its chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

from seg_service import kernels
from seg_service.kernels import reference

RNG = np.random.default_rng(2024)


def group_net_block_program(k: int, gate: float = 0.5) -> list[list[tuple[int, float]]]:
    """A Group-Net block's end: sum of K branches with coefficient 1/K, then K soft gates on the sum."""
    program = [[(j, 1.0 / k) for j in range(k)]]
    program += [[(j, gate), (k, 1.0 - gate)] for j in range(k)]
    return program


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (17, 13, 64), (32, 64, 256)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_group_net_block_matches_numpy(isa: str, threads, shape, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    inputs = [RNG.standard_normal(shape).astype(np.float32) * 10 for _ in range(5)]
    program = group_net_block_program(5, gate=float(RNG.random()))
    got, bits = kernels.lincomb_group(inputs, program)
    assert bits == [None] * len(program)
    want = reference.lincomb_group(inputs, program)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == shape and g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


def test_chained_outputs_and_repeated_sources(isa: str) -> None:
    """Outputs may read any earlier output, and a source may appear in several terms."""
    inputs = [RNG.standard_normal(4099).astype(np.float32) for _ in range(3)]
    program = [[(0, 0.3), (1, -1.7)], [(3, 2.0), (2, 0.25), (0, 1.0)], [(4, 1.0), (3, -1.0), (4, 0.5)], [(1, 1.0)]]
    for g, w in zip(kernels.lincomb_group(inputs, program)[0], reference.lincomb_group(inputs, program), strict=True):
        np.testing.assert_array_equal(g, w)


def test_non_contiguous_input_is_read_correctly(isa: str) -> None:
    base = RNG.standard_normal((9, 20, 8)).astype(np.float32)
    view = base[:, ::2]
    other = RNG.standard_normal(view.shape).astype(np.float32)
    got = kernels.lincomb_group([view, other], [[(0, 1.5), (1, -0.5)]])[0][0]
    np.testing.assert_array_equal(got, reference.lincomb_group([np.ascontiguousarray(view), other],
                                                               [[(0, 1.5), (1, -0.5)]])[0])


@pytest.mark.parametrize(
    "inputs, program, message",
    [
        ([np.zeros(4, np.float32), np.zeros(5, np.float32)], [[(0, 1.0)]], "shape"),
        ([np.zeros(4, np.float64)], [[(0, 1.0)]], "float32"),
        ([np.zeros(4, np.float32)], [[(1, 1.0)]], "earlier outputs only"),  # reads itself
        ([np.zeros(4, np.float32)], [[(0, 1.0)], [(2, 1.0)]], "earlier outputs only"),  # reads a later output
        ([np.zeros(4, np.float32)], [[(-1, 1.0)]], "earlier outputs only"),
        ([np.zeros(4, np.float32)], [[]], "no terms"),
        ([np.zeros(4, np.float32)], [], "at least one output"),
        ([], [[(0, 1.0)]], "at least one input"),
        ([[1.0, 2.0]], [[(0, 1.0)]], "numpy array"),
    ],
)
def test_bad_arguments_raise_value_error(inputs, program, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.lincomb_group(inputs, program)


@pytest.mark.parametrize("h, w, c, oh, ow", [(64, 64, 21, 512, 512), (1, 1, 256, 64, 64), (5, 7, 3, 13, 2),
                                             (40, 30, 17, 9, 11), (3, 3, 1, 3, 7)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_upsample_bilinear_matches_reference(isa: str, threads, h, w, c, oh, ow, n_threads: int) -> None:
    """The C++ resampling equals the numpy definition bit for bit (up- and down-sampling)."""
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal((h, w, c)).astype(np.float32)
    got = kernels.upsample_bilinear(x, oh, ow)
    assert got.shape == (oh, ow, c) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference.upsample_bilinear(x, oh, ow))


@pytest.mark.parametrize("x, size, message", [(np.zeros((2, 2), np.float32), (4, 4), "3 dimensions"),
                                              (np.zeros((2, 2, 1), np.float64), (4, 4), "float32"),
                                              (np.zeros((2, 2, 1), np.float32), (0, 4), "positive"),
                                              (np.zeros((0, 2, 1), np.float32), (4, 4), "non-empty")])
def test_upsample_bilinear_bad_arguments(x, size, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.upsample_bilinear(x, *size)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (9, 11, 64), (6, 5, 100), (4, 3, 2100), (33, 31, 512)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_packed_outputs_equal_pack_bits(isa: str, threads, shape, n_threads: int) -> None:
    """Sign bits of the outputs feeding binary convs, packed in the same pass, equal pack_bits."""
    kernels.set_num_threads(n_threads)
    inputs = [RNG.standard_normal(shape).astype(np.float32) for _ in range(3)]
    inputs[0][..., 0] = 0.0  # zero packs as +1 (bit 0)
    program = group_net_block_program(3)
    outs, bits = kernels.lincomb_group(inputs, program, pack_outputs=[0, 2])
    assert bits[1] is None and bits[3] is None
    for m in (0, 2):
        assert bits[m].dtype == np.uint64 and bits[m].shape == (*shape[:2], -(-shape[2] // 64))
        np.testing.assert_array_equal(bits[m], reference.pack_bits(outs[m]))
    for g, w in zip(outs, reference.lincomb_group(inputs, program), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("pack, message", [([3], "names output 3"), ([-1], "names output -1")])
def test_bad_pack_outputs(pack, message: str) -> None:
    inputs = [np.zeros((2, 2, 4), np.float32)]
    with pytest.raises(ValueError, match=message):
        kernels.lincomb_group(inputs, [[(0, 1.0)]] * 3, pack_outputs=pack)
    with pytest.raises(ValueError, match=r"\[H, W, C\] maps"):
        kernels.lincomb_group([np.zeros(4, np.float32)], [[(0, 1.0)]], pack_outputs=[0])
