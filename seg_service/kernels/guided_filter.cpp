// Colour guided filter (He, Sun and Tang, TPAMI 2013) for a model's stored post-processing
// (seg_service/runtime/refine.py): the two-class filter's source, the coefficients, fitted on the
// fast guided filter's subsampled image (pixel ranges or planes split over the threads from some
// thousands of pixels), and the full-resolution step that upsamples and applies them (rows split
// over the threads when large).
//
// Window means are over (2r+1) x (2r+1) windows clipped at the border (fewer pixels there), summed
// in double with running sums, so the cost does not grow with the radius and the variance (a small
// difference of two means) keeps its digits. Each pass of the box filter runs along columns with a
// running sum per column (a vector over the row, where a running sum along a row would be one long
// chain of dependent additions) and stores its result transposed, so two passes give both axes
// and the original layout back.
//
// Each ISA path runs the same operations in the same order (no FMA contraction in this file), so
// the paths agree bit for bit; guided_apply and half_logit_difference equal their numpy
// definitions (kernels.reference) bit for bit.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
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

// --- Box means ---------------------------------------------------------------------------------

// Planes of doubles on a cache line's boundary: the box passes' vector loads and stores then do not
// straddle lines wherever a plane's rows are whole vectors. With a plain new[] the alignment was
// the allocator's, and the same build took 1.15-1.2x the time per fit in some processes.
struct AlignedDelete {
    void operator()(double* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
using AlignedDoubles = std::unique_ptr<double[], AlignedDelete>;
inline AlignedDoubles aligned_doubles(int64_t count) {
    return AlignedDoubles(
        static_cast<double*>(::operator new[](static_cast<size_t>(count) * sizeof(double), std::align_val_t{64})));
}

// Rows of a pass kept before they are stored transposed: a column's values for this many
// consecutive rows are contiguous in the output, so the AVX paths store them as one vector (4x4
// transposes) rather than one value at a time.
constexpr int64_t kBoxRowBlock = 4;

// colsum[x] (+ add[x]) (- sub[x]) for the window's new and leaving rows (either may be absent), in
// that order, and the row's means block[x] = colsum[x] * inv_count.
template <bool kAdd, bool kSub>
SEGK_ALWAYS_INLINE void box_step(const double* __restrict add, const double* __restrict sub, int64_t cols,
                                 double inv_count, double* __restrict colsum, double* __restrict block) {
    for (int64_t x = 0; x < cols; ++x) {
        double s = colsum[x];
        if constexpr (kAdd) s += add[x];
        if constexpr (kSub) s -= sub[x];
        colsum[x] = s;
        block[x] = s * inv_count;
    }
}

// Rows [0, n_rows) of block [n_rows, cols] stored transposed into out [cols, rows]:
// out[x * rows + i] = block[i * cols + x] (copies only).
inline void store_rows_transposed(const double* block, int64_t n_rows, int64_t cols, int64_t rows, double* out) {
    for (int64_t x = 0; x < cols; ++x)
        for (int64_t i = 0; i < n_rows; ++i) out[x * rows + i] = block[i * cols + x];
}

#if defined(__x86_64__) || defined(_M_X64)
// block [4, cols] stored transposed, out[x * rows + i] = block[i * cols + x], by 4x4 transposes of
// 4 columns at a time (copies only); cols: a multiple of 4.
SEGK_TARGET("avx2")
inline void store_block_transposed_avx2(const double* block, int64_t cols, int64_t rows, double* out) {
    static_assert(kBoxRowBlock == 4, "one 4x4 transpose per 4 columns");
    for (int64_t x = 0; x < cols; x += 4) {
        const __m256d r0 = _mm256_loadu_pd(block + x), r1 = _mm256_loadu_pd(block + cols + x);
        const __m256d r2 = _mm256_loadu_pd(block + 2 * cols + x), r3 = _mm256_loadu_pd(block + 3 * cols + x);
        const __m256d lo01 = _mm256_unpacklo_pd(r0, r1), hi01 = _mm256_unpackhi_pd(r0, r1);  // x, x+1 | x+2, x+3
        const __m256d lo23 = _mm256_unpacklo_pd(r2, r3), hi23 = _mm256_unpackhi_pd(r2, r3);
        _mm256_storeu_pd(out + x * rows, _mm256_permute2f128_pd(lo01, lo23, 0x20));
        _mm256_storeu_pd(out + (x + 1) * rows, _mm256_permute2f128_pd(hi01, hi23, 0x20));
        _mm256_storeu_pd(out + (x + 2) * rows, _mm256_permute2f128_pd(lo01, lo23, 0x31));
        _mm256_storeu_pd(out + (x + 3) * rows, _mm256_permute2f128_pd(hi01, hi23, 0x31));
    }
}
#endif

// Columns [0, cols) of one pass (box_pass_transposed; `in` rows `stride` apart): a running sum
// per column in colsum [cols], kBoxRowBlock rows at a time in block [kBoxRowBlock, cols], then
// stored transposed.
SEGK_ALWAYS_INLINE void box_columns_transposed(const double* __restrict in, int64_t rows, int64_t cols,
                                               int64_t stride, int64_t r, double* __restrict out,
                                               double* __restrict colsum, double* __restrict block) {
    std::fill(colsum, colsum + cols, 0.0);
    for (int64_t y = 0; y < std::min(r, rows); ++y) {
        const double* __restrict row = in + y * stride;
        for (int64_t x = 0; x < cols; ++x) colsum[x] += row[x];
    }
    for (int64_t y0 = 0; y0 < rows; y0 += kBoxRowBlock) {
        const int64_t n_block = std::min(kBoxRowBlock, rows - y0);
        for (int64_t i = 0; i < n_block; ++i) {
            const int64_t y = y0 + i;
            const double* add = y + r < rows ? in + (y + r) * stride : nullptr;  // the window's new last row
            const double* sub = y - r - 1 >= 0 ? in + (y - r - 1) * stride : nullptr;  // the row that left it
            const double inv_count =
                1.0 / static_cast<double>(std::min(y + r, rows - 1) - std::max<int64_t>(y - r, 0) + 1);
            double* row_block = block + i * cols;
            if (add && sub) {
                box_step<true, true>(add, sub, cols, inv_count, colsum, row_block);
            } else if (add) {
                box_step<true, false>(add, sub, cols, inv_count, colsum, row_block);
            } else if (sub) {
                box_step<false, true>(add, sub, cols, inv_count, colsum, row_block);
            } else {
                box_step<false, false>(add, sub, cols, inv_count, colsum, row_block);
            }
        }
        store_rows_transposed(block, n_block, cols, rows, out + y0);
    }
}

#if defined(__x86_64__) || defined(_M_X64)
// box_columns_transposed for the strip of columns [x0, x0 + 4 kVectors), the same operations in the
// same order for every value. The strip goes through the whole plane with its running sums in
// registers (box_columns_transposed keeps them in memory, a load and a store more per value),
// reading and writing a few KB that stay in L1.
template <int kVectors>
SEGK_TARGET("avx2")
inline void box_strip_transposed_avx2(const double* in, int64_t rows, int64_t cols, int64_t r, int64_t x0,
                                      double* out) {
    constexpr int64_t kBoxStrip = 4 * kVectors;
    __m256d sum[kVectors];
    for (int v = 0; v < kVectors; ++v) sum[v] = _mm256_setzero_pd();
    for (int64_t y = 0; y < std::min(r, rows); ++y)
        for (int v = 0; v < kVectors; ++v)
            sum[v] = _mm256_add_pd(sum[v], _mm256_loadu_pd(in + y * cols + x0 + 4 * v));
    alignas(32) double block[kBoxRowBlock * kBoxStrip];
    for (int64_t y0 = 0; y0 < rows; y0 += kBoxRowBlock) {
        const int64_t n_block = std::min(kBoxRowBlock, rows - y0);
        for (int64_t i = 0; i < n_block; ++i) {
            const int64_t y = y0 + i;
            if (y + r < rows) {
                const double* add = in + (y + r) * cols + x0;
                for (int v = 0; v < kVectors; ++v) sum[v] = _mm256_add_pd(sum[v], _mm256_loadu_pd(add + 4 * v));
            }
            if (y - r - 1 >= 0) {
                const double* sub = in + (y - r - 1) * cols + x0;
                for (int v = 0; v < kVectors; ++v) sum[v] = _mm256_sub_pd(sum[v], _mm256_loadu_pd(sub + 4 * v));
            }
            const __m256d inv_count = _mm256_set1_pd(
                1.0 / static_cast<double>(std::min(y + r, rows - 1) - std::max<int64_t>(y - r, 0) + 1));
            for (int v = 0; v < kVectors; ++v)
                _mm256_store_pd(block + i * kBoxStrip + 4 * v, _mm256_mul_pd(sum[v], inv_count));
        }
        double* o = out + x0 * rows + y0;
        if (n_block == kBoxRowBlock) {
            store_block_transposed_avx2(block, kBoxStrip, rows, o);
        } else {
            store_rows_transposed(block, n_block, kBoxStrip, rows, o);
        }
    }
}
#endif

// One pass: out [cols, rows] (transposed) = the mean of `in` [rows, cols] over the rows
// [y - r, y + r] clipped to the plane, for every column. Scratch: colsum [cols], block
// [kBoxRowBlock, cols]. kVector: the AVX paths' strips (box_strip_transposed_avx2), all but the
// last cols % 4 columns.
template <bool kVector>
SEGK_ALWAYS_INLINE void box_pass_transposed(const double* __restrict in, int64_t rows, int64_t cols, int64_t r,
                                            double* __restrict out, double* __restrict colsum,
                                            double* __restrict block) {
    int64_t x0 = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if constexpr (kVector) {
        // 16 columns (4 independent chains of sums) where they fit, then 8 and 4
        for (; x0 + 16 <= cols; x0 += 16) box_strip_transposed_avx2<4>(in, rows, cols, r, x0, out);
        if (x0 + 8 <= cols) {
            box_strip_transposed_avx2<2>(in, rows, cols, r, x0, out);
            x0 += 8;
        }
        if (x0 + 4 <= cols) {
            box_strip_transposed_avx2<1>(in, rows, cols, r, x0, out);
            x0 += 4;
        }
    }
#endif
    if (x0 < cols) box_columns_transposed(in + x0, rows, cols - x0, cols, r, out + x0 * rows, colsum, block);
}

// In place: planes [p0, p1) of a plane-major stack of [h, w] planes become their clipped-window means.
template <bool kVector>
SEGK_ALWAYS_INLINE void box_mean_planes(double* planes, int64_t p0, int64_t p1, int64_t h, int64_t w, int64_t r) {
    const int64_t longer = std::max(h, w);
    const AlignedDoubles scratch = aligned_doubles(h * w + (1 + kBoxRowBlock) * longer);
    double* transposed = scratch.get();
    double* colsum = transposed + h * w;
    double* block = colsum + longer;
    for (int64_t p = p0; p < p1; ++p) {
        double* plane = planes + p * h * w;
        box_pass_transposed<kVector>(plane, h, w, r, transposed, colsum, block);  // along y -> [w, h]
        box_pass_transposed<kVector>(transposed, w, h, r, plane, colsum, block);  // along x -> [h, w]
    }
}

// --- Coefficients ------------------------------------------------------------------------------
//
// Four phases, each split over the threads when the image is large enough (pixel ranges, or planes
// for the box means); every value is computed by the same operations whoever computes it, so the
// thread count does not change a bit.

struct CoefficientCall {
    const float* guide;
    const float* src;
    int64_t h, w, k, radius;
    double eps;
    float* a_out;
    float* b_out;
    double* m;   // [9 + 4k, n]: guide (3), the 6 distinct guide products (00 01 02 11 12 22), then per
                 // source channel j: the source and source x guide (3)
    double* ab;  // [4k, n]: a (3 per channel), then b (one per channel)
};

// Phase 1, pixels [i0, i1): the planes whose window means the fit needs.
SEGK_ALWAYS_INLINE void coefficient_planes(const CoefficientCall& c, int64_t i0, int64_t i1) {
    const int64_t n = c.h * c.w, k = c.k;
    double* __restrict mg = c.m;
#pragma GCC ivdep
    for (int64_t i = i0; i < i1; ++i) {
        const double g0 = c.guide[3 * i], g1 = c.guide[3 * i + 1], g2 = c.guide[3 * i + 2];
        mg[i] = g0;
        mg[n + i] = g1;
        mg[2 * n + i] = g2;
        mg[3 * n + i] = g0 * g0;
        mg[4 * n + i] = g0 * g1;
        mg[5 * n + i] = g0 * g2;
        mg[6 * n + i] = g1 * g1;
        mg[7 * n + i] = g1 * g2;
        mg[8 * n + i] = g2 * g2;
    }
    for (int64_t j = 0; j < k; ++j) {
        double* __restrict ms = c.m + (9 + 4 * j) * n;
        for (int64_t i = i0; i < i1; ++i) {
            const double s = c.src[i * k + j];
            ms[i] = s;
            ms[n + i] = s * static_cast<double>(c.guide[3 * i]);
            ms[2 * n + i] = s * static_cast<double>(c.guide[3 * i + 1]);
            ms[3 * n + i] = s * static_cast<double>(c.guide[3 * i + 2]);
        }
    }
}

// Phase 3 for source channel j, pixels [i0, i1): a = cov(I, p) (Sigma + eps I)^-1,
// b = mean(p) - a . mean(I), from the guide's window means m (the first 9 planes of c.m) and the
// channel's mp (its 4 planes). Restrict parameters rather than pointers into c.m and c.ab, which
// GCC cannot tell apart (it left this loop scalar).
SEGK_ALWAYS_INLINE void solve_channel(const double* __restrict m, const double* __restrict mp, int64_t n, double eps,
                                     double* __restrict a0, double* __restrict a1, double* __restrict a2,
                                     double* __restrict bj, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
        const double i0v = m[i], i1v = m[n + i], i2v = m[2 * n + i];
        const double s00 = m[3 * n + i] - i0v * i0v + eps, s01 = m[4 * n + i] - i0v * i1v;
        const double s02 = m[5 * n + i] - i0v * i2v, s11 = m[6 * n + i] - i1v * i1v + eps;
        const double s12 = m[7 * n + i] - i1v * i2v, s22 = m[8 * n + i] - i2v * i2v + eps;
        // inverse of the symmetric matrix by its adjugate
        const double c00 = s11 * s22 - s12 * s12, c01 = s02 * s12 - s01 * s22, c02 = s01 * s12 - s02 * s11;
        const double c11 = s00 * s22 - s02 * s02, c12 = s01 * s02 - s00 * s12, c22 = s00 * s11 - s01 * s01;
        const double inv_det = 1.0 / (s00 * c00 + s01 * c01 + s02 * c02);
        const double p = mp[i];
        const double v0 = mp[n + i] - p * i0v, v1 = mp[2 * n + i] - p * i1v, v2 = mp[3 * n + i] - p * i2v;
        const double x0 = (v0 * c00 + v1 * c01 + v2 * c02) * inv_det;
        const double x1 = (v0 * c01 + v1 * c11 + v2 * c12) * inv_det;
        const double x2 = (v0 * c02 + v1 * c12 + v2 * c22) * inv_det;
        a0[i] = x0;
        a1[i] = x1;
        a2[i] = x2;
        bj[i] = p - x0 * i0v - x1 * i1v - x2 * i2v;
    }
}

// Phase 3, pixels [i0, i1), every channel. The inverse is recomputed per channel (K is 1 for two
// classes), which keeps the loop over pixels free of per-pixel scratch, so it vectorises.
SEGK_ALWAYS_INLINE void coefficient_solve(const CoefficientCall& c, int64_t i0, int64_t i1) {
    const int64_t n = c.h * c.w, k = c.k;
    for (int64_t j = 0; j < k; ++j) {
        double* a0 = c.ab + 3 * j * n;
        solve_channel(c.m, c.m + (9 + 4 * j) * n, n, c.eps, a0, a0 + n, a0 + 2 * n, c.ab + (3 * k + j) * n, i0, i1);
    }
}

// Phase 5, pixels [i0, i1): the mean coefficients to float, [n, k, 3] and [n, k].
SEGK_ALWAYS_INLINE void coefficient_store(const CoefficientCall& c, int64_t i0, int64_t i1) {
    const int64_t n = c.h * c.w, k = c.k;
    for (int64_t j = 0; j < k; ++j) {
        const double* __restrict a0 = c.ab + 3 * j * n;
        const double* __restrict bj = c.ab + (3 * k + j) * n;
        for (int64_t i = i0; i < i1; ++i) {
            float* __restrict a = c.a_out + (i * k + j) * 3;
            a[0] = static_cast<float>(a0[i]);
            a[1] = static_cast<float>(a0[n + i]);
            a[2] = static_cast<float>(a0[2 * n + i]);
            c.b_out[i * k + j] = static_cast<float>(bj[i]);
        }
    }
}

// Phase (0: planes, 1: box means of m, 2: solve, 3: box means of ab, 4: store) over items [t0, t1):
// pixels for 0, 2 and 4, planes for 1 and 3. kVector: the AVX paths' box passes.
template <bool kVector>
SEGK_ALWAYS_INLINE void coefficient_phase(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    switch (phase) {
        case 0: coefficient_planes(c, t0, t1); break;
        case 1: box_mean_planes<kVector>(c.m, t0, t1, c.h, c.w, c.radius); break;
        case 2: coefficient_solve(c, t0, t1); break;
        case 3: box_mean_planes<kVector>(c.ab, t0, t1, c.h, c.w, c.radius); break;
        default: coefficient_store(c, t0, t1); break;
    }
}

using CoefficientFn = void (*)(const CoefficientCall&, int, int64_t, int64_t);
SEGK_TARGET("avx512f") void coefficient_phase_avx512(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase<true>(c, phase, t0, t1);
}
SEGK_TARGET("avx2") void coefficient_phase_avx2(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase<true>(c, phase, t0, t1);
}
void coefficient_phase_scalar(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase<false>(c, phase, t0, t1);
}

// --- Full-resolution step ----------------------------------------------------------------------

struct ApplyCall {
    const float* a;  // [hl, wl, k, 3]
    const float* b;  // [hl, wl, k]
    int64_t wl, k;
    const float* guide;  // [h, w, 3]
    int64_t w;
    const int64_t* sources;
    const float* signs;
    const float* bias;
    int64_t channels;
    float* out;  // [h, w, channels]
    const Tap* row_taps;
    const int32_t* col_i0;  // per output column: left and right low-res columns and weights
    const int32_t* col_i1;
    const float* col_left_w;
    const float* col_right_w;
    const int32_t* col_from0;  // col_i0 and col_i1 less col_i0 of the first column of their 4
    const int32_t* col_from1;  // (the AVX two-class path's windows)
};

// One thread's buffers: the two source rows of coef mixed (the two-class path: planar, [4, wl],
// plus a vector's padding), one pixel's values and filtered values (the general path), and the
// two-class path's rows of coef made planar.
struct ApplyScratch {
    std::vector<float> row, value, filtered, planar;
};

// The general path, output row y: the two low-res rows mixed (top * (1 - fy) + bottom * fy), then
// per pixel the two columns mixed the same way, filtered_j = a_j . guide + b_j summed left to right,
// and the outputs.
SEGK_ALWAYS_INLINE void apply_row_body(const ApplyCall& c, int64_t y, ApplyScratch& s) {
    const int64_t k = c.k, stride = 4 * k;
    const Tap ty = c.row_taps[y];
    const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
    const float* __restrict a_top = c.a + ty.i0 * c.wl * 3 * k;
    const float* __restrict a_bottom = c.a + ty.i1 * c.wl * 3 * k;
    const float* __restrict b_top = c.b + ty.i0 * c.wl * k;
    const float* __restrict b_bottom = c.b + ty.i1 * c.wl * k;
    float* __restrict row = s.row.data();  // [wl, 4k]: a then b per column
    for (int64_t i = 0; i < c.wl; ++i) {
        for (int64_t q = 0; q < 3 * k; ++q)
            row[i * stride + q] = a_top[i * 3 * k + q] * top_w + a_bottom[i * 3 * k + q] * bottom_w;
        for (int64_t j = 0; j < k; ++j)
            row[i * stride + 3 * k + j] = b_top[i * k + j] * top_w + b_bottom[i * k + j] * bottom_w;
    }
    const float* __restrict g = c.guide + y * c.w * 3;
    float* __restrict o = c.out + y * c.w * c.channels;
    float* __restrict value = s.value.data();
    float* __restrict filtered = s.filtered.data();
    for (int64_t x = 0; x < c.w; ++x) {
        const float lw = c.col_left_w[x], rw = c.col_right_w[x];
        const float* __restrict left = row + c.col_i0[x] * stride;
        const float* __restrict right = row + c.col_i1[x] * stride;
        for (int64_t i = 0; i < stride; ++i) value[i] = left[i] * lw + right[i] * rw;
        const float* gx = g + 3 * x;
        for (int64_t j = 0; j < c.k; ++j)
            filtered[j] = value[3 * j] * gx[0] + value[3 * j + 1] * gx[1] + value[3 * j + 2] * gx[2] + value[3 * c.k + j];
        float* ox = o + x * c.channels;
        for (int64_t ch = 0; ch < c.channels; ++ch) ox[ch] = c.signs[ch] * filtered[c.sources[ch]] + c.bias[ch];
    }
}

// The two-class path's one pixel x of an output row, from the row's mixed coefficients (planar,
// [4, wl]): the general path's arithmetic for K = 1.
SEGK_ALWAYS_INLINE void two_class_pixel(const ApplyCall& c, const float* __restrict mixed, const float* __restrict g,
                                        float* __restrict o, int64_t x) {
    const int64_t wl = c.wl, left = c.col_i0[x], right = c.col_i1[x];
    const float lw = c.col_left_w[x], rw = c.col_right_w[x];
    const float a0 = mixed[left] * lw + mixed[right] * rw;
    const float a1 = mixed[wl + left] * lw + mixed[wl + right] * rw;
    const float a2 = mixed[2 * wl + left] * lw + mixed[2 * wl + right] * rw;
    const float b = mixed[3 * wl + left] * lw + mixed[3 * wl + right] * rw;
    const float f = a0 * g[3 * x] + a1 * g[3 * x + 1] + a2 * g[3 * x + 2] + b;
    o[2 * x] = c.signs[0] * f + c.bias[0];
    o[2 * x + 1] = c.signs[1] * f + c.bias[1];
}

#if defined(__x86_64__) || defined(_M_X64)
// A vector of 4 floats from low and 4 from high: broadcast loads and a blend, which keep the
// shuffle units (the two-class blocks' bottleneck) free, where vinsertf128 would take one.
SEGK_TARGET("avx2") inline __m256 load_halves(const float* low, const float* high) {
    return _mm256_blend_ps(_mm256_broadcast_ps(reinterpret_cast<const __m128*>(low)),
                           _mm256_broadcast_ps(reinterpret_cast<const __m128*>(high)), 0xf0);
}

// two_class_pixel for blocks of 8 output columns where each half's 4 columns take their low-res
// columns from 4 consecutive ones (any upsampling by about 1.5 or more). Only in-lane shuffles,
// which cost a third of a cross-lane permute on Zen 3: each half of a coefficient's vector comes
// from its own 4-value window of the mixed row (vpermilps), the guide's channels from 128-bit loads
// of 4 pixels each, blends and vpermilps, and the two outputs are interleaved by unpacks. The
// arithmetic is two_class_pixel's, operation for operation. Returns how many leading columns it
// wrote (up to the first block that does not fit; the rest go to two_class_pixel).
SEGK_TARGET("avx2")
inline int64_t two_class_blocks_avx2(const ApplyCall& c, const float* mixed, const float* g, float* o) {
    // locals: the intrinsics' stores may alias anything, so fields of c would be read again each block
    const int64_t wl = c.wl, w = c.w;
    const int32_t *col_i0 = c.col_i0, *from0 = c.col_from0, *from1 = c.col_from1;
    const float *col_left_w = c.col_left_w, *col_right_w = c.col_right_w;
    const __m256 sign0 = _mm256_set1_ps(c.signs[0]), sign1 = _mm256_set1_ps(c.signs[1]);
    const __m256 bias0 = _mm256_set1_ps(c.bias[0]), bias1 = _mm256_set1_ps(c.bias[1]);
    int64_t x = 0;
    for (; x + 8 <= w; x += 8) {
        if (from1[x + 3] > 3 || from1[x + 7] > 3) break;  // columns never decrease along x
        const int32_t lo = col_i0[x], hi = col_i0[x + 4];
        const __m256i at0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from0 + x));
        const __m256i at1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from1 + x));
        const __m256 lw = _mm256_loadu_ps(col_left_w + x), rw = _mm256_loadu_ps(col_right_w + x);
        __m256 coef[4];
        for (int p = 0; p < 4; ++p) {
            const float* plane = mixed + p * wl;
            const __m256 window = load_halves(plane + lo, plane + hi);  // may read into the padding
            coef[p] = _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar_ps(window, at0), lw),
                                    _mm256_mul_ps(_mm256_permutevar_ps(window, at1), rw));
        }
        // per half, 4 pixels' 12 values r0 g0 b0 r1 | g1 b1 r2 g2 | b2 r3 g3 b3: a blend takes every lane
        // from the load holding that channel there, a vpermilps puts the pixels in order
        const float* gx = g + 3 * x;
        const __m256 v0 = load_halves(gx, gx + 12), v1 = load_halves(gx + 4, gx + 16);
        const __m256 v2 = load_halves(gx + 8, gx + 20);
        const __m256 g0 = _mm256_permute_ps(_mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x44), v2, 0x22), 0x6c);
        const __m256 g1 = _mm256_permute_ps(_mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x99), v2, 0x44), 0xb1);
        const __m256 g2 = _mm256_permute_ps(_mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x22), v2, 0x99), 0xc6);
        const __m256 f01 = _mm256_add_ps(_mm256_mul_ps(coef[0], g0), _mm256_mul_ps(coef[1], g1));
        const __m256 f = _mm256_add_ps(_mm256_add_ps(f01, _mm256_mul_ps(coef[2], g2)), coef[3]);
        const __m256 out0 = _mm256_add_ps(_mm256_mul_ps(sign0, f), bias0);
        const __m256 out1 = _mm256_add_ps(_mm256_mul_ps(sign1, f), bias1);
        // pixels 0 1 4 5 and 2 3 6 7, each value of out0 followed by out1's
        const __m256 low = _mm256_unpacklo_ps(out0, out1), high = _mm256_unpackhi_ps(out0, out1);
        _mm256_storeu2_m128(o + 2 * x + 8, o + 2 * x, low);
        _mm256_storeu2_m128(o + 2 * x + 12, o + 2 * x + 4, high);
    }
    return x;
}
#endif

// The two-class path (K = 1, two outputs), output row y: the two low-res rows mixed once for the
// row, as the general path does, but planar ([4, wl] from planar rows of coef, s.planar from
// low-res row j0 on), so that the mixing vectorises and the AVX paths take a block's coefficients
// from a window of each plane (two_class_blocks_avx2).
template <bool kVector>
SEGK_ALWAYS_INLINE void apply_row_two_class_body(const ApplyCall& c, int64_t y, int64_t j0, ApplyScratch& s) {
    const Tap ty = c.row_taps[y];
    const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
    const int64_t wl = c.wl;
    const float* __restrict top = s.planar.data() + (ty.i0 - j0) * 4 * wl;
    const float* __restrict bottom = s.planar.data() + (ty.i1 - j0) * 4 * wl;
    float* __restrict mixed = s.row.data();
    for (int64_t i = 0; i < 4 * wl; ++i) mixed[i] = top[i] * top_w + bottom[i] * bottom_w;
    const float* g = c.guide + y * c.w * 3;
    float* o = c.out + y * c.w * 2;
    int64_t x = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if constexpr (kVector) x = two_class_blocks_avx2(c, mixed, g, o);
#endif
    for (; x < c.w; ++x) two_class_pixel(c, mixed, g, o, x);
}

using ApplyRowsFn = void (*)(const ApplyCall&, int64_t, int64_t, ApplyScratch&);
template <bool kVector>
SEGK_ALWAYS_INLINE void apply_rows_body(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    if (c.k == 1 && c.channels == 2) {
        // the low-res rows these output rows read (the taps never decrease), made planar: a0 a1 a2 b,
        // [4, wl] per row
        const int64_t wl = c.wl, j0 = c.row_taps[r0].i0, j1 = c.row_taps[r1 - 1].i1;
        s.planar.resize(static_cast<size_t>((j1 - j0 + 1) * 4 * wl));
        for (int64_t j = 0; j <= j1 - j0; ++j) {
            const float* __restrict a = c.a + (j0 + j) * wl * 3;
            float* __restrict to = s.planar.data() + j * 4 * wl;
            for (int64_t i = 0; i < wl; ++i)
                for (int64_t p = 0; p < 3; ++p) to[p * wl + i] = a[3 * i + p];
            std::copy(c.b + (j0 + j) * wl, c.b + (j0 + j + 1) * wl, to + 3 * wl);
        }
        for (int64_t y = r0; y < r1; ++y) apply_row_two_class_body<kVector>(c, y, j0, s);
        return;
    }
    for (int64_t y = r0; y < r1; ++y) apply_row_body(c, y, s);
}
SEGK_TARGET("avx512f") void apply_rows_avx512(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<true>(c, r0, r1, s);
}
SEGK_TARGET("avx2") void apply_rows_avx2(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<true>(c, r0, r1, s);
}
void apply_rows_scalar(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<false>(c, r0, r1, s);
}

// Output values per thread at least in the full-resolution step (threads_for). It runs right after
// the network, whose calls leave the helpers awake: a 320x240 image's 150 K values go to two.
constexpr double kMinApplyValuesPerThread = 1 << 15;

// --- Two-class source --------------------------------------------------------------------------

using HalfDiffFn = void (*)(const float*, int64_t, int64_t, float, float*);
SEGK_ALWAYS_INLINE void half_difference_body(const float* __restrict scores, int64_t p0, int64_t p1, float clip,
                                 float* __restrict out) {
    const float low = -clip;
    for (int64_t p = p0; p < p1; ++p) {
        const float v = (scores[2 * p + 1] - scores[2 * p]) * 0.5f;
        const float above = v < low ? low : v;  // np.clip: maximum, then minimum; NaN stays NaN
        out[p] = above > clip ? clip : above;
    }
}
SEGK_TARGET("avx512f") void half_difference_avx512(const float* s, int64_t p0, int64_t p1, float clip, float* out) {
    half_difference_body(s, p0, p1, clip, out);
}
SEGK_TARGET("avx2") void half_difference_avx2(const float* s, int64_t p0, int64_t p1, float clip, float* out) {
    half_difference_body(s, p0, p1, clip, out);
}
void half_difference_scalar(const float* s, int64_t p0, int64_t p1, float clip, float* out) {
    half_difference_body(s, p0, p1, clip, out);
}

}  // namespace

// Fewer values than this (pixels x planes) run on the calling thread: a 60x80 fit (the fast filter's
// subsampled 240x320 frame, 13 planes) takes about 0.15 ms alone and gains from a second thread.
constexpr int64_t kMinParallelCoefficientValues = int64_t{1} << 15;

void guided_coefficients(const float* guide, const float* src, int64_t h, int64_t w, int64_t k, int64_t radius,
                         double eps, float* a_out, float* b_out) {
    const int64_t n = h * w, n_planes = 9 + 4 * k;
    // uninitialised: every value is written before it is read (zeroing 0.5 MB showed in the profile)
    const AlignedDoubles m = aligned_doubles(n_planes * n);
    const AlignedDoubles ab = aligned_doubles(4 * k * n);
    const CoefficientCall call{guide, src, h, w, k, radius, eps, a_out, b_out, m.get(), ab.get()};
    const CoefficientFn fn =
        for_current_isa<CoefficientFn>(coefficient_phase_avx512, coefficient_phase_avx2, coefficient_phase_scalar);
    const int threads = n * n_planes < kMinParallelCoefficientValues ? 1 : get_num_threads();
    // Phases 1 and 3 (box means) take a plane per item, the others a contiguous pixel range per thread.
    const int64_t box_planes[5] = {0, n_planes, 0, 4 * k, 0};
    for (int phase = 0; phase < 5; ++phase) {
        if (box_planes[phase] > 0) {
            parallel_for(threads, box_planes[phase], [&](int64_t p) { fn(call, phase, p, p + 1); });
        } else {
            parallel_for(threads, threads, [&](int64_t t) { fn(call, phase, n * t / threads, n * (t + 1) / threads); });
        }
    }
}

void guided_apply(const float* a, const float* b, int64_t hl, int64_t wl, int64_t k, const float* guide, int64_t h,
                  int64_t w, const int64_t* sources, const float* signs, const float* bias, int64_t channels,
                  float* out) {
    // a and b upsampled exactly as upsample_bilinear would (rows mixed first, then columns), applied
    // to the guide, then mapped to the output channels.
    const std::vector<Tap> row_taps = linear_taps(hl, h), col_taps = linear_taps(wl, w);
    std::vector<int32_t> col_i0(static_cast<size_t>(w)), col_i1(static_cast<size_t>(w));
    std::vector<float> col_left_w(static_cast<size_t>(w)), col_right_w(static_cast<size_t>(w));
    std::vector<int32_t> col_from0(static_cast<size_t>(w)), col_from1(static_cast<size_t>(w));
    for (int64_t x = 0; x < w; ++x) {
        const Tap& t = col_taps[static_cast<size_t>(x)];
        const size_t i = static_cast<size_t>(x);
        col_i0[i] = static_cast<int32_t>(t.i0);
        col_i1[i] = static_cast<int32_t>(t.i1);
        col_left_w[i] = 1.0f - t.frac;
        col_right_w[i] = t.frac;
        col_from0[i] = col_i0[i] - col_i0[i & ~size_t{3}];
        col_from1[i] = col_i1[i] - col_i0[i & ~size_t{3}];
    }
    const ApplyCall call{a,     b,    wl,       k,   guide,           w,             sources,       signs,
                         bias,  channels, out,  row_taps.data(), col_i0.data(), col_i1.data(),
                         col_left_w.data(), col_right_w.data(), col_from0.data(), col_from1.data()};
    const ApplyRowsFn fn = for_current_isa<ApplyRowsFn>(apply_rows_avx512, apply_rows_avx2, apply_rows_scalar);
    const int threads = threads_for(static_cast<double>(h * w * channels), kMinApplyValuesPerThread, get_num_threads());
    // One item per thread's share of rows (each sets up its scratch once), cut in a few pieces when
    // several threads share them.
    const int64_t rows_per_item = threads == 1 ? h : std::max<int64_t>(8, h / (4 * threads));
    parallel_for(threads, (h + rows_per_item - 1) / rows_per_item, [&](int64_t item) {
        ApplyScratch scratch;
        if (k == 1 && channels == 2) {
            scratch.row.resize(static_cast<size_t>(4 * wl + 8));  // zeroed padding: read, never used
        } else {
            scratch.row.resize(static_cast<size_t>(wl * 4 * k));
            scratch.value.resize(static_cast<size_t>(4 * k));
            scratch.filtered.resize(static_cast<size_t>(k));
        }
        fn(call, item * rows_per_item, std::min(h, (item + 1) * rows_per_item), scratch);
    });
}

void half_logit_difference(const float* scores, int64_t pixels, float clip, float* out) {
    const HalfDiffFn fn = for_current_isa<HalfDiffFn>(half_difference_avx512, half_difference_avx2,
                                                      half_difference_scalar);
    constexpr int64_t kPixelsPerItem = int64_t{1} << 15;
    const int threads = threads_for(static_cast<double>(pixels), kMinApplyValuesPerThread, get_num_threads());
    parallel_for(threads, (pixels + kPixelsPerItem - 1) / kPixelsPerItem, [&](int64_t item) {
        fn(scores, item * kPixelsPerItem, std::min(pixels, (item + 1) * kPixelsPerItem), clip, out);
    });
}

}  // namespace segk
