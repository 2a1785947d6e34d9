"""Float ops of the packed graph, NHWC with batch 1 (arrays of shape [H, W, C]).

Each op reproduces the corresponding PyTorch op (same output sizes, same sampling rules) so the
runtime matches the training code to float rounding. Binary convolutions are not here: they go
through the C++ kernels (``seg_service.kernels``), and so do the memory-bound float ops (linear
combinations, bilinear upsampling, max pooling), the RGB stem and the 1x1 convs (projections,
classifier) on the AVX-512 and AVX2 paths, each matching its numpy definition in
``kernels.reference``. The other float convs (and those on the scalar path) are numpy matmuls whose
output rows are split over the kernels' thread count (see "Row-parallel float convs" below).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from seg_service import kernels
from seg_service.format import conv_output_size

# im2col buffers are built in row chunks of at most this many float32 elements (4 MiB): small
# enough to stay in cache between being written and being read by the matmul (the 512x512 stem,
# 2 threads: 20 ms with 64 MiB chunks, 13 ms with 4 MiB ones).
_IM2COL_CHUNK_ELEMS = 1024 * 1024

# --- Row-parallel float convs -----------------------------------------------------------------
# The numpy float convs (a k x k conv other than the stem; on the scalar path also the stem, the
# projections and the classifier) are split by output rows
# over ``kernels.get_num_threads()`` threads: the calling thread plus a
# persistent pool of Python threads. numpy's matmul and ufuncs release the GIL on large arrays, so
# the parts run truly in parallel, each on numpy's single BLAS thread (``threads.quiet_blas``:
# OpenBLAS's own threads busy-wait between calls and take the cores the binary kernels need; these
# pool threads sleep on a queue instead). Each output element is computed by the same numpy calls
# as in one piece, so results do not depend on the thread count (matmul: to float rounding).

# Below this many MACs per thread a conv stays on the calling thread. Handing work to another
# thread costs tens of microseconds, more right after a binary conv, whose pool threads spin a
# little while on the other core before sleeping.
_MIN_MACS_PER_THREAD = 1 << 24

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _helper_pool(helpers: int) -> ThreadPoolExecutor:
    """The pool of ``helpers`` threads, (re)created when the configured thread count changed."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers != helpers:
            # The old pool is dropped, not shut down: another thread may be about to submit to
            # it; its workers exit once it is garbage collected.
            _pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="seg-float-op")
            _pool_workers = helpers
        return _pool


def _thread_count(n_rows: int, work: int, min_work_per_thread: int) -> int:
    """Threads to split ``work`` over: the configured count, fewer for small work or few rows."""
    return max(1, min(kernels.get_num_threads(), n_rows, work // min_work_per_thread))


def _run_row_parts(part: Callable[[int, int], None], n_rows: int, threads: int, unit_rows: int) -> None:
    """Call ``part(r0, r1)`` on consecutive units of ``unit_rows`` rows covering 0..n_rows.

    The calling thread and ``threads - 1`` pool threads claim units one at a time until none is
    left, so a helper that starts late (its core still busy, e.g. with the binary kernels' spinning
    pool) costs at most the unit it holds, never a fixed half of the op.
    """
    unit_rows = max(1, unit_rows)
    n_units = -(-n_rows // unit_rows)
    if threads <= 1 or n_units <= 1:
        part(0, n_rows)
        return
    claims = itertools.count()  # next() on it is atomic under the GIL
    failed = threading.Event()

    def claim_units() -> None:
        try:
            while not failed.is_set():
                unit = next(claims)
                if unit >= n_units:
                    return
                part(unit * unit_rows, min(n_rows, (unit + 1) * unit_rows))
        except BaseException:
            failed.set()  # the others stop claiming
            raise

    pool = _helper_pool(threads - 1)
    futures = [pool.submit(claim_units) for _ in range(min(threads, n_units) - 1)]
    try:
        claim_units()
    finally:
        # A helper that has not started yet (its pool thread busy with another caller's op) is
        # cancelled: the units are all claimed. Wait for the others even if ours failed, so none
        # still writes the output afterwards; then re-raise the first helper error, if any.
        for future in futures:
            if not future.cancel():
                future.exception()
    for future in futures:
        if not future.cancelled():
            future.result()


# Convs with at most this many input channels (the RGB stem) run in the C++ direct convolution on
# the AVX-512 and AVX2 paths: an im2col GEMM with K = k*k*C this small is a poor shape for BLAS
# (the AVX2 direct tiles ran the 240x320 and 512x512 stems 3.5-8x faster than im2col here). On the
# scalar path its portable loops are slower than BLAS.
_DIRECT_CONV_MAX_CHANNELS = 4


def _blocks(r0: int, r1: int, block: int) -> Iterator[tuple[int, int]]:
    """Consecutive (b0, b1) ranges of at most ``block`` rows covering r0..r1."""
    for b0 in range(r0, r1, block):
        yield b0, min(r1, b0 + block)


def _add_bias_relu(out: np.ndarray, bias: np.ndarray | None, relu: bool) -> None:
    if bias is not None:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    relu: bool = False,
) -> np.ndarray:
    """Float convolution with zero padding: x [H, W, I], weight [O, kh, kw, I] -> [Ho, Wo, O].

    im2col + one matmul per chunk of output rows, written in place into the output; the chunking
    bounds the column buffer's size. Output rows are split over the configured threads. The RGB
    stem goes to ``kernels.conv2d_direct`` on the AVX-512 path.
    """
    h, w, c_in = x.shape
    c_out, kh, kw, wc = weight.shape
    if wc != c_in:
        raise ValueError(f"conv2d: input has {c_in} channels, weight expects {wc}")
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{w} is too small for kernel {kh}x{kw} (dilation {dilation})")
    if c_in <= _DIRECT_CONV_MAX_CHANNELS and kernels.isa() in ("avx512", "avx2"):
        return kernels.conv2d_direct(
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(weight, dtype=np.float32),
            None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
            stride,
            padding,
            dilation,
            relu,
        )
    if kh == kw == 1 and stride == 1 and padding == 0:
        return pointwise_conv(x, pointwise_weight(weight), bias, relu)
    w_mat = weight.reshape(c_out, kh * kw * c_in).T
    out = np.empty((ho, wo, c_out), dtype=np.result_type(x.dtype, weight.dtype))
    threads = _thread_count(ho, ho * wo * c_out * kh * kw * c_in, _MIN_MACS_PER_THREAD)

    # Few input channels (the RGB stem): channel-major columns, so each tap copy is a run of
    # pixels rather than 3 floats at a stride; BLAS reads them transposed at no cost. The padded
    # input is made channel-major (contiguous) once, so the taps read 4-byte elements at the
    # conv's stride instead of gathering across interleaved channels.
    channel_major = c_in < 16
    if channel_major:
        xp = np.zeros((c_in, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
        xp[:, padding : padding + h, padding : padding + w] = x.transpose(2, 0, 1)
    else:
        xp = np.pad(x, ((padding, padding), (padding, padding), (0, 0))) if padding else x
    chunk_rows = max(1, _IM2COL_CHUNK_ELEMS // max(1, wo * kh * kw * c_in))

    def im2col_part(r0: int, r1: int) -> None:
        for c0, c1 in _blocks(r0, r1, chunk_rows):
            shape = (kh, kw, c_in, c1 - c0, wo) if channel_major else (c1 - c0, wo, kh, kw, c_in)
            cols = np.empty(shape, dtype=xp.dtype)
            for i in range(kh):
                top = c0 * stride + i * dilation
                rows_sl = slice(top, top + (c1 - c0 - 1) * stride + 1, stride)
                for j in range(kw):
                    left = j * dilation
                    cols_sl = slice(left, left + (wo - 1) * stride + 1, stride)
                    if channel_major:
                        cols[i, j] = xp[:, rows_sl, cols_sl]
                    else:
                        cols[:, :, i, j, :] = xp[rows_sl, cols_sl]
            mat = cols.reshape(kh * kw * c_in, -1).T if channel_major else cols.reshape(-1, kh * kw * c_in)
            np.matmul(mat, w_mat, out=out[c0:c1].reshape(-1, c_out))
        _add_bias_relu(out[r0:r1], bias, relu)

    _run_row_parts(im2col_part, ho, threads, chunk_rows)
    return out


def image_pixels(x: np.ndarray, pixel_scale: np.ndarray, pixel_zero: np.ndarray) -> np.ndarray:
    """The u8 pixels of a normalised image f32 [H, W, C]: rint(x * pixel_scale + pixel_zero),
    clipped to 0..255. Exact for an image normalised from u8 pixels (the float error is far below
    half a level); zero padding comes back as rint(pixel_zero)."""
    return kernels.image_pixels(np.ascontiguousarray(x, dtype=np.float32), pixel_scale, pixel_zero)


class ImageConv:
    """A ``conv2d_u8`` op with its integer weights and border bias tables, arranged once.

    out[y, x, o] = scale[o] * sum over the taps inside the input of weight * (p - pixel_zero) + bias[o]
    (the float conv of the normalised image it was quantised from, zero padding included). The
    kernel sums weight * p in integers over the taps inside the input (outside reads 0) and adds,
    per output pixel, bias[o] - scale[o] * sum(weight * pixel_zero) over the same taps: one value
    per channel for the interior, and a few more for the borders, where the taps inside the input
    are a smaller rectangle of the kernel. Those sums are indexed by (row class, column class).
    """

    def __init__(
        self,
        weight: np.ndarray,
        scale: np.ndarray,
        bias: np.ndarray,
        pixel_scale: list[float],
        pixel_zero: list[float],
        stride: int,
        padding: int,
        relu: bool,
    ) -> None:
        self.weight = np.ascontiguousarray(weight, dtype=np.int8)
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.pixel_scale = np.asarray(pixel_scale, dtype=np.float32)
        self.pixel_zero = np.asarray(pixel_zero, dtype=np.float32)
        self.stride, self.padding, self.relu = stride, padding, relu
        self.kernel = int(self.weight.shape[1])
        # sum over channels of weight * pixel_zero per (o, ky, kx), as 2-D prefix sums over (ky, kx)
        zero_taps = (self.weight.astype(np.float64) * np.asarray(pixel_zero, dtype=np.float64)).sum(axis=3)
        self._zero_prefix = np.zeros((zero_taps.shape[0], self.kernel + 1, self.kernel + 1))
        self._zero_prefix[:, 1:, 1:] = zero_taps.cumsum(axis=1).cumsum(axis=2)
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_op(cls, op: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> ImageConv:
        """The ``conv2d_u8`` op ``op`` of a graph whose tensors are ``tensors``."""
        return cls(
            tensors[op["weight"]],
            tensors[op["scale"]],
            tensors[op["bias"]],
            op["pixel_scale"],
            op["pixel_zero"],
            op["stride"],
            op["padding"],
            op["relu"],
        )

    def _tap_ranges(self, size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Per output position along one axis, the index of its range [k0, k1) of kernel taps that
        fall inside an input of ``size``, and the distinct ranges."""
        k, s, pad = self.kernel, self.stride, self.padding
        n = conv_output_size(size, k, s, pad, 1)
        start = np.arange(n) * s - pad
        k0 = np.clip(-start, 0, k)
        k1 = np.clip(size - start, 0, k)
        pairs = np.stack([k0, k1], axis=1)
        distinct, index = np.unique(pairs, axis=0, return_inverse=True)
        return index.reshape(-1).astype(np.int32), [(int(a), int(b)) for a, b in distinct]

    def tables(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row classes, column classes, bias table [rows, cols, O]) for an input of this size."""
        key = (height, width)
        cached = self._tables.get(key)
        if cached is None:
            rows, row_ranges = self._tap_ranges(height)
            cols, col_ranges = self._tap_ranges(width)
            table = np.empty((len(row_ranges), len(col_ranges), self.weight.shape[0]), dtype=np.float32)
            pre = self._zero_prefix
            for i, (r0, r1) in enumerate(row_ranges):
                for j, (c0, c1) in enumerate(col_ranges):
                    inside = pre[:, r1, c1] - pre[:, r0, c1] - pre[:, r1, c0] + pre[:, r0, c0]
                    table[i, j] = self.bias - self.scale.astype(np.float64) * inside
            cached = (rows, cols, table)
            if len(self._tables) < 16:  # a server sees a few frame sizes; do not grow without bound
                self._tables[key] = cached
        return cached

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: the normalised image f32 [H, W, C], or its u8 pixels [H, W, C] -> f32 [Ho, Wo, O]."""
        pixels = x if x.dtype == np.uint8 else image_pixels(x, self.pixel_scale, self.pixel_zero)
        rows, cols, table = self.tables(pixels.shape[0], pixels.shape[1])
        return kernels.conv2d_u8(
            np.ascontiguousarray(pixels),
            self.weight,
            self.scale,
            rows,
            cols,
            table,
            self.stride,
            self.padding,
            self.relu,
        )


def pointwise_weight(weight: np.ndarray) -> np.ndarray:
    """A 1x1 conv's weight [O, 1, 1, I] as ``kernels.conv1x1`` reads it: float32 [I, O], contiguous."""
    c_out, c_in = weight.shape[0], weight.shape[3]
    return np.ascontiguousarray(weight.reshape(c_out, c_in).T, dtype=np.float32)


def conv1x1_of_concat(
    parts: list[np.ndarray],
    weight: np.ndarray,
    bias: np.ndarray | None,
    relu: bool = False,
    weight_t: np.ndarray | None = None,
) -> np.ndarray:
    """conv2d(concat(parts), weight [O, 1, 1, sum C_i], bias), without building the concat.

    The full-size parts go to ``kernels.conv1x1`` (C++, split over the kernels' threads above a
    work threshold) on the AVX-512 and AVX2 paths; on the scalar path, whose portable loops are far
    slower than BLAS, to numpy matmuls over row parts (``_conv1x1_blas``). A [1, 1, C] part stands
    for a spatially constant map (an image-pooling branch) and is added once, through the bias.
    ``weight_t``: ``pointwise_weight(weight)`` if the caller keeps it (a planned step does), else it
    is made here. Results equal the concat's conv to float rounding (the sums run in another order
    than a matmul's).
    """
    c_out, kh, kw, c_in = weight.shape
    if kh != 1 or kw != 1:
        raise ValueError(f"conv1x1_of_concat: kernel must be 1x1, got {kh}x{kw}")
    if sum(p.shape[2] for p in parts) != c_in:
        raise ValueError(
            f"conv1x1_of_concat: parts have {sum(p.shape[2] for p in parts)} channels, weight expects {c_in}"
        )
    if weight_t is None:
        weight_t = pointwise_weight(weight)
    full: list[np.ndarray] = []
    full_rows: list[slice] = []  # each full part's rows of weight_t
    constant = np.zeros(c_out, dtype=np.float32) if bias is None else bias.astype(np.float32, copy=True)
    offset = 0
    for part in parts:
        rows = slice(offset, offset + part.shape[2])
        offset += part.shape[2]
        if part.shape[:2] == (1, 1):
            # through the kernels, not a numpy matvec: this runs once per frame between kernel calls,
            # where numpy's and BLAS's cold code cost more than the 16 K multiply-adds
            pooled = np.ascontiguousarray(part, dtype=np.float32)
            constant = kernels.conv1x1([pooled], weight_t[rows], constant, False).reshape(-1)
        else:
            full.append(np.ascontiguousarray(part, dtype=np.float32))
            full_rows.append(rows)
    if not full:
        # Every part is 1x1: the concat itself is a 1x1 map (an ASPP head's on an input no larger
        # than the output stride, where its conv branches are 1x1 too), and the conv of it is the
        # constant. (A concat of image-pooling parts only, whose size would come from elsewhere,
        # is not a head export-model writes.)
        out = constant.reshape(1, 1, c_out)
        return np.maximum(out, np.float32(0.0)) if relu else out
    h, w = full[0].shape[:2]
    if any(p.shape[:2] != (h, w) for p in full):
        raise ValueError(f"conv1x1_of_concat: parts of different sizes: {[p.shape for p in full]}")
    if kernels.isa() == "scalar":
        return _conv1x1_blas(full, [weight_t[rows] for rows in full_rows], constant, relu)
    if len(full) == len(parts):
        full_weight = weight_t
    elif all(a.stop == b.start for a, b in itertools.pairwise(full_rows)):  # one run of rows: a view
        full_weight = weight_t[full_rows[0].start : full_rows[-1].stop]
    else:
        full_weight = np.concatenate([weight_t[rows] for rows in full_rows])
    return kernels.conv1x1(full, full_weight, constant, relu)


def pointwise_conv(
    x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray | None, relu: bool = False
) -> np.ndarray:
    """A 1x1 conv of x [H, W, I] (any size, 1x1 too) with weights arranged as ``pointwise_weight``
    makes them ([I, O]): ``kernels.conv1x1`` on the AVX-512 and AVX2 paths, numpy matmuls on the
    scalar path (as ``conv1x1_of_concat``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if kernels.isa() == "scalar":
        constant = np.zeros(weight_t.shape[1], np.float32) if bias is None else bias.astype(np.float32)
        return _conv1x1_blas([x], [weight_t], constant, relu)
    return kernels.conv1x1([x], weight_t, None if bias is None else bias.astype(np.float32), relu)


def _conv1x1_blas(
    parts: list[np.ndarray], weights_t: list[np.ndarray], constant: np.ndarray, relu: bool
) -> np.ndarray:
    """sum_i parts[i] @ weights_t[i] + constant (ReLU): numpy matmuls over units of output rows,
    split over the configured threads (``_run_row_parts``)."""
    h, w = parts[0].shape[:2]
    c_out = constant.shape[0]
    out = np.empty((h, w, c_out), dtype=np.float32)
    macs = h * w * c_out * sum(p.shape[2] for p in parts)
    threads = _thread_count(h, macs, _MIN_MACS_PER_THREAD)

    def part_rows(r0: int, r1: int) -> None:
        dst = out[r0:r1].reshape(-1, c_out)
        product = np.empty_like(dst) if len(parts) > 1 else None
        for i, (x, w_part) in enumerate(zip(parts, weights_t, strict=True)):
            rows = x[r0:r1].reshape(-1, x.shape[2])
            if i == 0:
                np.matmul(rows, w_part, out=dst)
            else:
                assert product is not None  # allocated whenever there is more than one part
                np.matmul(rows, w_part, out=product)
                dst += product
        _add_bias_relu(dst, constant, relu)

    # Units of a few rows: the partial products stay in cache while they are summed.
    _run_row_parts(part_rows, h, threads, max(1, -(-h // (4 * threads))))
    return out


def maxpool2d(x: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """Like torch.nn.MaxPool2d (floor mode): padded positions never win.

    Runs in the C++ kernels (output rows split over their threads); ``kernels.reference.maxpool2d``
    is the numpy definition it matches bit for bit.
    """
    return kernels.maxpool2d(np.ascontiguousarray(x, dtype=np.float32), kernel, stride, padding)


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean over H and W -> [1, 1, C] (``kernels.global_avgpool``: float64 sums, one rounding)."""
    return kernels.global_avgpool(np.ascontiguousarray(x, dtype=np.float32))


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


def upsample_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Like F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False).

    Runs in the C++ kernels (rows first, then columns, output rows split over the kernels' threads);
    ``kernels.reference.upsample_bilinear`` is the numpy definition it matches bit for bit.
    """
    if x.shape[:2] == (out_h, out_w):
        return np.array(x, dtype=np.float32)
    return kernels.upsample_bilinear(np.ascontiguousarray(x, dtype=np.float32), out_h, out_w)


def lincomb(inputs: list[np.ndarray], coeffs: list[float]) -> np.ndarray:
    """sum_i coeffs[i] * inputs[i], each product and sum rounded to float32 in that order.

    Maps of one shape go through ``kernels.lincomb_group`` (one pass, split over the kernels'
    threads); anything else (a broadcast [1, 1, C] map, another dtype) through numpy.
    """
    if len(inputs) != len(coeffs):
        raise ValueError(f"lincomb: {len(inputs)} inputs but {len(coeffs)} coefficients")
    shape = inputs[0].shape
    if all(x.dtype == np.float32 and x.shape == shape for x in inputs):
        return kernels.lincomb_group(inputs, [[(i, float(c)) for i, c in enumerate(coeffs)]])[0][0]
    out = inputs[0] * np.float32(coeffs[0])
    for x, c in zip(inputs[1:], coeffs[1:], strict=True):
        out += np.float32(c) * x
    return out.astype(np.float32, copy=False)


def affine(
    x: np.ndarray,
    mul: np.ndarray,
    bias: np.ndarray,
    relu_before: bool = False,
    relu_after: bool = False,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Per-channel mul * pre(x) + bias (+ residual), pre = ReLU if relu_before; optional ReLU after.

    float32 maps with [C] scales go through ``kernels.affine`` (one pass, on the calling thread for
    a decoder's small maps); anything else through numpy, with the same result.
    """
    f32 = np.float32
    if (
        x.dtype == f32
        and mul.dtype == f32
        and bias.dtype == f32
        and x.ndim == 3
        and mul.shape == bias.shape == (x.shape[2],)
        and (residual is None or (residual.dtype == f32 and residual.shape == x.shape))
    ):
        return kernels.affine(x, mul, bias, relu_before, relu_after, residual)
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
    # Not split over threads: in the 512x512 model (64x64x1280 output, right after the ASPP's
    # binary convs) a row-parallel copy was no faster (2.6 -> 3.1 ms, within noise).
    return np.concatenate(inputs, axis=2)
