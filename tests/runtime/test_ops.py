"""Each float op of the runtime against torch.nn.functional on random inputs of odd sizes."""

import numpy as np
import pytest

from seg_service.runtime import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(1234)


def to_nchw(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def to_hwc(t: "torch.Tensor") -> np.ndarray:
    return t[0].permute(1, 2, 0).detach().numpy()


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "h, w, cin, cout, k, stride, padding, dilation",
    [
        (13, 17, 3, 8, 7, 2, 3, 1),  # the stem's shape on an odd image
        (9, 11, 5, 7, 3, 1, 1, 1),
        (10, 7, 4, 6, 3, 2, 2, 2),
        (8, 9, 6, 5, 3, 1, 3, 3),
        (9, 11, 20, 7, 3, 1, 2, 2),  # >= 16 channels: channel-last im2col
        (10, 9, 24, 5, 3, 2, 1, 1),
        (7, 5, 16, 3, 1, 1, 0, 1),  # classifier 1x1
        (6, 6, 4, 4, 1, 2, 0, 1),  # strided 1x1
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_matches_torch(h, w, cin, cout, k, stride, padding, dilation, relu):
    x, weight, bias = rand(h, w, cin), rand(cout, cin, k, k), rand(cout)
    ref = F.conv2d(to_nchw(x), torch.from_numpy(weight), torch.from_numpy(bias), stride, padding, dilation)
    if relu:
        ref = F.relu(ref)
    got = ops.conv2d(
        x, np.ascontiguousarray(weight.transpose(0, 2, 3, 1)), bias, stride, padding, dilation, relu
    )
    np.testing.assert_allclose(got, to_hwc(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [8, 24])  # channel-major and channel-last columns
def test_conv2d_row_chunks_agree_with_one_chunk(monkeypatch, channels):
    x, weight = rand(23, 19, channels), rand(5, 3, 3, channels)
    whole = ops.conv2d(x, weight, None, 1, 1, 1)
    monkeypatch.setattr(ops, "_IM2COL_CHUNK_ELEMS", 19 * 9 * channels * 2)  # two output rows per chunk
    np.testing.assert_allclose(ops.conv2d(x, weight, None, 1, 1, 1), whole, rtol=1e-5, atol=1e-5)


def test_conv2d_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        ops.conv2d(rand(5, 5, 3), rand(4, 3, 3, 2), None, 1, 1, 1)


@pytest.mark.parametrize("h, w, k, stride, padding", [(15, 13, 3, 2, 1), (8, 9, 2, 2, 0), (7, 7, 3, 1, 1)])
def test_maxpool2d_matches_torch(h, w, k, stride, padding):
    x = rand(h, w, 5) - 3.0  # all negative-leaning so -inf padding must not win
    ref = F.max_pool2d(to_nchw(x), k, stride, padding)
    np.testing.assert_array_equal(ops.maxpool2d(x, k, stride, padding), to_hwc(ref))


def test_global_avgpool_matches_torch():
    x = rand(11, 7, 6)
    ref = F.adaptive_avg_pool2d(to_nchw(x), 1)
    np.testing.assert_allclose(ops.global_avgpool(x), to_hwc(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "h, w, size", [(13, 17, 1), (13, 17, 2), (13, 17, 3), (13, 17, 6), (4, 5, 6), (7, 3, (2, 3))]
)
def test_adaptive_avgpool_matches_torch(h, w, size):
    x = rand(h, w, 4)
    ref = F.adaptive_avg_pool2d(to_nchw(x), size)
    np.testing.assert_allclose(ops.adaptive_avgpool(x, size), to_hwc(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "h, w, oh, ow",
    [(1, 1, 13, 17), (3, 4, 25, 31), (13, 17, 100, 132), (12, 16, 96, 128), (9, 9, 9, 9), (10, 12, 7, 5)],
)
def test_upsample_bilinear_matches_torch(h, w, oh, ow):
    x = rand(h, w, 3)
    ref = F.interpolate(to_nchw(x), size=(oh, ow), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ops.upsample_bilinear(x, oh, ow), to_hwc(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "relu_before, relu_after, with_residual",
    [(False, False, False), (True, False, True), (False, True, True), (True, True, False)],
)
def test_affine(relu_before, relu_after, with_residual):
    x, mul, bias, res = rand(5, 7, 3), rand(3), rand(3), rand(5, 7, 3)
    expected = (np.maximum(x, 0) if relu_before else x) * mul + bias + (res if with_residual else 0)
    if relu_after:
        expected = np.maximum(expected, 0)
    got = ops.affine(x, mul, bias, relu_before, relu_after, res if with_residual else None)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_lincomb_concat_relu():
    a, b, c = rand(4, 5, 3), rand(4, 5, 3), rand(4, 5, 2)
    np.testing.assert_allclose(ops.lincomb([a, b], [0.25, -2.0]), 0.25 * a - 2.0 * b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ops.concat([a, c]), np.concatenate([a, c], axis=2))
    np.testing.assert_array_equal(ops.relu(a), np.maximum(a, 0))
    assert ops.lincomb([a], [1.0]) is not a  # never aliases an input that may be freed or reused
