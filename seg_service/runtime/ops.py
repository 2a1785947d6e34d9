"""Float ops of the packed graph, in numpy, NHWC with batch 1 (arrays of shape [H, W, C]).

Each op reproduces the corresponding PyTorch op (same output sizes, same sampling rules) so the
runtime matches the training code to float rounding. Binary convolutions are not here: they go
through the C++ kernels (``seg_service.kernels``).
"""

from __future__ import annotations

import numpy as np

# im2col buffers are built in row chunks of at most this many float32 elements (~64 MB).
_IM2COL_CHUNK_ELEMS = 16 * 1024 * 1024


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """PyTorch's convolution / pooling output size (floor mode)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int = 1, padding: int = 0,
           dilation: int = 1, relu: bool = False) -> np.ndarray:
    """Float convolution with zero padding: x [H, W, I], weight [O, kh, kw, I] -> [Ho, Wo, O].

    im2col + one matmul per chunk of output rows; the chunking bounds the column buffer's size.
    """
    h, w, c_in = x.shape
    c_out, kh, kw, wc = weight.shape
    if wc != c_in:
        raise ValueError(f"conv2d: input has {c_in} channels, weight expects {wc}")
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{w} is too small for kernel {kh}x{kw} (dilation {dilation})")
    w_mat = weight.reshape(c_out, kh * kw * c_in).T
    if kh == kw == 1 and stride == 1 and padding == 0:
        out = (x.reshape(h * w, c_in) @ w_mat).reshape(h, w, c_out)
    else:
        xp = np.pad(x, ((padding, padding), (padding, padding), (0, 0))) if padding else x
        # Few input channels (the RGB stem): channel-major columns, so each tap copy is a run of
        # pixels rather than 3 floats at a stride; BLAS reads them transposed at no cost.
        channel_major = c_in < 16
        if channel_major:
            xp = xp.transpose(2, 0, 1)
        out = np.empty((ho, wo, c_out), dtype=np.float32)
        rows = max(1, _IM2COL_CHUNK_ELEMS // max(1, wo * kh * kw * c_in))
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            shape = (kh, kw, c_in, r1 - r0, wo) if channel_major else (r1 - r0, wo, kh, kw, c_in)
            cols = np.empty(shape, dtype=np.float32)
            for i in range(kh):
                top = r0 * stride + i * dilation
                for j in range(kw):
                    left = j * dilation
                    rows_sl = slice(top, top + (r1 - r0 - 1) * stride + 1, stride)
                    cols_sl = slice(left, left + (wo - 1) * stride + 1, stride)
                    if channel_major:
                        cols[i, j] = xp[:, rows_sl, cols_sl]
                    else:
                        cols[:, :, i, j, :] = xp[rows_sl, cols_sl]
            mat = cols.reshape(kh * kw * c_in, -1).T if channel_major else cols.reshape(-1, kh * kw * c_in)
            out[r0:r1] = (mat @ w_mat).reshape(r1 - r0, wo, c_out)
    if bias is not None:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)
    return out


def maxpool2d(x: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """Like torch.nn.MaxPool2d (floor mode): padded positions never win."""
    h, w, _ = x.shape
    ho = conv_output_size(h, kernel, stride, padding, 1)
    wo = conv_output_size(w, kernel, stride, padding, 1)
    xp = np.pad(x, ((padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf) if padding else x
    out = None
    for i in range(kernel):
        for j in range(kernel):
            tap = xp[i: i + (ho - 1) * stride + 1: stride, j: j + (wo - 1) * stride + 1: stride]
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean over H and W -> [1, 1, C]."""
    return x.mean(axis=(0, 1), dtype=np.float32, keepdims=True)


def _adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
    # PyTorch: bin i covers floor(i * size / bins) .. ceil((i + 1) * size / bins).
    return [((i * size) // bins, -((-(i + 1) * size) // bins)) for i in range(bins)]


def adaptive_avgpool(x: np.ndarray, size: int | tuple[int, int] | list[int]) -> np.ndarray:
    """Like torch.nn.AdaptiveAvgPool2d(size), bins may overlap when the output is larger."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w, c = x.shape
    out = np.empty((oh, ow, c), dtype=np.float32)
    for i, (r0, r1) in enumerate(_adaptive_bins(h, oh)):
        for j, (c0, c1) in enumerate(_adaptive_bins(w, ow)):
            out[i, j] = x[r0:r1, c0:c1].mean(axis=(0, 1), dtype=np.float32)
    return out


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling along one axis (align_corners=False)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates to 0
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = (src - i0).astype(np.float32)
    return i0, i1, frac


def upsample_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Like F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)."""
    h, w, _ = x.shape
    if (h, w) == (out_h, out_w):
        return x.copy()
    i0, i1, fy = _linear_taps(h, out_h)
    rows = x[i0] * (1.0 - fy)[:, None, None] + x[i1] * fy[:, None, None]
    j0, j1, fx = _linear_taps(w, out_w)
    out = rows[:, j0] * (1.0 - fx)[None, :, None] + rows[:, j1] * fx[None, :, None]
    return out.astype(np.float32, copy=False)


def lincomb(inputs: list[np.ndarray], coeffs: list[float]) -> np.ndarray:
    """sum_i coeffs[i] * inputs[i]."""
    out = inputs[0] * np.float32(coeffs[0])
    for x, c in zip(inputs[1:], coeffs[1:], strict=True):
        out += np.float32(c) * x
    return out


def affine(x: np.ndarray, mul: np.ndarray, bias: np.ndarray, relu_before: bool = False,
           relu_after: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """Per-channel mul * pre(x) + bias (+ residual), pre = ReLU if relu_before; optional ReLU after."""
    pre = np.maximum(x, 0) if relu_before else x
    out = pre * mul + bias
    if residual is not None:
        out += residual
    if relu_after:
        np.maximum(out, 0, out=out)
    return out.astype(np.float32, copy=False)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def concat(inputs: list[np.ndarray]) -> np.ndarray:
    """Concatenate along channels; 1x1 maps are not broadcast (the graph upsamples them first)."""
    return np.concatenate(inputs, axis=2)
