// Direct float convolution for inputs with few channels: the network's RGB stem (7x7, stride 2,
// 3 -> 64 channels at 512x512 is ~0.6 G multiply-adds, the largest float op of the model).
//
// With 3 input channels an im2col matrix has only 147 columns and the GEMM's N is the output
// channel count, a shape BLAS runs far from peak, and the column buffer is 50x the input. Here each
// output pixel's channels are a few vector registers: a register tile of P output pixels (along a
// row) x one block of NB output channels accumulates over the k*k*C taps; each tap loads the
// block's NB weights once (weights pre-arranged as [block][tap][NB]) and, per pixel, broadcasts one
// input value into an FMA with each weight vector.
//
//   avx512: NB = 32 (2 zmm), P = 12 -> 24 accumulators; per tap 2 weight loads + 12 broadcasts
//           for 24 FMAs.
//   avx2:   NB = 16 (2 ymm), P = 6 -> 12 accumulators + 2 weights + 1 broadcast of 16 registers;
//           per tap 2 + 6 loads for 12 FMAs (12 chains in flight cover the FMA latency of 4-5).
//   scalar: plain loops over a 4 x 16 tile (the compiler vectorises them for the baseline ISA).
//
// The input is copied once into a zero-padded buffer, so tiles have no border branches. The stem's
// geometry (3 channels, stride 1 or 2, dilation 1) has its own instantiation with the channel count
// and stride known at compile time (taps of one kernel row are then contiguous and each pixel's
// input is at a fixed displacement); any other geometry runs the same tiles through a tap-offset
// table. A row's last P pixels that do not fill a tile are computed by a tile shifted left to end
// at the row's end (it recomputes a few pixels, writing the same values again). Threads split the
// work by (channel block, output row), block-major, so a thread keeps one block's weights in L1.
//
// Every ISA path sums the taps in the same order (tap = (ky * k + kx) * C + c, one FMA each), so
// the avx2 and avx512 paths agree bit for bit; the scalar path rounds the product separately.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "kernels.h"
#include "threadpool.h"

// Neighbouring pixels of a tile share input values (stride 2: pixel p's tap kx + 2 is pixel p + 1's
// tap kx); -O3's predictive commoning would carry them across the tap loop in registers and spill
// the accumulators. Each value is reloaded from L1 instead.
#pragma GCC optimize("no-predictive-commoning")

namespace segk {
namespace {

struct DirectConv {
    const float* xp;  // zero-padded input [hp, wp, c]
    int64_t wp, c;
    const float* wt;  // [blocks][taps][nb], zero past out_c
    const float* bias;  // [blocks * nb], zero past out_c (and all zero without a bias)
    const int64_t* tap_offset;  // [taps]: offset of tap t in xp from a pixel's window origin
    int64_t taps, kernel, stride;
    bool relu;
    float* out;
    int64_t out_w, out_c;
};

// Channel count and stride with a compile-time instantiation (dilation 1); 0 = the generic tiles.
template <int C, int S>
struct Geometry {
    static constexpr int kC = C, kS = S;
};

#if defined(__x86_64__) || defined(_M_X64)
// The tiles (float_conv_tile.h) are compiled once per ISA path: each namespace defines the vector
// type's operations `I` and the function attribute SEGK_FN (its target), then includes them.
namespace avx512 {
#define SEGK_FN __attribute__((target("avx512f,fma"))) inline
// relu(a) = max(0, a) keeps a when it is NaN or -0.0 (the second operand wins), as std::max(a, 0.0f).
struct I {
    using V = __m512;
    static constexpr int kLanes = 16, kVectors = 2, kPixels = 12;
    SEGK_FN static V zero() { return _mm512_set1_ps(0.0f); }
    SEGK_FN static V load(const float* p) { return _mm512_loadu_ps(p); }
    SEGK_FN static V set1(float x) { return _mm512_set1_ps(x); }
    SEGK_FN static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    SEGK_FN static V add(V a, V b) { return _mm512_add_ps(a, b); }
    SEGK_FN static V relu(V a) { return _mm512_maskz_max_ps(0xffff, _mm512_set1_ps(0.0f), a); }
    SEGK_FN static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
};
#include "float_conv_tile.h"
#undef SEGK_FN
}  // namespace avx512

namespace avx2 {
#define SEGK_FN __attribute__((target("avx2,fma"))) inline
struct I {
    using V = __m256;
    static constexpr int kLanes = 8, kVectors = 2, kPixels = 6;
    SEGK_FN static V zero() { return _mm256_setzero_ps(); }
    SEGK_FN static V load(const float* p) { return _mm256_loadu_ps(p); }
    SEGK_FN static V set1(float x) { return _mm256_set1_ps(x); }
    SEGK_FN static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    SEGK_FN static V add(V a, V b) { return _mm256_add_ps(a, b); }
    SEGK_FN static V relu(V a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
    SEGK_FN static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
};
#include "float_conv_tile.h"
#undef SEGK_FN
}  // namespace avx2
#endif

// Portable path: a tile of 4 pixels x 16 channels in plain loops, any geometry (tap-offset table).
constexpr int kScalarBlock = 16, kScalarPixels = 4;

template <int P>
void scalar_tile(const DirectConv& d, int64_t y, int64_t x0, int64_t ob) {
    constexpr int NB = kScalarBlock;
    float acc[P][NB] = {};
    const float* w = d.wt + ob * d.taps * NB;
    const int64_t pixel_step = d.stride * d.c;
    const float* base = d.xp + (y * d.stride * d.wp + x0 * d.stride) * d.c;
    for (int64_t t = 0; t < d.taps; ++t, w += NB) {
        const float* src = base + d.tap_offset[t];
        for (int p = 0; p < P; ++p) {
            const float x = src[p * pixel_step];
            for (int i = 0; i < NB; ++i) acc[p][i] += x * w[i];
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    for (int p = 0; p < P; ++p) {
        float* o = d.out + (y * d.out_w + x0 + p) * d.out_c + c0;
        for (int64_t i = 0; i < count; ++i) {
            const float v = acc[p][i] + d.bias[c0 + i];
            o[i] = d.relu ? std::max(v, 0.0f) : v;
        }
    }
}

void row_scalar(const DirectConv& d, int64_t y, int64_t ob) {
    int64_t x = 0;
    for (; x + kScalarPixels <= d.out_w; x += kScalarPixels) scalar_tile<kScalarPixels>(d, y, x, ob);
    for (; x < d.out_w; ++x) scalar_tile<1>(d, y, x, ob);
}

using RowFn = void (*)(const DirectConv&, int64_t, int64_t);

}  // namespace

void conv2d_direct(const float* x, int64_t h, int64_t w, int64_t c, const float* weight, int64_t out_c,
                   int64_t kernel, const float* bias, int64_t stride, int64_t padding, int64_t dilation, bool relu,
                   float* out) {
    const int64_t out_h = conv_out_size(h, kernel, stride, padding, dilation);
    const int64_t out_w = conv_out_size(w, kernel, stride, padding, dilation);
    const int64_t hp = h + 2 * padding, wp = w + 2 * padding;
    const int64_t taps = kernel * kernel * c;
    const double macs = static_cast<double>(out_h * out_w * out_c * taps);
    const int threads = macs < 4e6 ? 1 : get_num_threads();

    // The kernel of this ISA path and geometry, and its channel block width.
    RowFn row_fn = row_scalar;
    int64_t nb = kScalarBlock;
#if defined(__x86_64__) || defined(_M_X64)
    const std::string path = isa();
    const bool c3 = c == 3 && dilation == 1;
    if (path == "avx512") {
        nb = avx512::I::kLanes * avx512::I::kVectors;
        row_fn = c3 && stride == 2   ? &avx512::row<Geometry<3, 2>>
                 : c3 && stride == 1 ? &avx512::row<Geometry<3, 1>>
                                     : &avx512::row<Geometry<0, 0>>;
    } else if (path == "avx2") {
        nb = avx2::I::kLanes * avx2::I::kVectors;
        row_fn = c3 && stride == 2   ? &avx2::row<Geometry<3, 2>>
                 : c3 && stride == 1 ? &avx2::row<Geometry<3, 1>>
                                     : &avx2::row<Geometry<0, 0>>;
    }
#endif

    // Zero-padded copy of the input (small: C channels); only the border is zeroed.
    std::unique_ptr<float[]> xp(new float[static_cast<size_t>(hp * wp * c)]);
    const int64_t row_floats = wp * c;
    const int64_t copy_chunk = 64;  // rows per copy item
    parallel_for(threads, (hp + copy_chunk - 1) / copy_chunk, [&](int64_t item) {
        for (int64_t yy = item * copy_chunk; yy < std::min(hp, (item + 1) * copy_chunk); ++yy) {
            float* dst = xp.get() + yy * row_floats;
            if (yy < padding || yy >= padding + h) {
                std::fill(dst, dst + row_floats, 0.0f);
                continue;
            }
            std::fill(dst, dst + padding * c, 0.0f);
            std::memcpy(dst + padding * c, x + (yy - padding) * w * c, static_cast<size_t>(w * c) * sizeof(float));
            std::fill(dst + (padding + w) * c, dst + row_floats, 0.0f);
        }
    });

    // Weights [out_c, k, k, c] -> [block][tap][nb], tap = (ky * k + kx) * c + ci; bias -> [blocks * nb].
    const int64_t blocks = (out_c + nb - 1) / nb;
    std::vector<float> wt(static_cast<size_t>(blocks * taps * nb), 0.0f);
    for (int64_t o = 0; o < out_c; ++o)
        for (int64_t t = 0; t < taps; ++t)
            wt[static_cast<size_t>(((o / nb) * taps + t) * nb + o % nb)] = weight[o * taps + t];
    std::vector<float> bias_padded(static_cast<size_t>(blocks * nb), 0.0f);
    if (bias != nullptr) std::copy(bias, bias + out_c, bias_padded.begin());
    std::vector<int64_t> tap_offset(static_cast<size_t>(taps));
    for (int64_t ky = 0; ky < kernel; ++ky)
        for (int64_t kx = 0; kx < kernel; ++kx)
            for (int64_t ci = 0; ci < c; ++ci)
                tap_offset[static_cast<size_t>((ky * kernel + kx) * c + ci)] =
                    (ky * dilation * wp + kx * dilation) * c + ci;

    const DirectConv d{xp.get(), wp, c, wt.data(), bias_padded.data(), tap_offset.data(), taps, kernel, stride,
                       relu, out, out_w, out_c};
    // Block-major items: a thread walks the rows of one block (its weights stay in L1) before the next.
    parallel_for(threads, blocks * out_h, [&](int64_t item) { row_fn(d, item % out_h, item / out_h); });
}

}  // namespace segk
