// 1x1 (pointwise) float convolution of a channel concatenation: the decoder's skip projection, the
// classifier and the ASPP head's projection of its branches (the concat is never built).
//
// These convs have few output channels (2 to 128) and few pixels (80 to 5k): a numpy matmul per
// call spent more in its call and packing overhead than in the arithmetic (1-7 G MAC/s). Here a
// register tile of P pixels x NV vectors of output channels accumulates over the input channels:
// per input channel it loads the block's NV weight vectors once and, per pixel, broadcasts the
// input value into an FMA with each (as float_conv.cpp's direct conv, with the input channels as
// its taps). The parts of the concat are walked one after the other, each at its own pixel stride.
//
//   avx512: 16 lanes; NV = 1 (P = 16), 2 (P = 12) or 4 (P = 6) vectors by the output channel count.
//   avx2:   8 lanes;  NV = 1 (P = 12) or 2 (P = 6).
//   scalar: plain loops over a 4 x 16 tile (the compiler vectorises them for the baseline ISA).
//
// With at most kFewOutputs output channels (a classifier of two classes) the SIMD paths vectorise
// along the input channels instead (few_tile): per pixel and input vector one load and an FMA per
// output, then a sum across the lanes; along the output channels 14 of 16 lanes would be idle.
//
// Weights come as [in_channels, out_channels] (`weight_t`), the layout the tile reads: a block's
// weights for one input channel are contiguous. When out_channels is not a multiple of the block
// width they are copied once per call into a zero-padded [in_channels, blocks * NB] buffer.
//
// Each output is sum_c x[c] * w[c] in input-channel order from 0 (one FMA per term on the SIMD
// paths, product and sum rounded separately on the scalar path), then + bias, then ReLU: avx2 and
// avx512 agree bit for bit, and any thread count gives the same bits. The few-outputs tiles sum
// per lane, then across the lanes (8 on avx2, 16 on avx512): the same at any thread count, the
// two paths equal to float rounding.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "kernels.h"
#include "threadpool.h"

namespace segk {
namespace {

struct Pointwise {
    const float* const* parts;  // [pixels, channels[i]] each
    const int64_t* channels;
    int64_t n_parts;
    const float* wt;  // [in_channels, ldw], zero past out_c
    int64_t ldw;
    const float* bias;  // [ldw], zero past out_c
    bool relu;
    float* out;  // [pixels, out_c]
    int64_t out_c;
    const float* wo;  // few outputs only: weights [out_c, in_c], output-channel major
    int64_t in_c;
};

// Up to this many output channels (a classifier of few classes) the SIMD paths vectorise along the
// input channels (few_tile): along the output channels most lanes would compute nothing.
constexpr int64_t kFewOutputs = 4;

// Multiply-adds (pixels x input channels x output channels padded to whole blocks) per thread at
// least (threads_for): an ASPP projection of an 8x10 map (1.3 M) goes to two threads.
constexpr double kMinMacsPerThread = 1 << 17;
// About this many multiply-adds per work item (a range of pixels of one channel block).
constexpr int64_t kMacsPerItem = int64_t{1} << 18;

#if defined(__x86_64__) || defined(_M_X64)
namespace avx512 {
#define SEGK_FN __attribute__((target("avx512f,fma"))) inline
struct I {
    using V = __m512;
    static constexpr int kLanes = 16;
    SEGK_FN static V zero() { return _mm512_set1_ps(0.0f); }
    SEGK_FN static V load(const float* p) { return _mm512_loadu_ps(p); }
    SEGK_FN static V load_first(const float* p, int n) {
        return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
    }
    SEGK_FN static V set1(float x) { return _mm512_set1_ps(x); }
    SEGK_FN static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    SEGK_FN static V add(V a, V b) { return _mm512_add_ps(a, b); }
    // max(0, a) keeps a when it is NaN (the second operand wins), as std::max(a, 0.0f).
    SEGK_FN static V relu(V a) { return _mm512_maskz_max_ps(0xffff, _mm512_set1_ps(0.0f), a); }
    SEGK_FN static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
    // A tree over lane halves, quarters, pairs (_mm512_reduce_add_ps and the 512 -> 256 bit
    // extracts warn of an unset source in GCC 12's headers; the zero-masked forms do not).
    SEGK_FN static float sum(V a) {
        a = _mm512_add_ps(a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0x4E));
        a = _mm512_add_ps(a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0xB1));
        a = _mm512_add_ps(a, _mm512_maskz_permute_ps(0xFFFF, a, 0x4E));
        a = _mm512_add_ps(a, _mm512_maskz_permute_ps(0xFFFF, a, 0xB1));
        return _mm512_cvtss_f32(a);
    }
};
#include "pointwise_conv_tile.h"
#undef SEGK_FN
}  // namespace avx512

namespace avx2 {
#define SEGK_FN __attribute__((target("avx2,fma"))) inline
struct I {
    using V = __m256;
    static constexpr int kLanes = 8;
    SEGK_FN static V zero() { return _mm256_setzero_ps(); }
    SEGK_FN static V load(const float* p) { return _mm256_loadu_ps(p); }
    SEGK_FN static V load_first(const float* p, int n) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes));
    }
    SEGK_FN static V set1(float x) { return _mm256_set1_ps(x); }
    SEGK_FN static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    SEGK_FN static V add(V a, V b) { return _mm256_add_ps(a, b); }
    SEGK_FN static V relu(V a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
    SEGK_FN static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
    SEGK_FN static float sum(V a) {
        const __m128 four = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
    }
};
#include "pointwise_conv_tile.h"
#undef SEGK_FN
}  // namespace avx2
#endif

// Portable path: P pixels x 16 channels in plain loops.
constexpr int kScalarBlock = 16, kScalarPixels = 4;

template <int P>
void scalar_tile(const Pointwise& d, int64_t p0, int64_t ob) {
    constexpr int NB = kScalarBlock;
    float acc[P][NB] = {};
    const float* w = d.wt + ob * NB;
    for (int64_t part = 0; part < d.n_parts; ++part) {
        const int64_t c_part = d.channels[part];
        const float* x = d.parts[part] + p0 * c_part;
        for (int64_t c = 0; c < c_part; ++c, w += d.ldw) {
            for (int p = 0; p < P; ++p) {
                const float v = x[p * c_part + c];
                for (int i = 0; i < NB; ++i) acc[p][i] += v * w[i];
            }
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    for (int p = 0; p < P; ++p) {
        float* o = d.out + (p0 + p) * d.out_c + c0;
        for (int64_t i = 0; i < count; ++i) {
            const float v = acc[p][i] + d.bias[c0 + i];
            o[i] = d.relu ? std::max(v, 0.0f) : v;
        }
    }
}

void range_scalar(const Pointwise& d, int64_t p0, int64_t p1, int64_t ob) {
    int64_t p = p0;
    for (; p + kScalarPixels <= p1; p += kScalarPixels) scalar_tile<kScalarPixels>(d, p, ob);
    for (; p < p1; ++p) scalar_tile<1>(d, p, ob);
}

using RangeFn = void (*)(const Pointwise&, int64_t, int64_t, int64_t);

// The range function of tile family T for parts of `channels` channels each (0: different counts).
template <typename T>
RangeFn pick(int64_t channels) {
    switch (channels) {
        case 16: return &T::template range<16>;
        case 32: return &T::template range<32>;
        case 64: return &T::template range<64>;
        case 128: return &T::template range<128>;
        case 256: return &T::template range<256>;
        default: return &T::template range<0>;
    }
}

}  // namespace

void conv1x1(const float* const* parts, const int64_t* part_channels, int64_t n_parts, int64_t pixels,
             const float* weight_t, int64_t out_c, const float* bias, bool relu, float* out) {
    int64_t in_c = 0;
    for (int64_t i = 0; i < n_parts; ++i) in_c += part_channels[i];

    // The kernel of this ISA path and its block width (output channels per tile).
    RangeFn range_fn = range_scalar;
    int64_t nb = kScalarBlock;
    bool few = false;  // few_tile instead of the output-channel blocks
#if defined(__x86_64__) || defined(_M_X64)
    // Parts of one common channel count get tiles with that count built in (see tile()).
    int64_t common = part_channels[0];
    for (int64_t i = 1; i < n_parts; ++i) common = part_channels[i] == common ? common : 0;
    const std::string path = isa();
    few = out_c <= kFewOutputs && path != "scalar";
    if (path == "avx512") {
        constexpr int64_t L = avx512::I::kLanes;
        nb = out_c <= L ? L : out_c <= 2 * L ? 2 * L : 4 * L;
        range_fn = nb == L       ? pick<avx512::Tiles<1, 16>>(common)
                   : nb == 2 * L ? pick<avx512::Tiles<2, 12>>(common)
                                 : pick<avx512::Tiles<4, 6>>(common);
        if (few) {
            const RangeFn by_outputs[] = {&avx512::few_range<1, 4>, &avx512::few_range<2, 4>,
                                          &avx512::few_range<3, 4>, &avx512::few_range<4, 4>};
            range_fn = by_outputs[out_c - 1];
        }
    } else if (path == "avx2") {
        constexpr int64_t L = avx2::I::kLanes;
        nb = out_c <= L ? L : 2 * L;
        range_fn = nb == L ? pick<avx2::Tiles<1, 12>>(common) : pick<avx2::Tiles<2, 6>>(common);
        if (few) {
            const RangeFn by_outputs[] = {&avx2::few_range<1, 4>, &avx2::few_range<2, 4>, &avx2::few_range<3, 2>,
                                          &avx2::few_range<4, 2>};
            range_fn = by_outputs[out_c - 1];
        }
    }
    if (few) nb = out_c;  // one block of all the outputs
#endif
    const int64_t blocks = (out_c + nb - 1) / nb;
    const int64_t ldw = blocks * nb;

    // Weights and bias zero-padded to whole blocks, unless they already are.
    std::vector<float> padded_weights, padded_bias(static_cast<size_t>(ldw), 0.0f);
    const float* wt = weight_t;
    if (ldw != out_c) {
        padded_weights.assign(static_cast<size_t>(in_c * ldw), 0.0f);
        for (int64_t c = 0; c < in_c; ++c)
            std::copy(weight_t + c * out_c, weight_t + (c + 1) * out_c, padded_weights.begin() + c * ldw);
        wt = padded_weights.data();
    }
    if (bias != nullptr) std::copy(bias, bias + out_c, padded_bias.begin());

    // The few-outputs tiles read the weights output-channel major.
    std::vector<float> weights_by_output;
    if (few) {
        weights_by_output.resize(static_cast<size_t>(out_c * in_c));
        for (int64_t c = 0; c < in_c; ++c)
            for (int64_t o = 0; o < out_c; ++o) weights_by_output[o * in_c + c] = weight_t[c * out_c + o];
    }
    const Pointwise d{parts, part_channels, n_parts, wt, ldw, padded_bias.data(), relu, out, out_c,
                      weights_by_output.data(), in_c};
    // Work in multiply-adds over whole blocks (the lanes a tile computes), per pixel and in all.
    const int64_t macs_per_pixel = std::max<int64_t>(1, in_c * nb);
    const int threads = threads_for(static_cast<double>(pixels * in_c * ldw), kMinMacsPerThread, get_num_threads());
    // Items: ranges of pixels of one channel block, block-major (a thread keeps one block's weights
    // in L1); at least a few items per thread so that a helper that starts late costs little.
    int64_t item_pixels = std::max<int64_t>(16, kMacsPerItem / macs_per_pixel);
    if (threads > 1) item_pixels = std::min(item_pixels, std::max<int64_t>(16, pixels / (4 * threads)));
    const int64_t ranges = (pixels + item_pixels - 1) / item_pixels;
    parallel_for(threads, ranges * blocks, [&](int64_t item) {
        const int64_t ob = item / ranges, p0 = (item % ranges) * item_pixels;
        range_fn(d, p0, std::min(pixels, p0 + item_pixels), ob);
    });
}

}  // namespace segk
