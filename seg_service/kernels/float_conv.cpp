// Direct float convolution for inputs with few channels: the network's RGB stem (7x7, stride 2,
// 3 -> 32 channels at 256x320 is ~0.1 G multiply-adds, the largest float op of the model).
//
// With 3 input channels an im2col matrix has only 147 columns and the GEMM's N is the output
// channel count, a shape BLAS runs far from peak, and the column buffer is 50x the input. Here each
// output pixel's channels are a few vector registers: a register tile of P output pixels (along a
// row) x one block of NB output channels accumulates over the k*k*C taps; each tap loads the
// block's NB weights once (weights pre-arranged as [block][tap][NB], 64-byte aligned) and, per
// pixel, broadcasts one input value into an FMA with each weight vector.
//
//   avx512: NB = 32 (2 zmm), P <= 12 -> 24 accumulators; per tap 2 weight loads + 12 broadcasts
//           for 24 FMAs (FMA-bound: 12 cycles of FMA for 7 of loads).
//   avx2:   NB = 16 (2 ymm), P <= 6 -> 12 accumulators + 2 weights + 1 broadcast of 16 registers;
//           per tap 2 + 6 loads for 12 FMAs (12 chains in flight cover the FMA latency of 4-5).
//   scalar: the same tile in plain C++ (P <= 4 x 16 channels; the compiler vectorises it for the
//           baseline ISA), with the product rounded before the sum.
//
// The stem's geometry (3 channels, 7x7, stride 1 or 2, dilation 1) has its own instantiation with
// the channel count, kernel and stride known at compile time: one kernel row's 21 taps are then
// contiguous floats of an input row, and each pixel's window a fixed displacement further. Any
// other geometry runs the same tiles through a tap-offset table.
//
// No padded copy of the input: a tile whose windows lie inside the input reads the input itself;
// a tile that reaches the zero padding (the first and last tile of a row, and every tile of the
// first and last few rows) reads a small zero-padded patch of its windows, built on the spot. A
// row of out_w pixels is cut into the fewest tiles of at most P pixels, of widths that differ by
// at most one (160 = 6 x 12 + 8 x 11), so no pixel is computed twice; each tile runs every channel
// block while its input is in L1 (the blocks' weights, 147 x 32 floats each, stay there too).
// Threads split the output rows (one parallel loop per call: items are claimed from a counter, so
// a thread that starts late takes fewer rows).
//
// Every ISA path sums the taps in the same order (tap = (ky * k + kx) * C + c, one FMA each, from
// zero, then + bias), so the avx2 and avx512 paths agree bit for bit (and with the previous
// padded-copy kernel); the scalar path rounds the product separately.
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
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
    const float* wt;    // [blocks][taps][nb], zero past out_c
    const float* bias;  // [blocks * nb], zero past out_c (and all zero without a bias)
    int64_t c, taps, stride;
    bool relu;
    int64_t out_c;
};

// out = the tile of P pixels whose first window starts at src (rows row_step floats apart).
using TileFn = void (*)(const DirectConv& d, const float* src, int64_t row_step, const int64_t* tap_offset,
                        float* out, int64_t ob);

// One ISA path's tiles of one geometry: fns[P - 1] computes P pixels (P = 1 .. pixels) of one
// channel block of `block` channels.
struct TileSet {
    const TileFn* fns;
    int pixels, block;
};

// Channel count, stride and kernel size with a compile-time instantiation (dilation 1); kC == 0:
// the generic tiles (tap-offset table).
template <int C, int S, int K>
struct Geometry {
    static constexpr int kC = C, kS = S, kK = K;
};
using Generic = Geometry<0, 0, 0>;
using Stem2 = Geometry<3, 2, 7>;
using Stem1 = Geometry<3, 1, 7>;

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
    // The first n (1 .. kLanes - 1) floats of a.
    SEGK_FN static void store_first(float* p, V a, int64_t n) {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), a);
    }
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
    SEGK_FN static void store_first(float* p, V a, int64_t n) {
        float tmp[kLanes];
        _mm256_storeu_ps(tmp, a);
        std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(float));
    }
};
#include "float_conv_tile.h"
#undef SEGK_FN
}  // namespace avx2
#endif

// Portable path: the same tiles on single floats (4 pixels x 16 channels), the product rounded
// before the sum (no FMA contraction in ISO C++ mode).
namespace scalar {
#define SEGK_FN inline
struct I {
    using V = float;
    static constexpr int kLanes = 1, kVectors = 16, kPixels = 4;
    static V zero() { return 0.0f; }
    static V load(const float* p) { return *p; }
    static V set1(float x) { return x; }
    static V fma(V a, V b, V c) {
        const float product = a * b;
        return product + c;
    }
    static V add(V a, V b) { return a + b; }
    static V relu(V a) { return std::max(a, 0.0f); }
    static void store(float* p, V a) { *p = a; }
    static void store_first(float* p, V a, int64_t) { *p = a; }
};
#include "float_conv_tile.h"
#undef SEGK_FN
}  // namespace scalar

// The call's fixed parts: where windows start, which tiles run, the patch geometry.
struct Plan {
    const float* x;  // input [h, w, c]
    int64_t h, w, c, kernel, stride, padding, dilation;
    int64_t out_w, out_c, blocks;
    float* out;
    TileSet tiles;
    int64_t row_tiles, narrow, wider;  // a row: `row_tiles` tiles, the first `wider` of narrow + 1 pixels
    const int64_t* direct_offset;      // [taps]: tap offsets in the input (rows w * c floats apart)
    const int64_t* patch_offset;       // [taps]: tap offsets in a patch (rows patch_step floats apart)
    int64_t span;                      // (kernel - 1) * dilation + 1: a window's rows and columns
    int64_t patch_step;                // floats per patch row: the windows of the widest tile
};

// Copies the windows of the P pixels from input row iy0, column ix0 (both may lie in the padding)
// into `patch` ([span rows][patch_step floats]), zero where they leave the input.
void fill_patch(const Plan& p, int64_t iy0, int64_t ix0, int64_t pixels, float* patch) {
    const int64_t cols = (pixels - 1) * p.stride + p.span;
    const int64_t lo = std::clamp<int64_t>(-ix0, 0, cols), hi = std::clamp<int64_t>(p.w - ix0, lo, cols);
    for (int64_t r = 0; r < p.span; ++r) {
        float* dst = patch + r * p.patch_step;
        const int64_t iy = iy0 + r;
        if (iy < 0 || iy >= p.h) {
            std::fill(dst, dst + cols * p.c, 0.0f);
            continue;
        }
        std::fill(dst, dst + lo * p.c, 0.0f);
        std::memcpy(dst + lo * p.c, p.x + (iy * p.w + ix0 + lo) * p.c,
                    static_cast<size_t>((hi - lo) * p.c) * sizeof(float));
        std::fill(dst + hi * p.c, dst + cols * p.c, 0.0f);
    }
}

// Output row y, tile by tile (`patch`: scratch for the tiles that reach the padding).
void conv_row(const Plan& p, const DirectConv& d, int64_t y, std::vector<float>& patch) {
    const int64_t iy0 = y * p.stride - p.padding;
    const bool rows_inside = iy0 >= 0 && iy0 + p.span <= p.h;
    int64_t x0 = 0;
    for (int64_t i = 0; i < p.row_tiles; ++i) {
        const int64_t pixels = p.narrow + (i < p.wider ? 1 : 0);
        const int64_t ix0 = x0 * p.stride - p.padding;
        const bool inside = rows_inside && ix0 >= 0 && ix0 + (pixels - 1) * p.stride + p.span <= p.w;
        const float* src;
        int64_t row_step;
        const int64_t* offsets;
        if (inside) {
            src = p.x + (iy0 * p.w + ix0) * p.c;
            row_step = p.w * p.c;
            offsets = p.direct_offset;
        } else {
            patch.resize(static_cast<size_t>(p.span * p.patch_step));
            fill_patch(p, iy0, ix0, pixels, patch.data());
            src = patch.data();
            row_step = p.patch_step;
            offsets = p.patch_offset;
        }
        const TileFn fn = p.tiles.fns[pixels - 1];
        float* out = p.out + (y * p.out_w + x0) * p.out_c;
        for (int64_t ob = 0; ob < p.blocks; ++ob) fn(d, src, row_step, offsets, out, ob);
        x0 += pixels;
    }
}

// The tiles of the ISA path in use for this geometry.
TileSet select_tiles(int64_t c, int64_t kernel, int64_t stride, int64_t dilation) {
    const bool stem = c == 3 && kernel == 7 && dilation == 1;
#if defined(__x86_64__) || defined(_M_X64)
    const std::string path = isa();
    if (path == "avx512") {
        return stem && stride == 2   ? avx512::tile_set<Stem2>()
               : stem && stride == 1 ? avx512::tile_set<Stem1>()
                                     : avx512::tile_set<Generic>();
    }
    if (path == "avx2") {
        return stem && stride == 2   ? avx2::tile_set<Stem2>()
               : stem && stride == 1 ? avx2::tile_set<Stem1>()
                                     : avx2::tile_set<Generic>();
    }
#endif
    return stem && stride == 2 ? scalar::tile_set<Stem2>() : scalar::tile_set<Generic>();
}

struct AlignedFree {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

}  // namespace

void conv2d_direct(const float* x, int64_t h, int64_t w, int64_t c, const float* weight, int64_t out_c,
                   int64_t kernel, const float* bias, int64_t stride, int64_t padding, int64_t dilation, bool relu,
                   float* out) {
    const int64_t out_h = conv_out_size(h, kernel, stride, padding, dilation);
    const int64_t out_w = conv_out_size(w, kernel, stride, padding, dilation);
    const int64_t taps = kernel * kernel * c;
    const double macs = static_cast<double>(out_h * out_w * out_c * taps);
    const int threads = macs < 4e6 ? 1 : get_num_threads();
    const TileSet tiles = select_tiles(c, kernel, stride, dilation);
    const int64_t nb = tiles.block;

    // Weights [out_c, k, k, c] -> [block][tap][nb] (64-byte aligned: no load splits a cache line),
    // tap = (ky * k + kx) * c + ci; bias -> [blocks * nb].
    const int64_t blocks = (out_c + nb - 1) / nb;
    const size_t wt_floats = static_cast<size_t>(blocks * taps * nb);
    std::unique_ptr<float[], AlignedFree> wt(new (std::align_val_t(64)) float[wt_floats]);
    std::fill(wt.get(), wt.get() + wt_floats, 0.0f);
    for (int64_t o = 0; o < out_c; ++o)
        for (int64_t t = 0; t < taps; ++t)
            wt[static_cast<size_t>(((o / nb) * taps + t) * nb + o % nb)] = weight[o * taps + t];
    std::vector<float> bias_padded(static_cast<size_t>(blocks * nb), 0.0f);
    if (bias != nullptr) std::copy(bias, bias + out_c, bias_padded.begin());

    // A row: the fewest tiles of at most tiles.pixels pixels, of widths differing by at most one.
    const int64_t row_tiles = (out_w + tiles.pixels - 1) / tiles.pixels;
    const int64_t narrow = out_w / row_tiles, wider = out_w % row_tiles;
    const int64_t widest = narrow + (wider > 0 ? 1 : 0);
    // A patch holds the widest tile's windows: at most the padded input's size.
    const int64_t span = (kernel - 1) * dilation + 1;
    const int64_t patch_step = ((widest - 1) * stride + span) * c;
    std::vector<int64_t> direct_offset(static_cast<size_t>(taps)), patch_offset(static_cast<size_t>(taps));
    for (int64_t ky = 0; ky < kernel; ++ky)
        for (int64_t kx = 0; kx < kernel; ++kx)
            for (int64_t ci = 0; ci < c; ++ci) {
                const auto t = static_cast<size_t>((ky * kernel + kx) * c + ci);
                direct_offset[t] = ky * dilation * w * c + kx * dilation * c + ci;
                patch_offset[t] = ky * dilation * patch_step + kx * dilation * c + ci;
            }

    const DirectConv d{wt.get(), bias_padded.data(), c, taps, stride, relu, out_c};
    const Plan plan{x, h, w, c, kernel, stride, padding, dilation, out_w, out_c, blocks, out, tiles,
                    row_tiles, narrow, wider, direct_offset.data(), patch_offset.data(), span, patch_step};
    parallel_for(threads, out_h, [&](int64_t y) {
        std::vector<float> patch;  // allocated by the rows that need one (those near the border)
        conv_row(plan, d, y, patch);
    });
}

}  // namespace segk
