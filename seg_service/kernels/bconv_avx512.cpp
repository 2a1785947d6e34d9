// AVX-512 path (F + BW + VL + VPOPCNTDQ): broadcast one activation word, XOR it against 8 output
// channels' weight words per zmm, VPOPCNTQ, add. A register tile of 6 pixels x 32 channels keeps
// 24 accumulators + 4 weight vectors + 1 broadcast in the 32 zmm registers. The weights are
// pair-interleaved (conv_job.h) so that the epilogue works on 16 channels per zmm.
#if defined(__x86_64__) || defined(_M_X64)

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); not our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "bitpack.h"
#include "conv_job.h"

#define SEGK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,fma")))

namespace segk {
namespace {

constexpr int64_t kBlock = 32;  // output channels per weight block (4 zmm of 8 x u64)
constexpr int kVecs = 4;
constexpr int kPixels = 6;

// Output transform of a finished tile, straight from the accumulators. The weight lanes are
// pair-interleaved (conv_job.h), so for each group g of 16 channels acc[2g] holds the even and
// acc[2g + 1] the odd channels' 64-bit popcounts: OR-ing the second, shifted up 32 bits, into the first
// gives 16 32-bit counts in channel order. dot = n - 2 * count (exact integers), then the float
// epilogue mul * pre(dot) + bias (+ residual), ReLUs, and a (masked, for a partial last block) store.
template <int P>
SEGK_AVX512 inline void store_tile(const ConvJob& job, int64_t cb, int64_t p0, const __m512i (&acc)[P][kVecs]) {
    constexpr int kGroups = kVecs / 2;
    const int64_t c0 = cb * kBlock;
    const int64_t count = std::min(kBlock, job.out_c - c0);
    __mmask16 mask[kGroups];
#pragma GCC unroll 2
    for (int g = 0; g < kGroups; ++g) {
        const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, count - 16 * g));
        mask[g] = static_cast<__mmask16>((1u << left) - 1u);
    }
    __m512i n[kGroups];
#pragma GCC unroll 2
    for (int g = 0; g < kGroups; ++g) n[g] = _mm512_loadu_si512(job.n_channel + c0 + 16 * g);
    if (job.out_int != nullptr) {
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j) {
            int32_t* o = job.out_int + (p0 + j) * job.out_c + c0;
#pragma GCC unroll 2
            for (int g = 0; g < kGroups; ++g) {
                const __m512i counts = _mm512_or_si512(acc[j][2 * g], _mm512_slli_epi64(acc[j][2 * g + 1], 32));
                const __m512i dots = _mm512_sub_epi32(n[g], _mm512_add_epi32(counts, counts));
                _mm512_mask_storeu_epi32(o + 16 * g, mask[g], dots);
            }
        }
        return;
    }
    __m512 mul[kGroups], bias[kGroups];
#pragma GCC unroll 2
    for (int g = 0; g < kGroups; ++g) {
        mul[g] = _mm512_maskz_loadu_ps(mask[g], job.mul + c0 + 16 * g);
        bias[g] = _mm512_maskz_loadu_ps(mask[g], job.bias + c0 + 16 * g);
    }
    const __m512 zero = _mm512_setzero_ps();
    const bool relu_before = job.relu_before, relu_after = job.relu_after;
    const float* residual = job.residual;
    float* out = job.out_f;
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        const int64_t at = (p0 + j) * job.out_c + c0;
#pragma GCC unroll 2
        for (int g = 0; g < kGroups; ++g) {
            const __m512i counts = _mm512_or_si512(acc[j][2 * g], _mm512_slli_epi64(acc[j][2 * g + 1], 32));
            __m512 y = _mm512_cvtepi32_ps(_mm512_sub_epi32(n[g], _mm512_add_epi32(counts, counts)));
            if (relu_before) y = _mm512_max_ps(y, zero);
            y = _mm512_fmadd_ps(mul[g], y, bias[g]);
            if (residual != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask[g], residual + at + 16 * g));
            if (relu_after) y = _mm512_max_ps(y, zero);
            _mm512_mask_storeu_ps(out + at + 16 * g, mask[g], y);
            if (job.out_bits != nullptr) {
                const __mmask16 sign = _mm512_mask_cmp_ps_mask(mask[g], y, zero, _CMP_LT_OQ);
                const uint16_t bits = static_cast<uint16_t>(sign);
                std::memcpy(sign_byte(job, p0 + j, c0 + 16 * g), &bits, sizeof bits);
            }
        }
    }
}

// kIndexed: the job leaves out taps on the padding (step_weight maps its steps to weight steps).
template <int P, bool kIndexed>
SEGK_AVX512 inline void tile_avx512(const ConvJob& job, int64_t cb, int64_t p0, PixelWalker& pixels) {
    const uint64_t* a[P];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        a[j] = job.in + pixels.base();
        pixels.next();
    }
    const uint64_t* w = job.wblk + cb * job.wblk_steps * kBlock;
    const int64_t* step_weight = job.step_weight;
    const int64_t* offs = job.step_offset;

    __m512i acc[P][kVecs];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < kVecs; ++v) acc[j][v] = _mm512_setzero_si512();

    for (int64_t s = 0; s < job.steps; ++s) {
        const int64_t off = offs[s];
        const uint64_t* ws = w + (kIndexed ? step_weight[s] : s) * kBlock;
        __m512i wv[kVecs];
#pragma GCC unroll 4
        for (int v = 0; v < kVecs; ++v) wv[v] = _mm512_load_si512(ws + 8 * v);
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j) {
            const __m512i av = _mm512_set1_epi64(static_cast<long long>(a[j][off]));
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v)
                acc[j][v] = _mm512_add_epi64(acc[j][v], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[v])));
        }
    }

    store_tile<P>(job, cb, p0, acc);
}

template <bool kIndexed>
SEGK_AVX512 void tile_range_avx512(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    int64_t p = p_begin;
    PixelWalker pixels(job, p_begin);
    for (; p + kPixels <= p_end; p += kPixels) tile_avx512<kPixels, kIndexed>(job, cb, p, pixels);
    switch (p_end - p) {
        case 5: tile_avx512<5, kIndexed>(job, cb, p, pixels); break;
        case 4: tile_avx512<4, kIndexed>(job, cb, p, pixels); break;
        case 3: tile_avx512<3, kIndexed>(job, cb, p, pixels); break;
        case 2: tile_avx512<2, kIndexed>(job, cb, p, pixels); break;
        case 1: tile_avx512<1, kIndexed>(job, cb, p, pixels); break;
        default: break;
    }
}

SEGK_AVX512 void conv_tile_avx512(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    if (job.step_weight != nullptr)
        tile_range_avx512<true>(job, cb, p_begin, p_end);
    else
        tile_range_avx512<false>(job, cb, p_begin, p_end);
}

// 16 floats per compare. Full words: four compares whose masks are concatenated (KUNPCK) into the
// 64-bit word. The last partial word uses masked loads (masked-off lanes read as 0.0, which packs
// as bit 0, so unused high bits stay 0).
SEGK_AVX512 inline uint64_t pack_full_word(const float* x, __m512 zero) {
    const __mmask16 m0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x), zero, _CMP_LT_OQ);
    const __mmask16 m1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 16), zero, _CMP_LT_OQ);
    const __mmask16 m2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 32), zero, _CMP_LT_OQ);
    const __mmask16 m3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 48), zero, _CMP_LT_OQ);
    const __mmask32 low = _mm512_kunpackw(static_cast<__mmask32>(m1), static_cast<__mmask32>(m0));
    const __mmask32 high = _mm512_kunpackw(static_cast<__mmask32>(m3), static_cast<__mmask32>(m2));
    return _cvtmask64_u64(_mm512_kunpackd(static_cast<__mmask64>(high), static_cast<__mmask64>(low)));
}

SEGK_AVX512 void pack_pixels_avx512(const float* src, int64_t count, int64_t channels, int64_t src_stride,
                                    uint64_t* dst, int64_t dst_stride) {
    const __m512 zero = _mm512_setzero_ps();
    const int64_t full = channels / 64;
    const int64_t words = words_for(channels);
    for (int64_t i = 0; i < count; ++i) {
        const float* x = src + i * src_stride;
        uint64_t* out = dst + i * dst_stride;
        for (int64_t wd = 0; wd < full; ++wd) out[wd] = pack_full_word(x + wd * 64, zero);
        if (full == words) continue;
        uint64_t word = 0;
        for (int g = 0; g < 4; ++g) {
            const int64_t base = full * 64 + g * 16;
            if (base >= channels) break;
            const int64_t left = channels - base;
            const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
            const __m512 v = _mm512_maskz_loadu_ps(m, x + base);
            word |= static_cast<uint64_t>(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ)) << (16 * g);
        }
        out[full] = word;
    }
}

}  // namespace

const IsaKernels kAvx512Kernels = {"avx512", kBlock, false, true, conv_tile_avx512, pack_pixels_avx512,
                                  "vpopcntq", nullptr};

}  // namespace segk

#endif  // x86-64
