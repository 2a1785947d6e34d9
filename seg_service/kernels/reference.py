"""Plain numpy reference of the kernel API (``seg_service.kernels``): slow, obviously correct.

It defines the results the C++ kernels must reproduce exactly (integers) or within float rounding
(epilogue). Same signatures as the extension, minus the ISA and thread controls.
"""

from __future__ import annotations

import numpy as np

from seg_service.format import conv_output_size, pack_sign_bits

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Per-element popcount of a uint64 array (int64 result)."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.int64)


def pack_bits(x: np.ndarray) -> np.ndarray:
    """float32 [H, W, C] -> uint64 [H, W, ceil(C/64)], bit = 1 where x < 0 (zero and NaN -> 0): the
    format's bit layout (``seg_service.format.pack_sign_bits``)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"pack_bits expects [H, W, C], got shape {x.shape}")
    return pack_sign_bits(x)


def pack_bits_concat(parts: list[np.ndarray]) -> np.ndarray:
    """pack_bits of the channel concatenation of float32 [H, W, C_i] maps of one size."""
    return pack_bits(np.concatenate(parts, axis=2))


def bconv2d_int(
    a: np.ndarray, w: np.ndarray, in_channels: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> np.ndarray:
    """Raw dot products int32 [Ho, Wo, O]; padded taps are +1 (zero words) and count."""
    h, wid, words = a.shape
    out_c, k, _, _ = w.shape
    ho = conv_output_size(h, k, stride, padding, dilation)
    wo = conv_output_size(wid, k, stride, padding, dilation)
    padded = np.zeros((h + 2 * padding, wid + 2 * padding, words), dtype=np.uint64)
    padded[padding : padding + h, padding : padding + wid] = a
    mismatches = np.zeros((ho, wo, out_c), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * dilation, kx * dilation
            taps = padded[y0 : y0 + stride * (ho - 1) + 1 : stride, x0 : x0 + stride * (wo - 1) + 1 : stride]
            xor = taps[:, :, None, :] ^ w[None, None, :, ky, kx, :]
            mismatches += popcount(xor).sum(axis=-1)
    n = k * k * in_channels
    return (n - 2 * mismatches).astype(np.int32)


def epilogue(
    dots: np.ndarray,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool,
    relu_after: bool,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """y = mul * pre(dot) + bias (+ residual), pre = ReLU if relu_before; ReLU after if relu_after."""
    y = dots.astype(np.float32)
    if relu_before:
        y = np.maximum(y, 0)
    y = mul.astype(np.float32) * y + bias.astype(np.float32)
    if residual is not None:
        y = y + residual
    if relu_after:
        y = np.maximum(y, 0)
    return y.astype(np.float32)


def bconv2d(
    a: np.ndarray,
    w: np.ndarray,
    in_channels: int,
    stride: int,
    padding: int,
    dilation: int,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool,
    relu_after: bool,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Binary convolution with the fused float epilogue, float32 [Ho, Wo, O]."""
    dots = bconv2d_int(a, w, in_channels, stride, padding, dilation)
    return epilogue(dots, mul, bias, relu_before, relu_after, residual)


def bconv2d_float(
    x: np.ndarray,
    w: np.ndarray,
    stride: int,
    padding: int,
    dilation: int,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool,
    relu_after: bool,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """bconv2d on a float input, binarised with x < 0 -> -1 and packed first."""
    return bconv2d(
        pack_bits(x), w, x.shape[2], stride, padding, dilation, mul, bias, relu_before, relu_after, residual
    )


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
    """F.interpolate(mode="bilinear", align_corners=False) on float32 [H, W, C]: rows, then columns."""
    i0, i1, fy = _linear_taps(x.shape[0], out_h)
    j0, j1, fx = _linear_taps(x.shape[1], out_w)
    rows = x[i0] * (1.0 - fy)[:, None, None] + x[i1] * fy[:, None, None]
    return rows[:, j0] * (1.0 - fx)[None, :, None] + rows[:, j1] * fx[None, :, None]


def conv1x1(parts: list[np.ndarray], weight_t: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
    """1x1 float convolution of the channel concatenation of [H, W, C_i] maps: weight_t [sum C_i, O]
    (input-channel major), bias [O] or None, optional ReLU; float64 sums, float32 result (the
    kernel sums in float32, in input-channel order: equal to float rounding)."""
    x = np.concatenate(parts, axis=2).astype(np.float64)
    out = x @ weight_t.astype(np.float64)
    if bias is not None:
        out += bias
    if relu:
        out = np.maximum(out, 0)
    return out.astype(np.float32)


def conv2d_u8(
    image: np.ndarray,
    weight: np.ndarray,
    scale: np.ndarray,
    row_class: np.ndarray,
    col_class: np.ndarray,
    bias_table: np.ndarray,
    stride: int,
    padding: int,
    relu: bool,
) -> np.ndarray:
    """Integer direct convolution of a uint8 image [H, W, C] with int8 weights [O, k, k, C] -> float32
    [len(row_class), len(col_class), O]. Input pixels outside the image read as 0: the zero padding,
    and everything past H and W when the output is larger than the conv's natural size. acc = the
    int64 sum of weight * input over the window; out = acc * scale[o] + bias_table[row_class[y],
    col_class[x], o] in float64, rounded to float32 (the kernel's single-rounded float32 fma can
    differ in the last bit), then max(out, 0) if relu. With scale 1 and bias 0, out is float(acc)
    exactly (|acc| < 2^24)."""
    h, w, c = image.shape
    out_c, k = weight.shape[0], weight.shape[1]
    out_h, out_w = len(row_class), len(col_class)
    span_h, span_w = (out_h - 1) * stride + k, (out_w - 1) * stride + k
    padded = np.zeros((span_h, span_w, c), dtype=np.int64)
    ih, iw = max(0, min(h, span_h - padding)), max(0, min(w, span_w - padding))
    padded[padding : padding + ih, padding : padding + iw] = image[:ih, :iw]
    wt = weight.astype(np.int64)
    acc = np.zeros((out_h, out_w, out_c), dtype=np.int64)
    rows, cols = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    for ky in range(k):
        for kx in range(k):
            acc += padded[ky : ky + rows : stride, kx : kx + cols : stride] @ wt[:, ky, kx, :].T
    bias = bias_table.astype(np.float64)[np.asarray(row_class)][:, np.asarray(col_class)]
    out = (acc * scale.astype(np.float64) + bias).astype(np.float32)
    return np.maximum(out, np.float32(0)) if relu else out


def add_mirrored(a: np.ndarray, b: np.ndarray, h: int, w: int) -> np.ndarray:
    """A prediction's pass plus its mirrored pass mirrored back: a[:h, :w] + b[:h, :w][:, ::-1]."""
    return np.ascontiguousarray(a[:h, :w] + b[:h, :w][:, ::-1], dtype=np.float32)


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean of [H, W, C] over H and W -> [1, 1, C]: float64 sums (pixel by pixel, as numpy reduces
    a leading axis), divided by the pixel count, rounded to float32 once."""
    h, w, c = x.shape
    sums = np.add.reduce(x.reshape(h * w, c).astype(np.float64), axis=0)
    return (sums / (h * w)).astype(np.float32).reshape(1, 1, c)


def affine(
    x: np.ndarray,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool,
    relu_after: bool,
    residual: np.ndarray | None,
) -> np.ndarray:
    """Per-channel pre(x) * mul + bias (+ residual), pre = ReLU if relu_before; ReLU after if
    relu_after; each step in float32, in that order (the kernel matches bit for bit)."""
    pre = np.maximum(x, np.float32(0)) if relu_before else x
    out = pre * mul + bias
    if residual is not None:
        out = out + residual
    return np.maximum(out, np.float32(0)) if relu_after else out


def lincomb_group(inputs: list[np.ndarray], program: list[list[tuple[int, float]]]) -> list[np.ndarray]:
    """Output m = coeff0 * src0, then += coeff * src for each further term (float32 at each step).

    Sources 0 .. len(inputs) - 1 are the inputs; len(inputs) + j is output j (j < m).
    """
    outputs: list[np.ndarray] = []
    for terms in program:
        out = None
        for source, coeff in terms:
            x = inputs[source] if source < len(inputs) else outputs[source - len(inputs)]
            term = np.float32(coeff) * np.asarray(x, dtype=np.float32)
            out = term if out is None else out + term
        assert out is not None, "lincomb_group: an output with no terms"
        outputs.append(out)
    return outputs


def maxpool2d(x: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """torch.nn.MaxPool2d (floor mode) on float32 [H, W, C]: -inf padding, taps in row-major order."""
    h, w, c = x.shape
    ho = conv_output_size(h, kernel, stride, padding)
    wo = conv_output_size(w, kernel, stride, padding)
    xp = np.full((h + 2 * padding, w + 2 * padding, c), -np.inf, dtype=np.float32)
    xp[padding : padding + h, padding : padding + w] = x
    out = None
    for i in range(kernel):
        for j in range(kernel):
            tap = xp[i : i + (ho - 1) * stride + 1 : stride, j : j + (wo - 1) * stride + 1 : stride]
            out = tap.copy() if out is None else np.maximum(out, tap)
    assert out is not None, "maxpool2d: kernel must be >= 1"
    return out


# ---- area resampling (the C++ kernel: resample.cpp; the packed format's input resize) --------------


def _area_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area (box) resampling along one axis for downscaling: each output pixel averages the input
    interval [o * s, (o + 1) * s), s = in_size / out_size, weighting partly covered pixels by their
    covered fraction. Returns source indices and weights, both [out_size, taps]."""
    scale = in_size / out_size
    lo = np.arange(out_size) * scale
    hi = lo + scale
    first = np.floor(lo).astype(np.int64)
    taps = int(np.ceil(scale)) + 1
    idx = first[:, None] + np.arange(taps)[None, :]
    overlap = np.minimum(idx + 1, hi[:, None]) - np.maximum(idx, lo[:, None])
    weights = np.clip(overlap, 0.0, None) / scale
    weights[idx >= in_size] = 0.0
    return np.minimum(idx, in_size - 1), weights.astype(np.float32)


def _resize_axis(x: np.ndarray, idx: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    out = None
    for k in range(idx.shape[1]):
        shape = [1] * x.ndim
        shape[axis] = -1
        term = np.take(x, idx[:, k], axis=axis) * weights[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None, "_resize_axis: no taps"
    return out


def resize_area(rgb: np.ndarray, out_h: int, out_w: int, chunk_rows: int = 256) -> np.ndarray:
    """Downscale an image [H, W, C] (any dtype) to float32 [out_h, out_w, C] with area averaging.

    The width pass runs over row chunks so a very large uint8 image is never converted to float
    all at once.
    """
    h, w = rgb.shape[:2]
    col_idx, col_w = _area_taps(w, out_w)
    narrow = np.empty((h, out_w, rgb.shape[2]), dtype=np.float32)
    for r0 in range(0, h, chunk_rows):
        narrow[r0 : r0 + chunk_rows] = _resize_axis(
            rgb[r0 : r0 + chunk_rows].astype(np.float32), col_idx, col_w, 1
        )
    row_idx, row_w = _area_taps(h, out_h)
    return _resize_axis(narrow, row_idx, row_w, 0)


# ---- network input (the C++ kernel: input_prep.cpp; used by runtime/model.py) ----------------


def normalize_image(
    image: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    padded_h: int,
    padded_w: int,
    with_guide: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The network input of an image [H, W, C] (uint8 or float32): image * scale + offset per channel
    (the product rounded to float32, then the sum) in a zero-padded float32 [padded_h, padded_w, C];
    with ``with_guide`` also the guided filter's guide, clip(image * float32(1 / 255), 0, 1)."""
    img = np.asarray(image).astype(np.float32)
    h, w, c = img.shape
    x = np.zeros((padded_h, padded_w, c), dtype=np.float32)
    inner = x[:h, :w]
    np.multiply(img, np.asarray(scale, dtype=np.float32), out=inner)
    inner += np.asarray(offset, dtype=np.float32)
    if not with_guide:
        return x
    return x, image_guide(img)


def image_guide(image: np.ndarray) -> np.ndarray:
    """The guided filter's guide of an image [H, W, C] (uint8 or float32):
    clip(image * float32(1 / 255), 0, 1)."""
    return np.clip(np.asarray(image).astype(np.float32) * np.float32(1.0 / 255.0), 0.0, 1.0)


def image_pixels(x: np.ndarray, pixel_scale: np.ndarray, pixel_zero: np.ndarray) -> np.ndarray:
    """The u8 pixels an integer stem reads from a normalised image float32 [H, W, C]:
    rint(x * pixel_scale + pixel_zero) (the product rounded to float32, then the sum; half to even)
    clipped to [0, 255]. Exact for an image normalised from u8 pixels."""
    p = np.asarray(x, dtype=np.float32) * np.asarray(pixel_scale, dtype=np.float32)
    p += np.asarray(pixel_zero, dtype=np.float32)
    np.rint(p, out=p)
    np.clip(p, 0, 255, out=p)
    return p.astype(np.uint8)


# ---- guided filter (the C++ kernel: guided_filter.cpp; used by runtime/refine.py) ------------


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of x [H, W, ...] over the (2r+1) x (2r+1) window around each pixel, clipped to the image
    (windows at the border average fewer pixels, as in the guided filter paper's reference code).

    Sums 2r+1 shifted slices per axis: the filter runs on the subsampled image, where r is a few
    pixels, and this beats numpy's cumsum (plus gathers) several times over at that size.
    """
    out = np.asarray(x, dtype=np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad)
        total = np.zeros_like(out)
        window = [slice(None)] * out.ndim
        for shift in range(2 * radius + 1):
            window[axis] = slice(shift, shift + n)
            total += padded[tuple(window)]
        idx = np.arange(n)
        count = (np.minimum(idx + radius + 1, n) - np.maximum(idx - radius, 0)).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = n
        out = total / count.reshape(shape)
    return out


def guided_coefficients(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Colour guided filter coefficients, window-averaged: (a [H, W, K, 3], b [H, W, K]) such that the
    filtered output of channel k is a[..., k, :] . guide + b[..., k]. Unlike the other references this
    one is not bit-exact: the kernel sums in double, this in float32 (they agree to about 1e-5).

    guide: f32 [H, W, 3] in [0, 1]; src: f32 [H, W, K]; eps regularises the per-window 3x3 colour
    covariance (larger: smoother output, weaker edges).
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src, dtype=np.float32)
    mean_i = box_mean(guide, radius)  # [H, W, 3]
    mean_p = box_mean(src, radius)  # [H, W, K]
    # covariance of guide and source per window: [H, W, K, 3]
    cov_ip = (
        box_mean(src[..., :, None] * guide[..., None, :], radius)
        - mean_p[..., :, None] * mean_i[..., None, :]
    )
    # colour covariance per window, symmetric 3x3, plus eps on the diagonal
    var = (
        box_mean(guide[..., :, None] * guide[..., None, :], radius)
        - mean_i[..., :, None] * mean_i[..., None, :]
    )
    var = var + np.float32(eps) * np.eye(3, dtype=np.float32)
    a = np.einsum("hwkj,hwji->hwki", cov_ip, _inverse_sym3(var))
    b = mean_p - np.einsum("hwkc,hwc->hwk", a, mean_i)
    return box_mean(a, radius), box_mean(b, radius)


def _inverse_sym3(m: np.ndarray) -> np.ndarray:
    """Inverse of symmetric positive definite 3x3 matrices [..., 3, 3] by the adjugate (a batched
    LAPACK call costs more than the rest of the filter on a few thousand tiny matrices)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]
    adj = np.empty_like(m)
    adj[..., 0, 0] = d * f - e * e
    adj[..., 0, 1] = adj[..., 1, 0] = c * e - b * f
    adj[..., 0, 2] = adj[..., 2, 0] = b * e - c * d
    adj[..., 1, 1] = a * f - c * c
    adj[..., 1, 2] = adj[..., 2, 1] = b * c - a * e
    adj[..., 2, 2] = a * d - b * b
    det = a * adj[..., 0, 0] + b * adj[..., 0, 1] + c * adj[..., 0, 2]
    return adj / det[..., None, None]


def half_logit_difference(scores: np.ndarray, clip: float) -> np.ndarray:
    """The two-class guided filter's source: (scores[..., 1:] - scores[..., :1]) * 0.5 clipped to
    [-clip, clip], float32 [H, W, 1] (the class-1 logit centred over the two classes)."""
    scores = np.asarray(scores, dtype=np.float32)
    return np.clip((scores[..., 1:] - scores[..., :1]) * np.float32(0.5), -clip, clip)


def guided_apply(
    a: np.ndarray, b: np.ndarray, guide: np.ndarray, sources: list[int], signs: list[float], bias: list[float]
) -> np.ndarray:
    """The fast guided filter's full-resolution step: a [h, w, K, 3] and b [h, w, K] upsampled
    bilinearly to the guide's size (as ``upsample_bilinear``), filtered_j = a_j . guide + b_j summed
    left to right, then out[..., c] = signs[c] * filtered[..., sources[c]] + bias[c]."""
    hl, wl, k = a.shape[:3]
    h, w = guide.shape[:2]
    coef = upsample_bilinear(np.concatenate([a.reshape(hl, wl, 3 * k), b], axis=2).astype(np.float32), h, w)
    g = guide.astype(np.float32)
    filtered = np.stack(
        [
            coef[..., 3 * j] * g[..., 0]
            + coef[..., 3 * j + 1] * g[..., 1]
            + coef[..., 3 * j + 2] * g[..., 2]
            + coef[..., 3 * k + j]
            for j in range(k)
        ],
        axis=2,
    )
    return np.asarray(signs, np.float32) * filtered[..., list(sources)] + np.asarray(bias, np.float32)
