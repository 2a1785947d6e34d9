// Float ops of the packed graph that run between the binary convolutions, where numpy's
// one-ufunc-at-a-time passes over memory cost more than the arithmetic (see kernels.h).
//
// Rounding: every product and every sum is rounded to float32 on its own, in the same order as the
// numpy fallback (seg_service/runtime/ops.py), so both give bit-identical results. That is why
// contraction of a * b + c into an FMA is switched off below for this file's functions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); not our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#include "isa_dispatch.h"
#include "kernels.h"
#include "linear_taps.h"
#include "threadpool.h"

#pragma GCC optimize("fp-contract=off")

namespace segk {
namespace {

// Elements per work item: one chunk of every map of a group (up to ~12 maps for K = 5) stays in
// the L1/L2 cache while the group's combinations read back the outputs they just wrote.
constexpr int64_t kLincombChunk = 2048;
// Float operations per thread at least (threads_for): 32 K of them take a few microseconds.
constexpr double kMinFlopsPerThread = 1 << 15;

struct LincombCall {
    const float* const* inputs;
    int64_t n_inputs;
    float* const* outputs;  // per output: its map, or nullptr for one only the group (or its bits) needs
    int64_t n_outputs;
    const int64_t* term_begin;
    const LincombTerm* terms;
    int64_t channels;             // floats per pixel; chunks hold whole pixels
    uint64_t* const* bits;        // per output: its sign bits, or nullptr
};

// The body is inlined into each ISA's target-attributed wrapper below and vectorised with it.
// dst[m] is where output m's elements e0 .. e0 + len go: into its map, or into scratch.
SEGK_ALWAYS_INLINE void lincomb_chunk_body(const LincombCall& c, float* const* dst_chunks, int64_t e0, int64_t len) {
    for (int64_t m = 0; m < c.n_outputs; ++m) {
        float* __restrict dst = dst_chunks[m];
        for (int64_t t = c.term_begin[m]; t < c.term_begin[m + 1]; ++t) {
            const int64_t s = c.terms[t].source;
            const float* __restrict src = s < c.n_inputs ? c.inputs[s] + e0 : dst_chunks[s - c.n_inputs];
            const float w = c.terms[t].coeff;
            if (t == c.term_begin[m]) {
                for (int64_t i = 0; i < len; ++i) dst[i] = w * src[i];
            } else {
                for (int64_t i = 0; i < len; ++i) dst[i] = dst[i] + w * src[i];
            }
        }
    }
}

using ChunkFn = void (*)(const LincombCall&, float* const*, int64_t, int64_t);

// A chunk of every output (outputs nobody reads as floats go to this thread's scratch), then the
// sign bits of those that feed binary convolutions, packed while the chunk is still in cache.
void lincomb_chunk(ChunkFn body, const LincombCall& c, int64_t e0, int64_t e1) {
    thread_local std::vector<float> scratch;
    thread_local std::vector<float*> dst;
    const int64_t len = e1 - e0;
    scratch.resize(static_cast<size_t>(c.n_outputs * len));
    dst.resize(static_cast<size_t>(c.n_outputs));
    for (int64_t m = 0; m < c.n_outputs; ++m)
        dst[static_cast<size_t>(m)] = c.outputs[m] != nullptr ? c.outputs[m] + e0 : scratch.data() + m * len;
    body(c, dst.data(), e0, len);
    const int64_t words = (c.channels + 63) / 64;
    for (int64_t m = 0; m < c.n_outputs; ++m) {
        if (c.bits[m] != nullptr)
            pack_pixels(dst[static_cast<size_t>(m)], len / c.channels, c.channels, c.bits[m] + e0 / c.channels * words);
    }
}

SEGK_TARGET("avx512f") void lincomb_chunk_avx512(const LincombCall& c, float* const* dst, int64_t e0,
                                                             int64_t len) {
    lincomb_chunk_body(c, dst, e0, len);
}
SEGK_TARGET("avx2") void lincomb_chunk_avx2(const LincombCall& c, float* const* dst, int64_t e0,
                                                        int64_t len) {
    lincomb_chunk_body(c, dst, e0, len);
}
void lincomb_chunk_scalar(const LincombCall& c, float* const* dst, int64_t e0, int64_t len) {
    lincomb_chunk_body(c, dst, e0, len);
}

// Calls body(r0, r1) on consecutive ranges of output rows holding about `values_per_item` output
// values each, over as many of the kernels' threads as `work` float operations keep busy.
template <typename Body>
void for_row_ranges(int64_t rows, int64_t row_values, int64_t values_per_item, int64_t work, Body&& body) {
    const int64_t rows_per_item = std::max<int64_t>(1, values_per_item / std::max<int64_t>(1, row_values));
    const int threads = threads_for(static_cast<double>(work), kMinFlopsPerThread, get_num_threads());
    parallel_for(threads, (rows + rows_per_item - 1) / rows_per_item, [&](int64_t item) {
        const int64_t r0 = item * rows_per_item;
        body(r0, std::min(rows, r0 + rows_per_item));
    });
}

// --- Bilinear resampling -----------------------------------------------------------------------

// Source taps of one output coordinate along one axis, as PyTorch computes them for
// align_corners=False: src = (i + 0.5) * in / out - 0.5 in double, clamped at 0.
// With few channels a pixel's channel loop is too short to vectorise, so the column pass runs over
// the elements of an output row instead: element e = xo * c + k mixes row[left[e]] and
// row[right[e]] with the weights of output column xo. Plain loads: AVX2/AVX-512 gathers were
// slower than these on the Xeon of docs/benchmarks.md (256x320x2 logits: 0.22 ms against 0.13).
// A block of `width` consecutive output elements whose sources all lie in `width` consecutive
// floats of the row from `base` on: one (masked) load and two in-register permutes replace the
// 2 x width scalar loads. An upsampling by 2 or more with few channels always qualifies.
struct PermuteBlocks {
    int64_t width = 0;
    int64_t blocks = 0;                // leading blocks of the row that qualify (the rest: scalar loads)
    std::vector<int32_t> base;         // [blocks]
    std::vector<int32_t> left, right;  // [blocks * width], relative to base
};

struct ElementTaps {
    std::vector<int32_t> left, right;
    std::vector<float> left_w, right_w;
    PermuteBlocks blocks;  // for the vector width of the ISA path in use (none on the scalar path)
};

PermuteBlocks permute_blocks(const ElementTaps& t, int64_t width) {
    PermuteBlocks pb;
    pb.width = width;
    const int64_t n = static_cast<int64_t>(t.left.size());
    for (int64_t e0 = 0; e0 + width <= n; e0 += width) {
        int32_t lo = t.left[static_cast<size_t>(e0)], hi = lo;
        for (int64_t e = e0; e < e0 + width; ++e) {
            lo = std::min(lo, t.left[static_cast<size_t>(e)]);
            hi = std::max(hi, t.right[static_cast<size_t>(e)]);
        }
        if (hi - lo >= width) break;
        pb.base.push_back(lo);
        for (int64_t e = e0; e < e0 + width; ++e) {
            pb.left.push_back(t.left[static_cast<size_t>(e)] - lo);
            pb.right.push_back(t.right[static_cast<size_t>(e)] - lo);
        }
        ++pb.blocks;
    }
    return pb;
}

ElementTaps element_taps(const std::vector<Tap>& col_taps, int64_t c, int64_t vector_width) {
    ElementTaps t;
    const size_t n = col_taps.size() * static_cast<size_t>(c);
    t.left.resize(n);
    t.right.resize(n);
    t.left_w.resize(n);
    t.right_w.resize(n);
    for (size_t xo = 0; xo < col_taps.size(); ++xo)
        for (int64_t k = 0; k < c; ++k) {
            const size_t e = xo * static_cast<size_t>(c) + static_cast<size_t>(k);
            t.left[e] = static_cast<int32_t>(col_taps[xo].i0 * c + k);
            t.right[e] = static_cast<int32_t>(col_taps[xo].i1 * c + k);
            t.left_w[e] = 1.0f - col_taps[xo].frac;
            t.right_w[e] = col_taps[xo].frac;
        }
    if (vector_width > 0) t.blocks = permute_blocks(t, vector_width);
    return t;
}

// out[e] = row[left[e]] * left_w[e] + row[right[e]] * right_w[e] for e in [e0, n).
SEGK_ALWAYS_INLINE void mix_elements_body(const float* __restrict row, const ElementTaps& t, int64_t e0, int64_t n,
                              float* __restrict out) {
    for (int64_t e = e0; e < n; ++e) out[e] = row[t.left[e]] * t.left_w[e] + row[t.right[e]] * t.right_w[e];
}

#if defined(__x86_64__) || defined(_M_X64)
// The AVX paths' version: 8 elements at a time, each vector of sources built from 8 scalar loads.
// The compiler would vectorise the plain loop with gather instructions, which ran 1.8x slower than
// this on the Xeon of docs/benchmarks.md (256x320x2 logits: 0.23 ms against 0.13). Where the
// sources of a block of elements lie within one vector's width (PermuteBlocks: an upsampling), the
// sources come from one load and two permutes instead; the same products and sums either way.
#define SEGK_MIX_ELEMENTS_BY_8                                                                                  \
    const int32_t* left = t.left.data();                                                                        \
    const int32_t* right = t.right.data();                                                                      \
    for (; e + 8 <= n; e += 8) {                                                                                \
        const __m256 l = _mm256_setr_ps(row[left[e]], row[left[e + 1]], row[left[e + 2]], row[left[e + 3]],    \
                                        row[left[e + 4]], row[left[e + 5]], row[left[e + 6]], row[left[e + 7]]); \
        const __m256 r = _mm256_setr_ps(row[right[e]], row[right[e + 1]], row[right[e + 2]], row[right[e + 3]], \
                                        row[right[e + 4]], row[right[e + 5]], row[right[e + 6]],                 \
                                        row[right[e + 7]]);                                                     \
        const __m256 a = _mm256_mul_ps(l, _mm256_loadu_ps(t.left_w.data() + e));                                \
        const __m256 b = _mm256_mul_ps(r, _mm256_loadu_ps(t.right_w.data() + e));                               \
        _mm256_storeu_ps(out + e, _mm256_add_ps(a, b));                                                         \
    }                                                                                                           \
    mix_elements_body(row, t, e, n, out);
// `row_len` floats of row are readable: a block's load is masked at the row's end.
SEGK_TARGET("avx512f")
void mix_elements_avx512(const float* row, const ElementTaps& t, int64_t n, int64_t row_len, float* out) {
    const PermuteBlocks& pb = t.blocks;
    const int64_t blocks = pb.width == 16 ? pb.blocks : 0;
    int64_t e = 0;
    for (int64_t b = 0; b < blocks && e + 16 <= n; ++b, e += 16) {
        const int64_t base = pb.base[static_cast<size_t>(b)];
        const int64_t avail = std::min<int64_t>(16, row_len - base);
        const __m512 src = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << avail) - 1u), row + base);
        const __m512i li = _mm512_loadu_si512(pb.left.data() + 16 * b);
        const __m512i ri = _mm512_loadu_si512(pb.right.data() + 16 * b);
        const __m512 a = _mm512_mul_ps(_mm512_permutexvar_ps(li, src), _mm512_loadu_ps(t.left_w.data() + e));
        const __m512 c = _mm512_mul_ps(_mm512_permutexvar_ps(ri, src), _mm512_loadu_ps(t.right_w.data() + e));
        _mm512_storeu_ps(out + e, _mm512_add_ps(a, c));
    }
    SEGK_MIX_ELEMENTS_BY_8
}
SEGK_TARGET("avx2")
void mix_elements_avx2(const float* row, const ElementTaps& t, int64_t n, int64_t row_len, float* out) {
    const PermuteBlocks& pb = t.blocks;
    const int64_t blocks = pb.width == 8 ? pb.blocks : 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int64_t e = 0;
    for (int64_t b = 0; b < blocks && e + 8 <= n; ++b, e += 8) {
        const int64_t base = pb.base[static_cast<size_t>(b)];
        const __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(row_len - base)), lane);
        const __m256 src = _mm256_maskload_ps(row + base, in_row);
        const __m256i li = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb.left.data() + 8 * b));
        const __m256i ri = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb.right.data() + 8 * b));
        const __m256 a = _mm256_mul_ps(_mm256_permutevar8x32_ps(src, li), _mm256_loadu_ps(t.left_w.data() + e));
        const __m256 c = _mm256_mul_ps(_mm256_permutevar8x32_ps(src, ri), _mm256_loadu_ps(t.right_w.data() + e));
        _mm256_storeu_ps(out + e, _mm256_add_ps(a, c));
    }
    SEGK_MIX_ELEMENTS_BY_8
}
#undef SEGK_MIX_ELEMENTS_BY_8
#endif
void mix_elements_scalar(const float* row, const ElementTaps& t, int64_t n, int64_t, float* out) {
    mix_elements_body(row, t, 0, n, out);
}

// Up to this many channels the column pass runs over elements (ElementTaps). Measured on one core,
// 64x80xC -> 256x320xC, against the per-pixel loop: C = 2 0.13 vs 0.22 ms, 4 0.31 vs 0.41; from
// 6 channels on the per-pixel loop is as fast or faster (8: 0.25 vs 0.70, 11: 0.48-0.87 vs 0.93).
constexpr int64_t kElementwiseMaxChannels = 4;

struct UpsampleCall {
    const float* x;
    int64_t w, c;
    float* out;
    int64_t out_w;
    const Tap* row_taps;
    const Tap* col_taps;
    const ElementTaps* element_taps;  // set for few channels: the column pass goes through mix_elements
    uint64_t* bits;  // instead of `out`: each output pixel's sign bits at bits + pixel * bits_stride
    int64_t bits_stride;
};

// Output rows [r0, r1): each is the two source rows mixed (top * (1 - fy) + bottom * fy) into
// `row`, then each output pixel mixes two pixels of `row` the same way along x. With `u.bits`, each
// output row goes to `out_row` (out_w * c floats) and is sign-packed from there.
template <void (*MixElements)(const float*, const ElementTaps&, int64_t, int64_t, float*)>
SEGK_ALWAYS_INLINE void upsample_rows_body(const UpsampleCall& u, int64_t r0, int64_t r1, float* __restrict row,
                               float* __restrict out_row) {
    const int64_t row_len = u.w * u.c;
    for (int64_t y = r0; y < r1; ++y) {
        const Tap ty = u.row_taps[y];
        const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
        const float* __restrict top = u.x + ty.i0 * row_len;
        const float* __restrict bottom = u.x + ty.i1 * row_len;
        for (int64_t i = 0; i < row_len; ++i) row[i] = top[i] * top_w + bottom[i] * bottom_w;
        float* __restrict dst = u.bits != nullptr ? out_row : u.out + y * u.out_w * u.c;
        if (u.element_taps != nullptr) {
            MixElements(row, *u.element_taps, u.out_w * u.c, row_len, dst);
        } else {
            for (int64_t xo = 0; xo < u.out_w; ++xo) {
                const Tap tx = u.col_taps[xo];
                const float left_w = 1.0f - tx.frac, right_w = tx.frac;
                const float* __restrict left = row + tx.i0 * u.c;
                const float* __restrict right = row + tx.i1 * u.c;
                float* __restrict o = dst + xo * u.c;
                for (int64_t k = 0; k < u.c; ++k) o[k] = left[k] * left_w + right[k] * right_w;
            }
        }
        if (u.bits != nullptr) pack_pixels_strided(dst, u.out_w, u.c, u.bits + y * u.out_w * u.bits_stride, u.bits_stride);
    }
}

#if defined(__x86_64__) || defined(_M_X64)
SEGK_TARGET("avx512f") void upsample_rows_avx512(const UpsampleCall& u, int64_t r0, int64_t r1,
                                                             float* row, float* out_row) {
    upsample_rows_body<mix_elements_avx512>(u, r0, r1, row, out_row);
}
SEGK_TARGET("avx2") void upsample_rows_avx2(const UpsampleCall& u, int64_t r0, int64_t r1, float* row,
                                                        float* out_row) {
    upsample_rows_body<mix_elements_avx2>(u, r0, r1, row, out_row);
}
#else
void upsample_rows_avx512(const UpsampleCall& u, int64_t r0, int64_t r1, float* row, float* out_row) {
    upsample_rows_body<mix_elements_scalar>(u, r0, r1, row, out_row);
}
void upsample_rows_avx2(const UpsampleCall& u, int64_t r0, int64_t r1, float* row, float* out_row) {
    upsample_rows_body<mix_elements_scalar>(u, r0, r1, row, out_row);
}
#endif
void upsample_rows_scalar(const UpsampleCall& u, int64_t r0, int64_t r1, float* row, float* out_row) {
    upsample_rows_body<mix_elements_scalar>(u, r0, r1, row, out_row);
}

// --- Max pooling -----------------------------------------------------------------------------

struct MaxPoolCall {
    const float* x;
    int64_t h, w, c;
    float* out;
    int64_t out_w, kernel, stride, padding;
};

// numpy's maximum(acc, v) as the pooling applies it, bit for bit: v wins unless acc is larger, so of
// equal values (+0 and -0) the later tap; a NaN wins over a number, and of two NaNs the first stays,
// so a window gives its first NaN in tap order, payload included.
SEGK_ALWAYS_INLINE float max_keep_nan(float acc, float v) { return (v >= acc || (v != v && acc == acc)) ? v : acc; }

// One output pixel, channels in vectors of V held in registers over all taps (c % V == 0): the
// generic loop below stores and reloads the output after every tap. The same result as
// max_keep_nan tap by tap, in two independent chains of two steps per tap (with one three-step
// chain, a compare with acc, a mask OR and a blend, the 3x3 pool of person's stem took 1.2-1.3x as
// long on AVX-512):
// m = max_ps(m, v) (m if m > v, else v) is numpy's maximum while no NaN came, and f follows the
// taps until it holds the first NaN, which then stays. The result is f where f is NaN, else m.
struct PoolWindow {
    const float* x;  // the window's first tap
    int64_t rows, cols, row_stride, c;
};

#if defined(__x86_64__) || defined(_M_X64)
// kRows, kCols > 0: a window of that fixed size, its tap loops unrolled (the 3x3 pools of a ResNet
// stem away from the border: the variable-count loops cost the AVX2 path a third of its time).
template <int kRows, int kCols>
SEGK_TARGET("avx512f") SEGK_ALWAYS_INLINE void maxpool_taps_avx512(const PoolWindow& win, float* o) {
    const int64_t rows = kRows > 0 ? kRows : win.rows, cols = kCols > 0 ? kCols : win.cols;
    for (int64_t k0 = 0; k0 < win.c; k0 += 16) {
        __m512 m = _mm512_loadu_ps(win.x + k0), f = m;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t q = (r == 0 ? 1 : 0); q < cols; ++q) {
                const __m512 v = _mm512_loadu_ps(win.x + r * win.row_stride + q * win.c + k0);
                m = _mm512_max_ps(m, v);
                f = _mm512_mask_mov_ps(f, _mm512_cmp_ps_mask(f, f, _CMP_ORD_Q), v);
            }
        _mm512_storeu_ps(o + k0, _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), f));
    }
}

template <int kRows, int kCols>
SEGK_TARGET("avx2") SEGK_ALWAYS_INLINE void maxpool_taps_avx2(const PoolWindow& win, float* o) {
    const int64_t rows = kRows > 0 ? kRows : win.rows, cols = kCols > 0 ? kCols : win.cols;
    for (int64_t k0 = 0; k0 < win.c; k0 += 8) {
        __m256 m = _mm256_loadu_ps(win.x + k0), f = m;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t q = (r == 0 ? 1 : 0); q < cols; ++q) {
                const __m256 v = _mm256_loadu_ps(win.x + r * win.row_stride + q * win.c + k0);
                m = _mm256_max_ps(m, v);
                f = _mm256_blendv_ps(f, v, _mm256_cmp_ps(f, f, _CMP_ORD_Q));
            }
        _mm256_storeu_ps(o + k0, _mm256_blendv_ps(m, f, _mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    }
}

SEGK_TARGET("avx512f") SEGK_ALWAYS_INLINE void maxpool_pixel_avx512(const PoolWindow& win, float* o) {
    if (win.rows == 3 && win.cols == 3)
        maxpool_taps_avx512<3, 3>(win, o);
    else
        maxpool_taps_avx512<0, 0>(win, o);
}

SEGK_TARGET("avx2") SEGK_ALWAYS_INLINE void maxpool_pixel_avx2(const PoolWindow& win, float* o) {
    if (win.rows == 3 && win.cols == 3)
        maxpool_taps_avx2<3, 3>(win, o);
    else
        maxpool_taps_avx2<0, 0>(win, o);
}
#endif

// Output rows [r0, r1): the maximum over each window's taps inside the map (padding never wins,
// as in PyTorch), taken in row-major tap order. V > 0: the register-block path when c % V == 0.
template <int V, typename PixelFn>
SEGK_ALWAYS_INLINE void maxpool_rows_body(const MaxPoolCall& m, int64_t r0, int64_t r1, PixelFn&& vector_pixel) {
    const bool blocks = V > 0 && m.c % (V > 0 ? V : 1) == 0;
    for (int64_t y = r0; y < r1; ++y) {
        const int64_t iy0 = std::max<int64_t>(0, y * m.stride - m.padding);
        const int64_t iy1 = std::min(m.h, y * m.stride - m.padding + m.kernel);
        for (int64_t xo = 0; xo < m.out_w; ++xo) {
            const int64_t ix0 = std::max<int64_t>(0, xo * m.stride - m.padding);
            const int64_t ix1 = std::min(m.w, xo * m.stride - m.padding + m.kernel);
            float* __restrict o = m.out + (y * m.out_w + xo) * m.c;
            if (iy0 >= iy1 || ix0 >= ix1) {  // a window entirely on the padding (only with padding >= kernel)
                std::fill(o, o + m.c, -std::numeric_limits<float>::infinity());
                continue;
            }
            if (blocks) {
                vector_pixel(PoolWindow{m.x + (iy0 * m.w + ix0) * m.c, iy1 - iy0, ix1 - ix0, m.w * m.c, m.c}, o);
                continue;
            }
            std::memcpy(o, m.x + (iy0 * m.w + ix0) * m.c, static_cast<size_t>(m.c) * sizeof(float));
            for (int64_t iy = iy0; iy < iy1; ++iy)
                for (int64_t ix = (iy == iy0 ? ix0 + 1 : ix0); ix < ix1; ++ix) {
                    const float* __restrict src = m.x + (iy * m.w + ix) * m.c;
                    for (int64_t k = 0; k < m.c; ++k) o[k] = max_keep_nan(o[k], src[k]);
                }
        }
    }
}

void maxpool_rows_scalar(const MaxPoolCall& m, int64_t r0, int64_t r1) {
    maxpool_rows_body<0>(m, r0, r1, [](const PoolWindow&, float*) {});
}
#if defined(__x86_64__) || defined(_M_X64)
SEGK_TARGET("avx512f") void maxpool_rows_avx512(const MaxPoolCall& m, int64_t r0, int64_t r1) {
    maxpool_rows_body<16>(m, r0, r1, maxpool_pixel_avx512);
}
SEGK_TARGET("avx2") void maxpool_rows_avx2(const MaxPoolCall& m, int64_t r0, int64_t r1) {
    maxpool_rows_body<8>(m, r0, r1, maxpool_pixel_avx2);
}
#else
void maxpool_rows_avx512(const MaxPoolCall& m, int64_t r0, int64_t r1) { maxpool_rows_scalar(m, r0, r1); }
void maxpool_rows_avx2(const MaxPoolCall& m, int64_t r0, int64_t r1) { maxpool_rows_scalar(m, r0, r1); }
#endif

// --- Per-channel affine (a BatchNorm left standing) ---------------------------------------------

struct AffineCall {
    const float* x;
    const float* mul;
    const float* bias;
    const float* residual;  // or nullptr
    float* out;
    int64_t c;
    bool relu_before, relu_after;
};

// numpy's maximum(v, 0): NaN propagates.
inline float relu_like_numpy(float v) { return (v >= 0.0f || v != v) ? v : 0.0f; }

// Rows [r0, r1) of pixels: pre(x) * mul + bias (+ residual), then the ReLU, each step rounded to
// float32 as numpy's ops.affine does.
SEGK_ALWAYS_INLINE void affine_rows_body(const AffineCall& a, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
        const float* __restrict x = a.x + p * a.c;
        float* __restrict o = a.out + p * a.c;
        for (int64_t k = 0; k < a.c; ++k) {
            const float pre = a.relu_before ? relu_like_numpy(x[k]) : x[k];
            float v = pre * a.mul[k] + a.bias[k];
            if (a.residual != nullptr) v = v + a.residual[p * a.c + k];
            o[k] = a.relu_after ? relu_like_numpy(v) : v;
        }
    }
}

SEGK_TARGET("avx512f") void affine_rows_avx512(const AffineCall& a, int64_t p0, int64_t p1) {
    affine_rows_body(a, p0, p1);
}
SEGK_TARGET("avx2") void affine_rows_avx2(const AffineCall& a, int64_t p0, int64_t p1) { affine_rows_body(a, p0, p1); }
void affine_rows_scalar(const AffineCall& a, int64_t p0, int64_t p1) { affine_rows_body(a, p0, p1); }

}  // namespace

namespace {

// One pixel's index of its largest value by numpy's rules: the first maximum wins, and the first
// NaN counts as the maximum. Two passes, because with random values a running "new maximum?"
// branch mispredicts a few times per pixel: a branch-free max (and NaN flag), then the first index
// that holds it, which branches out once.
inline uint8_t argmax_pixel(const float* __restrict v, int64_t channels) {
    float best = v[0];
    bool nan = v[0] != v[0];
    for (int64_t k = 1; k < channels; ++k) {
        best = v[k] > best ? v[k] : best;
        nan = nan || v[k] != v[k];
    }
    int64_t k = 0;
    if (nan) {
        while (v[k] == v[k]) ++k;
    } else {
        while (v[k] != best) ++k;
    }
    return static_cast<uint8_t>(k);
}

// Pixels [p0, p1) of x [pixels, channels]; with bias (not nullptr), of x + bias, each sum rounded to
// float32 as numpy's would be.
SEGK_ALWAYS_INLINE void argmax_range(const float* __restrict x, int64_t p0, int64_t p1, int64_t channels,
                                     const float* __restrict bias, uint8_t* __restrict out) {
    if (channels == 2) {  // the two-class models: one branch-free comparison, vectorised over pixels
        if (bias == nullptr) {
            for (int64_t p = p0; p < p1; ++p) {
                const float v0 = x[2 * p], v1 = x[2 * p + 1];
                out[p] = static_cast<uint8_t>((v1 > v0) | ((v1 != v1) & (v0 == v0)));  // NaN rules as above
            }
            return;
        }
        const float b0 = bias[0], b1 = bias[1];
        for (int64_t p = p0; p < p1; ++p) {
            const float v0 = x[2 * p] + b0, v1 = x[2 * p + 1] + b1;
            out[p] = static_cast<uint8_t>((v1 > v0) | ((v1 != v1) & (v0 == v0)));
        }
        return;
    }
    if (bias == nullptr) {
        for (int64_t p = p0; p < p1; ++p) out[p] = argmax_pixel(x + p * channels, channels);
        return;
    }
    float biased[256];  // channels <= 256 (the binding checks)
    for (int64_t p = p0; p < p1; ++p) {
        const float* __restrict v = x + p * channels;
        for (int64_t k = 0; k < channels; ++k) biased[k] = v[k] + bias[k];
        out[p] = argmax_pixel(biased, channels);
    }
}

// The argmax per ISA path. With 3 to 16 channels argmax_range is a chain of dependent compares per
// pixel (about 13 ns a pixel for CamVid's 11 classes, 2.3 ms of a 480x360 frame); the vector paths
// take a pixel's channels as one (AVX-512) or two (AVX2) registers instead, padded with -inf, and
// answer the first NaN if there is one, else the first lane equal to the maximum. The maximum of
// numbers is exact and x + bias is the same float32 sum, so every path gives the same labels.
using ArgmaxFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, uint8_t*);
constexpr int64_t kVectorArgmaxMaxChannels = 16;

#if defined(__x86_64__) || defined(_M_X64)
SEGK_TARGET("avx512f")
void argmax_avx512(const float* x, int64_t p0, int64_t p1, int64_t c, const float* bias, uint8_t* out) {
    if (c <= 2 || c > kVectorArgmaxMaxChannels) {
        argmax_range(x, p0, p1, c, bias, out);
        return;
    }
    const auto lanes = static_cast<__mmask16>((1u << c) - 1u);
    const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(lanes, bias) : _mm512_setzero_ps();
    for (int64_t p = p0; p < p1; ++p) {
        __m512 v = _mm512_mask_loadu_ps(neg_inf, lanes, x + p * c);
        if (bias != nullptr) v = _mm512_add_ps(v, b);
        const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        if (nan != 0) {
            out[p] = static_cast<uint8_t>(__builtin_ctz(nan));
            continue;
        }
        const __m512 best = _mm512_set1_ps(_mm512_reduce_max_ps(v));
        out[p] = static_cast<uint8_t>(__builtin_ctz(_mm512_mask_cmp_ps_mask(lanes, v, best, _CMP_EQ_OQ)));
    }
}

// The largest of 8 floats (no NaN) in every lane.
SEGK_TARGET("avx2") inline __m256 broadcast_max8(__m256 v) {
    v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 0x01));
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0x4e));
    return _mm256_max_ps(v, _mm256_permute_ps(v, 0xb1));
}

SEGK_TARGET("avx2")
void argmax_avx2(const float* x, int64_t p0, int64_t p1, int64_t c, const float* bias, uint8_t* out) {
    if (c <= 2 || c > kVectorArgmaxMaxChannels) {
        argmax_range(x, p0, p1, c, bias, out);
        return;
    }
    // channels 0 .. 7 and 8 .. 15 of a pixel; lanes past c load nothing and hold -inf
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(c)), lane);
    const __m256i in_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(c) - 8), lane);
    const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256 b_lo = bias != nullptr ? _mm256_maskload_ps(bias, in_lo) : _mm256_setzero_ps();
    const __m256 b_hi = bias != nullptr ? _mm256_maskload_ps(bias + 8, in_hi) : _mm256_setzero_ps();
    const bool two = c > 8;
    for (int64_t p = p0; p < p1; ++p) {
        const float* v = x + p * c;
        __m256 lo = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(v, in_lo), _mm256_castsi256_ps(in_lo));
        __m256 hi = two ? _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(v + 8, in_hi), _mm256_castsi256_ps(in_hi))
                        : neg_inf;
        if (bias != nullptr) {
            lo = _mm256_add_ps(lo, b_lo);
            hi = _mm256_add_ps(hi, b_hi);
        }
        const unsigned nan = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(lo, lo, _CMP_UNORD_Q))) |
                             static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(hi, hi, _CMP_UNORD_Q))) << 8;
        if (nan != 0) {
            out[p] = static_cast<uint8_t>(__builtin_ctz(nan));
            continue;
        }
        // Lanes past c hold -inf: equal to the maximum only when every channel is -inf, and then
        // lane 0 comes first.
        const __m256 best = broadcast_max8(_mm256_max_ps(lo, hi));
        const unsigned at = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(lo, best, _CMP_EQ_OQ))) |
                            static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(hi, best, _CMP_EQ_OQ))) << 8;
        out[p] = static_cast<uint8_t>(__builtin_ctz(at));
    }
}
#else
void argmax_avx512(const float* x, int64_t p0, int64_t p1, int64_t c, const float* bias, uint8_t* out) {
    argmax_range(x, p0, p1, c, bias, out);
}
void argmax_avx2(const float* x, int64_t p0, int64_t p1, int64_t c, const float* bias, uint8_t* out) {
    argmax_range(x, p0, p1, c, bias, out);
}
#endif
void argmax_scalar(const float* x, int64_t p0, int64_t p1, int64_t c, const float* bias, uint8_t* out) {
    argmax_range(x, p0, p1, c, bias, out);
}

}  // namespace

void argmax_channels(const float* x, int64_t pixels, int64_t channels, const float* bias, uint8_t* out) {
    const int threads = threads_for(static_cast<double>(pixels * channels), kMinFlopsPerThread, get_num_threads());
    constexpr int64_t kPixelsPerItem = 4096;
    const ArgmaxFn fn = for_current_isa<ArgmaxFn>(argmax_avx512, argmax_avx2, argmax_scalar);
    parallel_for(threads, (pixels + kPixelsPerItem - 1) / kPixelsPerItem, [&](int64_t item) {
        fn(x, item * kPixelsPerItem, std::min(pixels, (item + 1) * kPixelsPerItem), channels, bias, out);
    });
}

void affine(const float* x, int64_t pixels, int64_t c, const float* mul, const float* bias, bool relu_before,
            bool relu_after, const float* residual, float* out) {
    const AffineCall call{x, mul, bias, residual, out, c, relu_before, relu_after};
    const auto fn = for_current_isa(affine_rows_avx512, affine_rows_avx2, affine_rows_scalar);
    // Pixels as rows of c values; small maps (a decoder's 15x20x128) stay on the calling thread.
    for_row_ranges(pixels, c, int64_t{1} << 15, pixels * c * 3, [&](int64_t p0, int64_t p1) { fn(call, p0, p1); });
}

void add_mirrored(const float* a, int64_t wa, const float* b, int64_t wb, int64_t h, int64_t w, int64_t c,
                  float* out) {
    // Rows over the threads; within a row pixel x of `a` meets pixel w - 1 - x of `b`, channels in order.
    for_row_ranges(h, w * c, int64_t{1} << 15, h * w * c, [&](int64_t r0, int64_t r1) {
        for (int64_t y = r0; y < r1; ++y) {
            const float* __restrict ar = a + y * wa * c;
            const float* __restrict br = b + y * wb * c;
            float* __restrict o = out + y * w * c;
            for (int64_t x = 0; x < w; ++x) {
                const float* __restrict bp = br + (w - 1 - x) * c;
                for (int64_t k = 0; k < c; ++k) o[x * c + k] = ar[x * c + k] + bp[k];
            }
        }
    });
}

void global_avgpool(const float* x, int64_t pixels, int64_t c, float* out) {
    // On the calling thread: the map is a head's smallest (8x10x256 for a 320x240 frame); numpy's
    // mean cost 60-100 us there, most of it reaching its own cold code between the kernels' calls.
    std::vector<double> sums(static_cast<size_t>(c), 0.0);
    double* __restrict acc = sums.data();
    for (int64_t p = 0; p < pixels; ++p) {
        const float* __restrict row = x + p * c;
        for (int64_t k = 0; k < c; ++k) acc[k] += static_cast<double>(row[k]);
    }
    for (int64_t k = 0; k < c; ++k) out[k] = static_cast<float>(acc[k] / static_cast<double>(pixels));
}

void maxpool2d(const float* x, int64_t h, int64_t w, int64_t c, int64_t kernel, int64_t stride, int64_t padding,
               float* out, int64_t out_h, int64_t out_w) {
    const MaxPoolCall call{x, h, w, c, out, out_w, kernel, stride, padding};
    const auto fn = for_current_isa(maxpool_rows_avx512, maxpool_rows_avx2, maxpool_rows_scalar);
    for_row_ranges(out_h, out_w * c, int64_t{1} << 15, out_h * out_w * c * kernel * kernel,
                   [&](int64_t r0, int64_t r1) { fn(call, r0, r1); });
}

namespace {

void run_upsample(const float* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w,
                  uint64_t* bits, int64_t bits_stride) {
    const std::vector<Tap> row_taps = linear_taps(h, out_h), col_taps = linear_taps(w, out_w);
    // Element indices are int32: a row of the input has far fewer floats.
    const bool by_element = c <= kElementwiseMaxChannels && w * c <= std::numeric_limits<int32_t>::max();
    const ElementTaps taps =
        by_element ? element_taps(col_taps, c, for_current_isa<int64_t>(16, 8, 0)) : ElementTaps{};
    const UpsampleCall call{
        x, w, c, out, out_w, row_taps.data(), col_taps.data(), by_element ? &taps : nullptr, bits, bits_stride};
    const auto fn = for_current_isa(upsample_rows_avx512, upsample_rows_avx2, upsample_rows_scalar);
    // Items of 2^14 values (about 10 us): a helper thread descheduled while it holds one (a busy
    // CPU) delays the call by at most that. The 256x320x2 logits (164k values, 0.06 ms on one
    // core with the permuted loads) stay on the calling thread: split over 2 threads on a loaded
    // 2-core machine they took 0.32 ms against 0.17 (before the permuted loads). Packing the signs
    // counts as a second pass over the values: the 64x80x64 skip-decoder input of a webcam-sized
    // network (327k values, 33 us on one core) is split.
    const int64_t work = out_h * out_w * c * (bits != nullptr ? 2 : 1);
    for_row_ranges(out_h, out_w * c, int64_t{1} << 14, work, [&](int64_t r0, int64_t r1) {
        std::vector<float> row(static_cast<size_t>(w * c));
        std::vector<float> out_row(bits != nullptr ? static_cast<size_t>(out_w * c) : 0);
        fn(call, r0, r1, row.data(), out_row.data());
    });
}

}  // namespace

void upsample_bilinear(const float* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w) {
    run_upsample(x, h, w, c, out, out_h, out_w, nullptr, 0);
}

void upsample_bilinear_bits(const float* x, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                            uint64_t* bits, int64_t bits_stride) {
    run_upsample(x, h, w, c, nullptr, out_h, out_w, bits, bits_stride);
}

void lincomb_group(const float* const* inputs, int64_t n_inputs, float* const* outputs, int64_t n_outputs,
                   const int64_t* term_begin, const LincombTerm* terms, int64_t pixels, int64_t channels,
                   uint64_t* const* bits) {
    const LincombCall call{inputs, n_inputs, outputs, n_outputs, term_begin, terms, channels, bits};
    const ChunkFn fn = for_current_isa(lincomb_chunk_avx512, lincomb_chunk_avx2, lincomb_chunk_scalar);
    const int64_t n = pixels * channels;
    const int64_t flops = 2 * n * term_begin[n_outputs];
    const int threads = threads_for(static_cast<double>(flops), kMinFlopsPerThread, get_num_threads());
    const int64_t chunk = std::max<int64_t>(1, kLincombChunk / channels) * channels;
    const int64_t chunks = (n + chunk - 1) / chunk;
    parallel_for(threads, chunks, [&](int64_t item) {
        const int64_t e0 = item * chunk;
        lincomb_chunk(fn, call, e0, std::min(n, e0 + chunk));
    });
}

}  // namespace segk
