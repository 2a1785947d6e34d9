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

// One pass: out [cols, rows] (transposed) = the mean of `in` [rows, cols] over the rows
// [y - r, y + r] clipped to the plane, for every column. colsum: scratch [cols].
SEGK_ALWAYS_INLINE void box_pass_transposed(const double* __restrict in, int64_t rows, int64_t cols, int64_t r,
                                double* __restrict out, double* __restrict colsum) {
    std::fill(colsum, colsum + cols, 0.0);
    for (int64_t y = 0; y < std::min(r, rows); ++y) {
        const double* __restrict row = in + y * cols;
        for (int64_t x = 0; x < cols; ++x) colsum[x] += row[x];
    }
    for (int64_t y = 0; y < rows; ++y) {
        if (y + r < rows) {  // the window's new last row
            const double* __restrict row = in + (y + r) * cols;
            for (int64_t x = 0; x < cols; ++x) colsum[x] += row[x];
        }
        if (y - r - 1 >= 0) {  // the row that left the window
            const double* __restrict row = in + (y - r - 1) * cols;
            for (int64_t x = 0; x < cols; ++x) colsum[x] -= row[x];
        }
        const double inv_count =
            1.0 / static_cast<double>(std::min(y + r, rows - 1) - std::max<int64_t>(y - r, 0) + 1);
        for (int64_t x = 0; x < cols; ++x) out[x * rows + y] = colsum[x] * inv_count;
    }
}

// In place: planes [p0, p1) of a plane-major stack of [h, w] planes become their clipped-window means.
SEGK_ALWAYS_INLINE void box_mean_planes(double* planes, int64_t p0, int64_t p1, int64_t h, int64_t w, int64_t r) {
    const std::unique_ptr<double[]> scratch(new double[static_cast<size_t>(h * w + std::max(h, w))]);
    double* transposed = scratch.get();
    double* colsum = transposed + h * w;
    for (int64_t p = p0; p < p1; ++p) {
        double* plane = planes + p * h * w;
        box_pass_transposed(plane, h, w, r, transposed, colsum);  // along y -> [w, h]
        box_pass_transposed(transposed, w, h, r, plane, colsum);  // along x -> [h, w]
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

// Phase 3, pixels [i0, i1), from the window means: a = cov(I, p) (Sigma + eps I)^-1,
// b = mean(p) - a . mean(I). The inverse is recomputed per channel (K is 1 for two classes), which
// keeps the loop over pixels free of per-pixel scratch, so it vectorises.
SEGK_ALWAYS_INLINE void coefficient_solve(const CoefficientCall& c, int64_t i0, int64_t i1) {
    const int64_t n = c.h * c.w, k = c.k;
    const double eps = c.eps;
    const double* __restrict mi0 = c.m;
    const double* __restrict mi1 = c.m + n;
    const double* __restrict mi2 = c.m + 2 * n;
    const double* __restrict m00 = c.m + 3 * n;
    const double* __restrict m01 = c.m + 4 * n;
    const double* __restrict m02 = c.m + 5 * n;
    const double* __restrict m11 = c.m + 6 * n;
    const double* __restrict m12 = c.m + 7 * n;
    const double* __restrict m22 = c.m + 8 * n;
    for (int64_t j = 0; j < k; ++j) {
        const double* __restrict mp = c.m + (9 + 4 * j) * n;
        const double* __restrict mp0 = mp + n;
        const double* __restrict mp1 = mp + 2 * n;
        const double* __restrict mp2 = mp + 3 * n;
        double* __restrict a0 = c.ab + 3 * j * n;
        double* __restrict a1 = a0 + n;
        double* __restrict a2 = a0 + 2 * n;
        double* __restrict bj = c.ab + (3 * k + j) * n;
        for (int64_t i = i0; i < i1; ++i) {
            const double i0v = mi0[i], i1v = mi1[i], i2v = mi2[i];
            const double s00 = m00[i] - i0v * i0v + eps, s01 = m01[i] - i0v * i1v, s02 = m02[i] - i0v * i2v;
            const double s11 = m11[i] - i1v * i1v + eps, s12 = m12[i] - i1v * i2v, s22 = m22[i] - i2v * i2v + eps;
            // inverse of the symmetric matrix by its adjugate
            const double c00 = s11 * s22 - s12 * s12, c01 = s02 * s12 - s01 * s22, c02 = s01 * s12 - s02 * s11;
            const double c11 = s00 * s22 - s02 * s02, c12 = s01 * s02 - s00 * s12, c22 = s00 * s11 - s01 * s01;
            const double inv_det = 1.0 / (s00 * c00 + s01 * c01 + s02 * c02);
            const double p = mp[i];
            const double v0 = mp0[i] - p * i0v, v1 = mp1[i] - p * i1v, v2 = mp2[i] - p * i2v;
            const double x0 = (v0 * c00 + v1 * c01 + v2 * c02) * inv_det;
            const double x1 = (v0 * c01 + v1 * c11 + v2 * c12) * inv_det;
            const double x2 = (v0 * c02 + v1 * c12 + v2 * c22) * inv_det;
            a0[i] = x0;
            a1[i] = x1;
            a2[i] = x2;
            bj[i] = p - x0 * i0v - x1 * i1v - x2 * i2v;
        }
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
// pixels for 0, 2 and 4, planes for 1 and 3.
SEGK_ALWAYS_INLINE void coefficient_phase(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    switch (phase) {
        case 0: coefficient_planes(c, t0, t1); break;
        case 1: box_mean_planes(c.m, t0, t1, c.h, c.w, c.radius); break;
        case 2: coefficient_solve(c, t0, t1); break;
        case 3: box_mean_planes(c.ab, t0, t1, c.h, c.w, c.radius); break;
        default: coefficient_store(c, t0, t1); break;
    }
}

using CoefficientFn = void (*)(const CoefficientCall&, int, int64_t, int64_t);
SEGK_TARGET("avx512f") void coefficient_phase_avx512(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase(c, phase, t0, t1);
}
SEGK_TARGET("avx2") void coefficient_phase_avx2(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase(c, phase, t0, t1);
}
void coefficient_phase_scalar(const CoefficientCall& c, int phase, int64_t t0, int64_t t1) {
    coefficient_phase(c, phase, t0, t1);
}

// --- Full-resolution step ----------------------------------------------------------------------

struct ApplyCall {
    const float* coef;  // [hl, wl, 4k]
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
};

// One thread's buffers: the two source rows of coef mixed and one pixel's values (general path);
// for the two-class path, low-res rows of coef spread out to the output's columns (two slots).
struct ApplyScratch {
    std::vector<float> row, value, filtered;
    std::vector<float> spread[2];
    int64_t spread_row[2] = {-1, -1};
};

// The general path, output row y: the two low-res rows mixed (top * (1 - fy) + bottom * fy), then
// per pixel the two columns mixed the same way, filtered_j = a_j . guide + b_j summed left to right,
// and the outputs.
SEGK_ALWAYS_INLINE void apply_row_body(const ApplyCall& c, int64_t y, ApplyScratch& s) {
    const int64_t stride = 4 * c.k, row_len = c.wl * stride;
    const Tap ty = c.row_taps[y];
    const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
    const float* __restrict top = c.coef + ty.i0 * row_len;
    const float* __restrict bottom = c.coef + ty.i1 * row_len;
    float* __restrict row = s.row.data();
    for (int64_t i = 0; i < row_len; ++i) row[i] = top[i] * top_w + bottom[i] * bottom_w;
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

#if defined(__x86_64__) || defined(_M_X64)
// The vector part of spread_row for one side (`col`: each output column's left or right low-res
// column): blocks of 16 (AVX-512) or 8 (AVX2) output columns whose low-res columns lie within 8
// (4) consecutive ones take their values from that window by permutes. Returns how many leading
// columns it wrote; the rest are copied one by one. Copies only: the same values either way.
SEGK_TARGET("avx512f")
inline int64_t spread_blocks_avx512(const float* src, int64_t n_src, const int32_t* col, int64_t w,
                                    float* dst) {
    int64_t x = 0;
    for (; x + 16 <= w; x += 16) {
        const int32_t lo = col[x];
        if (col[x + 15] - lo > 7) break;  // columns never decrease along x
        const int64_t avail = std::min<int64_t>(32, n_src - 4 * int64_t{lo});
        const __m512 t0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << std::min<int64_t>(16, avail)) - 1u),
                                                src + 4 * lo);
        const __m512 t1 = _mm512_maskz_loadu_ps(
            static_cast<__mmask16>((1u << std::max<int64_t>(0, avail - 16)) - 1u), src + 4 * lo + 16);
        const __m512i at = _mm512_slli_epi32(
            _mm512_sub_epi32(_mm512_loadu_si512(col + x), _mm512_set1_epi32(lo)), 2);
        for (int p = 0; p < 4; ++p)
            _mm512_storeu_ps(dst + p * w + x,
                             _mm512_permutex2var_ps(t0, _mm512_add_epi32(at, _mm512_set1_epi32(p)), t1));
    }
    return x;
}

SEGK_TARGET("avx2")
inline int64_t spread_blocks_avx2(const float* src, int64_t n_src, const int32_t* col, int64_t w, float* dst) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i seven = _mm256_set1_epi32(7);
    int64_t x = 0;
    for (; x + 8 <= w; x += 8) {
        const int32_t lo = col[x];
        if (col[x + 7] - lo > 3) break;
        const int avail = static_cast<int>(std::min<int64_t>(16, n_src - 4 * int64_t{lo}));
        const __m256 t0 = _mm256_maskload_ps(src + 4 * lo, _mm256_cmpgt_epi32(_mm256_set1_epi32(avail), lane));
        const __m256 t1 =
            _mm256_maskload_ps(src + 4 * lo + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(avail - 8), lane));
        const __m256i at = _mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + x)), _mm256_set1_epi32(lo)),
            2);
        for (int p = 0; p < 4; ++p) {
            const __m256i i = _mm256_add_epi32(at, _mm256_set1_epi32(p));
            const __m256i in_t1 = _mm256_cmpgt_epi32(i, seven);
            const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, i), _mm256_permutevar8x32_ps(t1, i),
                                              _mm256_castsi256_ps(in_t1));
            _mm256_storeu_ps(dst + p * w + x, v);
        }
    }
    return x;
}
#endif

// Low-res row j of coef (K = 1: a0 a1 a2 b per column) spread out to the output's columns, as 8
// arrays of w: each coefficient at every pixel's left column, then at its right column. Copies
// only (no arithmetic), so mixing spread rows gives the general path's values bit for bit.
// kVectorWidth: 16 or 8 for the AVX paths' permuted blocks (spread_blocks_*), 0 for copies only.
template <int kVectorWidth>
SEGK_ALWAYS_INLINE const float* spread_row(const ApplyCall& c, int64_t j, ApplyScratch& s) {
    for (int slot = 0; slot < 2; ++slot)
        if (s.spread_row[slot] == j) return s.spread[slot].data();
    // the slot not holding the other row of the current pair (rows are visited in order)
    const int slot = s.spread_row[0] < s.spread_row[1] ? 0 : 1;
    float* __restrict dst = s.spread[slot].data();
    const float* __restrict src = c.coef + j * c.wl * 4;
    for (int side = 0; side < 2; ++side) {
        const int32_t* col = side == 0 ? c.col_i0 : c.col_i1;
        float* out = dst + 4 * side * c.w;
        int64_t x = 0;
#if defined(__x86_64__) || defined(_M_X64)
        if constexpr (kVectorWidth == 16) x = spread_blocks_avx512(src, c.wl * 4, col, c.w, out);
        if constexpr (kVectorWidth == 8) x = spread_blocks_avx2(src, c.wl * 4, col, c.w, out);
#endif
        for (; x < c.w; ++x) {
            const float* from = src + 4 * col[x];
            for (int p = 0; p < 4; ++p) out[p * c.w + x] = from[p];
        }
    }
    s.spread_row[slot] = j;
    return dst;
}

// The two-class path (K = 1, two outputs), output row y: the same arithmetic as apply_row_body on
// spread rows, so every array is read contiguously and the loop over pixels vectorises.
template <int kVectorWidth>
SEGK_ALWAYS_INLINE void apply_row_two_class_body(const ApplyCall& c, int64_t y, ApplyScratch& s) {
    const Tap ty = c.row_taps[y];
    const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
    const float* top = spread_row<kVectorWidth>(c, ty.i0, s);
    const float* bottom = spread_row<kVectorWidth>(c, ty.i1, s);
    const int64_t w = c.w;
    // [8, w] each: left a0 a1 a2 b, then right a0 a1 a2 b
    const float* __restrict t0 = top;
    const float* __restrict t1 = top + w;
    const float* __restrict t2 = top + 2 * w;
    const float* __restrict t3 = top + 3 * w;
    const float* __restrict t4 = top + 4 * w;
    const float* __restrict t5 = top + 5 * w;
    const float* __restrict t6 = top + 6 * w;
    const float* __restrict t7 = top + 7 * w;
    const float* __restrict b0 = bottom;
    const float* __restrict b1 = bottom + w;
    const float* __restrict b2 = bottom + 2 * w;
    const float* __restrict b3 = bottom + 3 * w;
    const float* __restrict b4 = bottom + 4 * w;
    const float* __restrict b5 = bottom + 5 * w;
    const float* __restrict b6 = bottom + 6 * w;
    const float* __restrict b7 = bottom + 7 * w;
    const float* __restrict lw = c.col_left_w;
    const float* __restrict rw = c.col_right_w;
    const float* __restrict g = c.guide + y * w * 3;
    float* __restrict o = c.out + y * w * 2;
    const float sign0 = c.signs[0], sign1 = c.signs[1], bias0 = c.bias[0], bias1 = c.bias[1];
    // the output never overlaps the inputs (too many arrays for the compiler's run-time alias checks)
#pragma GCC ivdep
    for (int64_t x = 0; x < w; ++x) {
        const float a0 = (t0[x] * top_w + b0[x] * bottom_w) * lw[x] + (t4[x] * top_w + b4[x] * bottom_w) * rw[x];
        const float a1 = (t1[x] * top_w + b1[x] * bottom_w) * lw[x] + (t5[x] * top_w + b5[x] * bottom_w) * rw[x];
        const float a2 = (t2[x] * top_w + b2[x] * bottom_w) * lw[x] + (t6[x] * top_w + b6[x] * bottom_w) * rw[x];
        const float b = (t3[x] * top_w + b3[x] * bottom_w) * lw[x] + (t7[x] * top_w + b7[x] * bottom_w) * rw[x];
        const float f = a0 * g[3 * x] + a1 * g[3 * x + 1] + a2 * g[3 * x + 2] + b;
        o[2 * x] = sign0 * f + bias0;
        o[2 * x + 1] = sign1 * f + bias1;
    }
}

using ApplyRowsFn = void (*)(const ApplyCall&, int64_t, int64_t, ApplyScratch&);
template <int kVectorWidth>
SEGK_ALWAYS_INLINE void apply_rows_body(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    if (c.k == 1 && c.channels == 2) {
        for (int64_t y = r0; y < r1; ++y) apply_row_two_class_body<kVectorWidth>(c, y, s);
        return;
    }
    for (int64_t y = r0; y < r1; ++y) apply_row_body(c, y, s);
}
SEGK_TARGET("avx512f") void apply_rows_avx512(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<16>(c, r0, r1, s);
}
SEGK_TARGET("avx2") void apply_rows_avx2(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<8>(c, r0, r1, s);
}
void apply_rows_scalar(const ApplyCall& c, int64_t r0, int64_t r1, ApplyScratch& s) {
    apply_rows_body<0>(c, r0, r1, s);
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
    const std::unique_ptr<double[]> m(new double[static_cast<size_t>(n_planes * n)]);
    const std::unique_ptr<double[]> ab(new double[static_cast<size_t>(4 * k * n)]);
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

void guided_apply(const float* coef, int64_t hl, int64_t wl, int64_t k, const float* guide, int64_t h, int64_t w,
                  const int64_t* sources, const float* signs, const float* bias, int64_t channels, float* out) {
    // coef [hl, wl, 4k]: a (3 per channel) then b (k); upsampled exactly as upsample_bilinear would
    // (rows mixed first, then columns), applied to the guide, then mapped to the output channels.
    const std::vector<Tap> row_taps = linear_taps(hl, h), col_taps = linear_taps(wl, w);
    std::vector<int32_t> col_i0(static_cast<size_t>(w)), col_i1(static_cast<size_t>(w));
    std::vector<float> col_left_w(static_cast<size_t>(w)), col_right_w(static_cast<size_t>(w));
    for (int64_t x = 0; x < w; ++x) {
        const Tap& t = col_taps[static_cast<size_t>(x)];
        col_i0[static_cast<size_t>(x)] = static_cast<int32_t>(t.i0);
        col_i1[static_cast<size_t>(x)] = static_cast<int32_t>(t.i1);
        col_left_w[static_cast<size_t>(x)] = 1.0f - t.frac;
        col_right_w[static_cast<size_t>(x)] = t.frac;
    }
    const ApplyCall call{coef,         wl,   k,      guide,          w,
                         sources,      signs, bias,  channels,       out,
                         row_taps.data(), col_i0.data(), col_i1.data(), col_left_w.data(), col_right_w.data()};
    const ApplyRowsFn fn = for_current_isa<ApplyRowsFn>(apply_rows_avx512, apply_rows_avx2, apply_rows_scalar);
    const int threads = threads_for(static_cast<double>(h * w * channels), kMinApplyValuesPerThread, get_num_threads());
    // Each item spreads the low-res rows it needs once (two-class path): one item per thread's share
    // of rows, cut in a few pieces when several threads share them.
    const int64_t rows_per_item = threads == 1 ? h : std::max<int64_t>(8, h / (4 * threads));
    parallel_for(threads, (h + rows_per_item - 1) / rows_per_item, [&](int64_t item) {
        ApplyScratch scratch;
        if (k == 1 && channels == 2) {
            for (auto& spread : scratch.spread) spread.resize(static_cast<size_t>(8 * w));
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
