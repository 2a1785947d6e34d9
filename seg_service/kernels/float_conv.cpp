// Direct float convolution for inputs with few channels: the network's RGB stem (7x7, stride 2,
// 3 -> 64 channels at 512x512 is ~0.6 G multiply-adds, the largest float op of the model).
//
// With 3 input channels an im2col matrix has only 147 columns and the GEMM's N is the output
// channel count, a shape BLAS runs far from peak, and the column buffer is 50x the input. Here each
// output pixel's channels are a few vector registers: a tile of P pixels x 32 output channels
// accumulates over the k*k*C taps, with one broadcast input value and 32 weights per tap. GCC's
// generic vectors keep the AVX-512 tile in registers (12 pixels x 2 zmm); at 2 threads it runs the
// 512x512 stem in ~9 ms against ~14 for the im2col GEMM.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"
#include "threadpool.h"


namespace segk {
namespace {

constexpr int64_t kOutBlock = 32;  // output channels per tile

struct DirectConv {
    const float* xp;  // zero-padded input [hp, wp, c]
    int64_t wp, c;
    const float* wt;  // [blocks][taps][kOutBlock], zero past out_c
    const int64_t* tap_offset;
    int64_t taps;
    const float* bias;  // [out_c] or nullptr
    bool relu;
    float* out;
    int64_t out_w, out_c, stride;
};

// Output pixels x0 .. x0 + P - 1 of row y, channel block ob; each pixel's kOutBlock channels are
// NV vectors of type V.
template <typename V, int P>
__attribute__((always_inline)) inline void direct_tile(const DirectConv& d, int64_t y, int64_t x0, int64_t ob) {
    constexpr int kLanes = sizeof(V) / sizeof(float);
    constexpr int NV = kOutBlock / kLanes;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = V{};
    const float* base = d.xp + (y * d.stride * d.wp + x0 * d.stride) * d.c;
    const int64_t pixel_step = d.stride * d.c;
    const float* w = d.wt + ob * d.taps * kOutBlock;
    for (int64_t t = 0; t < d.taps; ++t) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&wv[v], w + t * kOutBlock + v * kLanes, sizeof(V));
        const float* src = base + d.tap_offset[t];
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
            const float x = src[p * pixel_step];
            for (int v = 0; v < NV; ++v) acc[p][v] += x * wv[v];
        }
    }
    const int64_t c0 = ob * kOutBlock, count = std::min(kOutBlock, d.out_c - c0);
    for (int p = 0; p < P; ++p) {
        float tmp[kOutBlock];
        std::memcpy(tmp, acc[p], sizeof tmp);
        float* o = d.out + (y * d.out_w + x0 + p) * d.out_c + c0;
        for (int64_t i = 0; i < count; ++i) {
            const float v = tmp[i] + (d.bias != nullptr ? d.bias[c0 + i] : 0.0f);
            o[i] = d.relu ? std::max(v, 0.0f) : v;
        }
    }
}

template <typename V, int P>
__attribute__((always_inline)) inline void direct_row_body(const DirectConv& d, int64_t y, int64_t ob) {
    int64_t x = 0;
    for (; x + P <= d.out_w; x += P) direct_tile<V, P>(d, y, x, ob);
    for (; x < d.out_w; ++x) direct_tile<V, 1>(d, y, x, ob);
}

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec1 __attribute__((vector_size(4)));  // one float: the portable path's plain loops

#if defined(__x86_64__) || defined(_M_X64)
// 12 pixels x 2 zmm = 24 accumulators of the 32 registers.
__attribute__((target("avx512f,fma"))) void direct_row_avx512(const DirectConv& d, int64_t y, int64_t ob) {
    direct_row_body<vec16, 12>(d, y, ob);
}

#endif
// Other paths: plain loops. Correct everywhere, but slower than an im2col GEMM, so runtime.ops
// calls this kernel only on the AVX-512 path.
void direct_row_portable(const DirectConv& d, int64_t y, int64_t ob) { direct_row_body<vec1, 1>(d, y, ob); }

}  // namespace

void conv2d_direct(const float* x, int64_t h, int64_t w, int64_t c, const float* weight, int64_t out_c,
                   int64_t kernel, const float* bias, int64_t stride, int64_t padding, int64_t dilation, bool relu,
                   float* out) {
    const int64_t out_h = conv_out_size(h, kernel, stride, padding, dilation);
    const int64_t out_w = conv_out_size(w, kernel, stride, padding, dilation);
    const int64_t hp = h + 2 * padding, wp = w + 2 * padding;
    const int threads = get_num_threads();

    // Zero-padded copy of the input (small: C channels).
    std::vector<float> xp(static_cast<size_t>(hp * wp * c), 0.0f);
    for (int64_t yy = 0; yy < h; ++yy)
        std::memcpy(xp.data() + ((yy + padding) * wp + padding) * c, x + yy * w * c,
                    static_cast<size_t>(w * c) * sizeof(float));

    // Weights [out_c, k, k, c] -> [block][tap][kOutBlock], tap = (ky * k + kx) * c + ci.
    const int64_t taps = kernel * kernel * c;
    const int64_t blocks = (out_c + kOutBlock - 1) / kOutBlock;
    std::vector<float> wt(static_cast<size_t>(blocks * taps * kOutBlock), 0.0f);
    for (int64_t o = 0; o < out_c; ++o)
        for (int64_t t = 0; t < taps; ++t)
            wt[static_cast<size_t>(((o / kOutBlock) * taps + t) * kOutBlock + o % kOutBlock)] = weight[o * taps + t];
    std::vector<int64_t> tap_offset(static_cast<size_t>(taps));
    for (int64_t ky = 0; ky < kernel; ++ky)
        for (int64_t kx = 0; kx < kernel; ++kx)
            for (int64_t ci = 0; ci < c; ++ci)
                tap_offset[static_cast<size_t>((ky * kernel + kx) * c + ci)] =
                    (ky * dilation * wp + kx * dilation) * c + ci;

    const DirectConv d{xp.data(), wp, c, wt.data(), tap_offset.data(), taps, bias, relu, out, out_w, out_c, stride};
    auto row_fn = direct_row_portable;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa() == "avx512") row_fn = direct_row_avx512;
#endif
    const double macs = static_cast<double>(out_h * out_w * out_c * taps);
    parallel_for(macs < 4e6 ? 1 : threads, out_h * blocks, [&](int64_t item) {
        row_fn(d, item / blocks, item % blocks);
    });
}

}  // namespace segk
