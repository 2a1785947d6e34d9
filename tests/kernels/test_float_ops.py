"""The float kernels around the binary convs: lincomb_group, upsample_bilinear, conv2d_direct, conv1x1,
affine, global_avgpool.

lincomb_group, upsample_bilinear, affine and global_avgpool must equal their numpy definitions in
``kernels.reference`` bit for bit (each product and sum rounded to float32 in the same order) on
every ISA path and thread count, at sizes that are not multiples of their chunks; conv2d_direct and
conv1x1 sum in another order than numpy and are compared to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from seg_service import kernels
from seg_service.format import conv_output_size
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
    program = [
        [(0, 0.3), (1, -1.7)],
        [(3, 2.0), (2, 0.25), (0, 1.0)],
        [(4, 1.0), (3, -1.0), (4, 0.5)],
        [(1, 1.0)],
    ]
    for g, w in zip(
        kernels.lincomb_group(inputs, program)[0], reference.lincomb_group(inputs, program), strict=True
    ):
        np.testing.assert_array_equal(g, w)


def test_non_contiguous_input_is_read_correctly(isa: str) -> None:
    base = RNG.standard_normal((9, 20, 8)).astype(np.float32)
    view = base[:, ::2]
    other = RNG.standard_normal(view.shape).astype(np.float32)
    got = kernels.lincomb_group([view, other], [[(0, 1.5), (1, -0.5)]])[0][0]
    np.testing.assert_array_equal(
        got, reference.lincomb_group([np.ascontiguousarray(view), other], [[(0, 1.5), (1, -0.5)]])[0]
    )


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


@pytest.mark.parametrize(
    "h, w, c, oh, ow",
    [
        pytest.param(64, 64, 21, 512, 512, marks=pytest.mark.slow),
        (1, 1, 256, 64, 64),
        (5, 7, 3, 13, 2),
        (40, 30, 17, 9, 11),
        (3, 3, 1, 3, 7),
        (60, 80, 2, 240, 320),  # person's logits: few channels, the column pass over elements
        (17, 9, 3, 70, 37),
        (15, 20, 11, 61, 79),  # camvid's classes, odd output size
        (8, 10, 4, 17, 33),  # the most channels that still go element by element
        (8, 10, 5, 64, 80),  # the fewest that do not
        # few channels, where blocks of elements take their sources from one load and two permutes:
        (64, 80, 2, 256, 320),  # person's logits, x4
        (7, 5, 1, 9, 41),  # x8 on a row shorter than a vector: the load is masked at the row's end
        (10, 13, 3, 20, 19),  # x1.5: blocks whose sources span more than a vector fall back
        (6, 9, 4, 12, 27),  # x3, four channels
        (40, 30, 2, 9, 11),  # shrinking: no block qualifies
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_upsample_bilinear_matches_reference(isa: str, threads, h, w, c, oh, ow, n_threads: int) -> None:
    """The C++ resampling equals the numpy definition bit for bit (up- and down-sampling)."""
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal((h, w, c)).astype(np.float32)
    got = kernels.upsample_bilinear(x, oh, ow)
    assert got.shape == (oh, ow, c) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference.upsample_bilinear(x, oh, ow))


@pytest.mark.parametrize(
    "x, size, message",
    [
        (np.zeros((2, 2), np.float32), (4, 4), "3 dimensions"),
        (np.zeros((2, 2, 1), np.float64), (4, 4), "float32"),
        (np.zeros((2, 2, 1), np.float32), (0, 4), "positive"),
        (np.zeros((0, 2, 1), np.float32), (4, 4), "non-empty"),
    ],
)
def test_upsample_bilinear_bad_arguments(x, size, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.upsample_bilinear(x, *size)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (5, 7, 3), (9, 11, 64), (6, 5, 100), (4, 3, 2100), (33, 31, 512)]
)
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


def conv2d_numpy(x, weight, bias, stride, padding, dilation, relu):
    """Plain numpy definition of a zero-padded float convolution (float64 sums)."""
    c_out, k, _, c_in = weight.shape
    h, w, _ = x.shape
    ho = conv_output_size(h, k, stride, padding, dilation)
    wo = conv_output_size(w, k, stride, padding, dilation)
    xp = np.pad(x.astype(np.float64), ((padding, padding), (padding, padding), (0, 0)))
    out = np.zeros((ho, wo, c_out))
    for ky in range(k):
        for kx in range(k):
            tap = xp[
                ky * dilation : ky * dilation + (ho - 1) * stride + 1 : stride,
                kx * dilation : kx * dilation + (wo - 1) * stride + 1 : stride,
            ]
            out += tap @ weight[:, ky, kx, :].T.astype(np.float64)
    if bias is not None:
        out += bias
    return np.maximum(out, 0) if relu else out


@pytest.mark.parametrize(
    "h, w, c, o, k, stride, padding, dilation",
    [
        (37, 29, 3, 64, 7, 2, 3, 1),  # the stem, odd image
        (16, 16, 3, 32, 7, 2, 3, 1),  # the width-0.5 stem
        (9, 13, 1, 40, 3, 1, 1, 1),  # a partial channel block
        (11, 7, 4, 5, 3, 2, 2, 2),
        (5, 5, 2, 70, 5, 1, 0, 1),
        (1, 1, 3, 8, 7, 2, 3, 1),  # one output pixel, mostly padding
        # stems of the webcam sizes: whole pixel tiles and a shifted last one (4-12 s each: slow)
        pytest.param(192, 256, 3, 32, 7, 2, 3, 1, marks=pytest.mark.slow),
        pytest.param(240, 320, 3, 64, 7, 2, 3, 1, marks=pytest.mark.slow),
        (20, 9, 3, 32, 7, 2, 3, 1),  # rows narrower than a pixel tile
        (13, 47, 3, 48, 7, 1, 3, 1),  # stride 1; 48 channels: a partial channel block on avx512
        (17, 26, 3, 8, 7, 2, 3, 1),  # fewer channels than one vector
        (21, 23, 3, 32, 3, 1, 2, 2),  # 3 channels with dilation: the generic tiles
        (25, 31, 3, 16, 7, 3, 3, 1),  # 3 channels, stride 3: the generic tiles
        # rows of tiles of two widths, with tiles inside the input (read in place) between the
        # padded first and last ones: 50 = 5 x 10 (avx512), 5 x 6 + 4 x 5 (avx2) pixels
        (40, 100, 3, 32, 7, 2, 3, 1),
        (19, 45, 3, 33, 7, 2, 3, 1),  # out_w 23: tiles of 8, 8, 7 (avx512); 33 channels: a 1-channel block
        (24, 1, 3, 32, 7, 2, 3, 1),  # 1-pixel-wide output, every tile in the padding
        (12, 29, 3, 32, 7, 1, 0, 1),  # stride 1 without padding: every tile read in place
        (30, 30, 3, 32, 7, 2, 5, 1),  # padding wider than the kernel's reach
        (21, 44, 3, 24, 5, 2, 2, 1),  # 3 channels, 5x5: the generic tiles read in place
        (17, 40, 4, 40, 3, 1, 1, 1),  # 4 channels: a partial block on every path
        (15, 38, 2, 16, 3, 2, 1, 3),  # 2 channels, dilation 3
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv2d_direct_matches_numpy(isa: str, threads, h, w, c, o, k, stride, padding, dilation, n_threads):
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal((h, w, c)).astype(np.float32)
    weight = (RNG.standard_normal((o, k, k, c)) * 0.2).astype(np.float32)
    bias = RNG.standard_normal(o).astype(np.float32)
    for b, relu in ((bias, False), (None, True)):
        got = kernels.conv2d_direct(x, weight, b, stride, padding, dilation, relu)
        want = conv2d_numpy(x, weight, b, stride, padding, dilation, relu)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "h, w, c, o, k, stride, padding, dilation",
    [
        (64, 80, 3, 32, 7, 2, 3, 1),  # the stem
        (23, 35, 3, 32, 7, 1, 3, 1),
        (31, 1, 3, 32, 7, 2, 3, 1),
        (9, 19, 1, 20, 3, 1, 1, 1),
        (14, 27, 4, 13, 5, 2, 2, 2),
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv2d_direct_matches_torch(isa: str, threads, h, w, c, o, k, stride, padding, dilation, n_threads):
    """The same op as torch.nn.functional.conv2d (+ ReLU), to float rounding."""
    torch = pytest.importorskip("torch")
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal((h, w, c)).astype(np.float32)
    weight = (RNG.standard_normal((o, k, k, c)) * 0.2).astype(np.float32)
    bias = RNG.standard_normal(o).astype(np.float32)
    xt = torch.from_numpy(x).permute(2, 0, 1)[None]
    wt = torch.from_numpy(weight).permute(0, 3, 1, 2)
    for b, relu in ((bias, False), (bias, True), (None, False)):
        want = torch.nn.functional.conv2d(
            xt, wt, None if b is None else torch.from_numpy(b), stride, padding, dilation
        )
        if relu:
            want = torch.relu(want)
        got = kernels.conv2d_direct(x, weight, b, stride, padding, dilation, relu)
        np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_direct_simd_paths_agree_bit_for_bit(threads, stride: int) -> None:
    """avx2 and avx512 sum the taps in the same order with one FMA each: equal outputs."""
    paths = [name for name in ("avx512", "avx2") if name in kernels.available_isas()]
    if len(paths) < 2:
        pytest.skip("needs both the avx2 and the avx512 path")
    x = RNG.standard_normal((50, 61, 3)).astype(np.float32)
    weight = (RNG.standard_normal((64, 7, 7, 3)) * 0.2).astype(np.float32)
    bias = RNG.standard_normal(64).astype(np.float32)
    previous = kernels.isa()
    outs = []
    try:
        for name in paths:
            kernels.set_isa(name)
            for n_threads in (1, 2):
                kernels.set_num_threads(n_threads)
                outs.append(kernels.conv2d_direct(x, weight, bias, stride, 3, 1, True))
    finally:
        kernels.set_isa(previous)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_conv2d_direct_bad_arguments() -> None:
    x = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="weight must be"):
        kernels.conv2d_direct(x, np.zeros((2, 3, 3, 4), np.float32), None, 1, 1, 1, False)
    with pytest.raises(ValueError, match="bias must have 2"):
        kernels.conv2d_direct(x, np.zeros((2, 3, 3, 3), np.float32), np.zeros(3, np.float32), 1, 1, 1, False)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.conv2d_direct(x, np.zeros((2, 7, 7, 3), np.float32), None, 1, 0, 1, False)


@pytest.mark.parametrize(
    "h, w, c, k, stride, padding",
    [
        (256, 256, 64, 3, 2, 1),
        (128, 160, 32, 3, 2, 1),  # the stem's pool of the person model (register blocks)
        (6, 9, 8, 3, 2, 1),  # blocks of 8 on avx2, the generic loop on avx512
        (9, 11, 5, 3, 2, 1),
        (1, 7, 3, 1, 1, 0),
        (7, 7, 3, 3, 1, 1),
        (10, 6, 2, 3, 3, 0),
        (5, 5, 17, 2, 2, 1),
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_maxpool2d_matches_reference(isa: str, threads, h, w, c, k, stride, padding, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal((h, w, c)).astype(np.float32)
    x[0, 0, 0] = np.nan  # propagates like numpy's maximum
    x[h // 2, w // 2, c - 1] = np.nan  # a NaN that is not the first tap of its window
    got = kernels.maxpool2d(x, k, stride, padding)
    np.testing.assert_array_equal(got, reference.maxpool2d(x, k, stride, padding))


@pytest.mark.parametrize("h, w, c", [(128, 160, 32), (6, 9, 8), (9, 11, 5)])
def test_maxpool2d_keeps_numpys_nan_payloads_and_zero_signs(isa: str, threads, h, w, c) -> None:
    """Bit for bit as numpy's maximum, tap by tap: of two NaNs in a window the first (its payload),
    of +0 and -0 the first. Channel 0 holds NaNs of three payloads among finite values, channel 1
    only zeros of either sign."""
    kernels.set_num_threads(2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    payloads = np.array([0x7FC00001, 0x7FC00002, 0xFFC00003], dtype=np.uint32).view(np.float32)
    nan_at = rng.random((h, w)) < 0.3
    x[..., 0][nan_at] = payloads[rng.integers(0, 3, nan_at.sum())]
    x[..., 1] = np.where(rng.random((h, w)) < 0.5, np.float32(-0.0), np.float32(0.0))
    got = kernels.maxpool2d(x, 3, 2, 1)
    want = reference.maxpool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert len(np.unique(want[..., 0][np.isnan(want[..., 0])].view(np.uint32))) > 1  # payloads differ
    assert np.signbit(want[..., 1]).any() and not np.signbit(want[..., 1]).all()  # both signs


def test_maxpool2d_bad_arguments() -> None:
    with pytest.raises(ValueError, match="padding"):
        kernels.maxpool2d(np.zeros((4, 4, 1), np.float32), 3, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.maxpool2d(np.zeros((2, 2, 1), np.float32), 3, 1, 0)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 2), (64, 48, 21), (512, 512, 11), (3, 2, 256)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_argmax_channels_matches_numpy(threads, shape, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal(shape).astype(np.float32)
    x[0, 0] = 1.0  # a tie: the first maximum wins
    if shape[2] > 2:
        x[-1, -1, 1] = np.nan  # a NaN counts as the maximum
    got = kernels.argmax_channels(x)
    assert got.dtype == np.uint8 and got.shape == shape[:2]
    np.testing.assert_array_equal(got, np.argmax(x, axis=2))
    np.testing.assert_array_equal(kernels.argmax_channels(x[:, ::-1]), np.argmax(x[:, ::-1], axis=2))


def test_argmax_channels_rejects_too_many_channels() -> None:
    with pytest.raises(ValueError, match="1 to 256 channels"):
        kernels.argmax_channels(np.zeros((2, 2, 257), np.float32))


@pytest.mark.parametrize(
    "h, w, channels, o",
    [
        (60, 80, (32,), 16),  # person's skip projection
        (60, 80, (32,), 2),  # person's classifier: few outputs, vectors along the input channels
        (9, 7, (5, 21, 16), 3),  # few outputs, parts shorter than a vector and with partial vectors
        (5, 3, (40,), 4),
        (3, 4, (7,), 1),
        (8, 10, (64, 64, 64, 64), 64),  # person's head projection of its 4 ASPP branches
        (15, 20, (128, 128, 128, 128), 128),  # camvid's
        (60, 80, (64,), 11),
        (7, 9, (3, 5), 33),  # odd sizes: partial blocks, pixels left after the tiles
        (1, 1, (1,), 1),
        (1, 5, (17,), 70),  # fewer pixels than a tile
        (13, 11, (40, 1, 24), 48),
    ],
)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv1x1_matches_numpy(isa: str, threads, h, w, channels, o, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    parts = [RNG.standard_normal((h, w, c)).astype(np.float32) for c in channels]
    weight_t = (RNG.standard_normal((sum(channels), o)) * 0.2).astype(np.float32)
    bias = RNG.standard_normal(o).astype(np.float32)
    for b, relu in ((bias, False), (None, True)):
        got = kernels.conv1x1(parts, weight_t, b, relu)
        want = reference.conv1x1(parts, weight_t, b, relu)
        assert got.shape == (h, w, o) and got.dtype == np.float32
        # The sums run in another order than numpy's matmul: bound the difference by float32
        # rounding relative to the sum of the products' magnitudes (a fixed tolerance fails where
        # terms cancel).
        magnitude = np.abs(np.concatenate(parts, axis=2)) @ np.abs(weight_t)
        assert np.all(np.abs(got - want) <= 2e-6 * magnitude + 1e-6)
        if relu:
            assert (got >= 0).all()


def test_conv1x1_same_bits_at_any_thread_count_and_simd_path(threads) -> None:
    """Each output sums its input channels in order with one FMA each on both SIMD paths, whatever
    the thread split: equal outputs. With at most 4 outputs the sums run per lane, then across the
    lanes (8 or 16 of them): equal at any thread count, equal to float rounding between paths."""
    paths = [name for name in ("avx512", "avx2") if name in kernels.available_isas()]
    if not paths:
        pytest.skip("needs a SIMD path")
    parts = [RNG.standard_normal((61, 83, c)).astype(np.float32) for c in (64, 16)]
    previous = kernels.isa()
    for o in (2, 16, 40):  # few outputs; one, two and (avx512) four vectors per block
        weight_t = (RNG.standard_normal((80, o)) * 0.2).astype(np.float32)
        bias = RNG.standard_normal(o).astype(np.float32)
        outs: dict[str, list[np.ndarray]] = {}
        try:
            for name in paths:
                kernels.set_isa(name)
                for n_threads in (1, 2):
                    kernels.set_num_threads(n_threads)
                    outs.setdefault(name, []).append(kernels.conv1x1(parts, weight_t, bias, True))
        finally:
            kernels.set_isa(previous)
        first = outs[paths[0]][0]
        for name in paths:
            for out in outs[name]:
                if o <= 4 and name != paths[0]:
                    np.testing.assert_allclose(out, first, rtol=1e-5, atol=1e-5)
                else:
                    np.testing.assert_array_equal(out, first if o > 4 else outs[name][0])


def test_conv1x1_reads_views() -> None:
    """Non-contiguous parts and weights (a channel slice, a transposed matrix) are read correctly."""
    x = RNG.standard_normal((9, 7, 40)).astype(np.float32)
    weight = RNG.standard_normal((5, 20)).astype(np.float32)
    got = kernels.conv1x1([x[:, :, ::2]], weight.T, None, False)
    np.testing.assert_allclose(
        got, reference.conv1x1([x[:, :, ::2]], weight.T, None, False), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "parts, weight_shape, bias, message",
    [
        ([], (4, 2), None, "at least one map"),
        ([np.zeros((2, 2, 3), np.float32)], (4, 2), None, r"weight_t must be \[3"),
        ([np.zeros((2, 2, 3), np.float32)], (3, 0), None, "weight_t must be"),
        ([np.zeros((2, 2, 3), np.float32), np.zeros((3, 2, 1), np.float32)], (4, 2), None, "has shape"),
        ([np.zeros((2, 2, 3), np.float64)], (3, 2), None, "float32"),
        ([np.zeros((2, 2, 3), np.float32)], (3, 2), np.zeros(3, np.float32), "bias must have 2"),
        ([np.zeros((2, 2, 3), np.float32)], (3, 2), np.zeros(2, np.float64), "bias must have dtype float32"),
    ],
)
def test_conv1x1_bad_arguments(parts, weight_shape, bias, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.conv1x1(parts, np.zeros(weight_shape, np.float32), bias, False)


@pytest.mark.parametrize("shape", [(15, 20, 128), (8, 10, 64), (1, 1, 1), (7, 3, 5), (130, 129, 17)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_affine_matches_reference(isa: str, threads, shape, n_threads: int) -> None:
    kernels.set_num_threads(n_threads)
    x = RNG.standard_normal(shape).astype(np.float32)
    x.flat[::7] = np.nan
    mul = RNG.standard_normal(shape[2]).astype(np.float32)
    bias = RNG.standard_normal(shape[2]).astype(np.float32)
    residual = RNG.standard_normal(shape).astype(np.float32)
    for relu_before in (False, True):
        for relu_after in (False, True):
            for res in (None, residual):
                got = kernels.affine(x, mul, bias, relu_before, relu_after, res)
                want = reference.affine(x, mul, bias, relu_before, relu_after, res)
                assert got.dtype == np.float32 and got.shape == shape
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "mul, bias, residual, message",
    [
        (np.zeros(2, np.float32), np.zeros(3, np.float32), None, "mul and bias must have 3"),
        (np.zeros(3, np.float64), np.zeros(3, np.float32), None, "float32"),
        (
            np.zeros(3, np.float32),
            np.zeros(3, np.float32),
            np.zeros((2, 4, 3), np.float32),
            "residual must have",
        ),
    ],
)
def test_affine_bad_arguments(mul, bias, residual, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.affine(np.zeros((2, 2, 3), np.float32), mul, bias, False, False, residual)


@pytest.mark.parametrize(
    "h, w, c, pad", [(1, 1, 1, 0), (1, 7, 2, 3), (9, 1, 11, 2), (37, 53, 11, 11), (360, 480, 11, 32)]
)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_add_mirrored_equals_numpy_on_padded_passes(isa: str, threads, h, w, c, pad, n_threads) -> None:
    """A prediction's flip pass: a[:h, :w] + b[:h, :w][:, ::-1] over padded outputs, bit for bit
    (one float32 addition each), infinities and NaN included, on every path and thread count."""
    kernels.set_num_threads(n_threads)
    a = RNG.standard_normal((h + pad, w + pad + 1, c)).astype(np.float32)
    b = RNG.standard_normal((h + pad // 2, w + pad, c)).astype(np.float32)
    a.flat[::13] = np.inf
    b.flat[::17] = -np.inf
    b.flat[::19] = np.nan
    got = kernels.add_mirrored(a, b, h, w)
    assert got.shape == (h, w, c) and got.dtype == np.float32 and got.flags.c_contiguous
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as it should be
        want = reference.add_mirrored(a, b, h, w)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_add_mirrored_refuses_what_it_cannot_add() -> None:
    a = np.zeros((4, 6, 3), np.float32)
    with pytest.raises(ValueError, match="same channel count"):
        kernels.add_mirrored(a, np.zeros((4, 6, 2), np.float32), 4, 6)
    with pytest.raises(ValueError, match="top-left part"):
        kernels.add_mirrored(a, np.zeros((3, 6, 3), np.float32), 4, 6)
    with pytest.raises(ValueError, match="top-left part"):
        kernels.add_mirrored(a, a, 0, 6)
    with pytest.raises(ValueError, match="float32"):
        kernels.add_mirrored(a.astype(np.float64), a, 4, 6)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 64), (8, 10, 256), (3, 5, 7), (64, 64, 512)])
def test_global_avgpool_equals_its_definition(isa: str, shape) -> None:
    """float64 sums in pixel order, one rounding: the same bits as kernels.reference, on every path;
    within float32 rounding of numpy's float32 mean."""
    x = (RNG.standard_normal(shape) * 4 + 1).astype(np.float32)
    got = kernels.global_avgpool(x)
    assert got.shape == (1, 1, shape[2]) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference.global_avgpool(x))
    np.testing.assert_allclose(got, x.mean(axis=(0, 1), keepdims=True), rtol=1e-5, atol=1e-6)


def test_global_avgpool_keeps_infinities_and_nan() -> None:
    x = np.zeros((2, 3, 4), np.float32)
    x[0, 0, 1], x[1, 2, 2], x[0, 1, 3] = np.inf, -np.inf, np.nan
    got = kernels.global_avgpool(x).reshape(-1)
    assert got[0] == 0.0 and got[1] == np.inf and got[2] == -np.inf and np.isnan(got[3])


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((2, 2), np.float32), "3 dimensions"),
        (np.zeros((0, 2, 3), np.float32), "non-empty"),
        (np.zeros((2, 2, 3), np.float64), "float32"),
    ],
)
def test_global_avgpool_bad_arguments(x: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.global_avgpool(x)
