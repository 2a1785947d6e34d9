// AVX-512 path (F + BW + VL + VPOPCNTDQ): broadcast one activation word, XOR it against 8 output
// channels' weight words per zmm, VPOPCNTQ, add. A register tile of 6 pixels x 32 channels keeps
// 24 accumulators + 4 weight vectors + 1 broadcast in the 32 zmm registers.
#if defined(__x86_64__) || defined(_M_X64)

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*); not our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "bitpack.h"
#include "conv_job.h"

#define SEGK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,fma")))

namespace segk {
namespace {

constexpr int64_t kBlock = 32;  // output channels per weight block (4 zmm of 8 x u64)
constexpr int kVecs = 4;
constexpr int kPixels = 6;

// Epilogue of one pixel's full block of 32 channels straight from registers (the generic
// store_dots handles the partial last block).
SEGK_AVX512 inline void store_full_block(const ConvJob& job, int64_t p, int64_t c0, const __m256i* dots) {
    const int64_t at = p * job.out_c + c0;
    if (job.out_int != nullptr) {
        for (int v = 0; v < kVecs; ++v)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(job.out_int + at + 8 * v), dots[v]);
        return;
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int v = 0; v < kVecs; ++v) {
        __m256 y = _mm256_cvtepi32_ps(dots[v]);
        if (job.relu_before) y = _mm256_max_ps(y, zero);
        y = _mm256_fmadd_ps(_mm256_loadu_ps(job.mul + c0 + 8 * v), y, _mm256_loadu_ps(job.bias + c0 + 8 * v));
        if (job.residual != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(job.residual + at + 8 * v));
        if (job.relu_after) y = _mm256_max_ps(y, zero);
        _mm256_storeu_ps(job.out_f + at + 8 * v, y);
    }
}

template <int P>
SEGK_AVX512 inline void tile_avx512(const ConvJob& job, int64_t cb, int64_t p0, PixelWalker& pixels) {
    const uint64_t* a[P];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        a[j] = job.in + pixels.base();
        pixels.next();
    }
    const uint64_t* w = job.wblk + cb * job.steps * kBlock;
    const int64_t* offs = job.step_offset;

    __m512i acc[P][kVecs];
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < kVecs; ++v) acc[j][v] = _mm512_setzero_si512();

    for (int64_t s = 0; s < job.steps; ++s) {
        const int64_t off = offs[s];
        const uint64_t* ws = w + s * kBlock;
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

    const int64_t c0 = cb * kBlock;
    const int64_t count = std::min(kBlock, job.out_c - c0);
    const __m512i n = _mm512_set1_epi64(job.n);
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        __m256i dots[kVecs];
#pragma GCC unroll 4
        for (int v = 0; v < kVecs; ++v)
            dots[v] = _mm512_cvtepi64_epi32(_mm512_sub_epi64(n, _mm512_slli_epi64(acc[j][v], 1)));
        if (count == kBlock) {
            store_full_block(job, p0 + j, c0, dots);
        } else {
            alignas(64) int32_t tmp[kBlock];
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * v), dots[v]);
            store_dots(job, p0 + j, c0, count, tmp);
        }
    }
}

SEGK_AVX512 void conv_tile_avx512(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    int64_t p = p_begin;
    PixelWalker pixels(job, p_begin);
    for (; p + kPixels <= p_end; p += kPixels) tile_avx512<kPixels>(job, cb, p, pixels);
    switch (p_end - p) {
        case 5: tile_avx512<5>(job, cb, p, pixels); break;
        case 4: tile_avx512<4>(job, cb, p, pixels); break;
        case 3: tile_avx512<3>(job, cb, p, pixels); break;
        case 2: tile_avx512<2>(job, cb, p, pixels); break;
        case 1: tile_avx512<1>(job, cb, p, pixels); break;
        default: break;
    }
}

// 16 floats per compare; the last partial group uses a masked load (masked-off lanes read as 0.0,
// which packs as bit 0, so unused high bits stay 0).
SEGK_AVX512 void pack_pixels_avx512(const float* src, int64_t count, int64_t channels, int64_t src_stride,
                                    uint64_t* dst, int64_t dst_stride) {
    const __m512 zero = _mm512_setzero_ps();
    const int64_t words = words_for(channels);
    for (int64_t i = 0; i < count; ++i) {
        const float* x = src + i * src_stride;
        uint64_t* out = dst + i * dst_stride;
        for (int64_t wd = 0; wd < words; ++wd) {
            uint64_t word = 0;
            for (int g = 0; g < 4; ++g) {
                const int64_t base = wd * 64 + g * 16;
                if (base >= channels) break;
                const int64_t left = channels - base;
                const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                               : static_cast<__mmask16>((1u << left) - 1u);
                const __m512 v = _mm512_maskz_loadu_ps(m, x + base);
                const __mmask16 neg = _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ);
                word |= static_cast<uint64_t>(neg) << (16 * g);
            }
            out[wd] = word;
        }
    }
}

}  // namespace

const IsaKernels kAvx512Kernels = {"avx512", kBlock, false, conv_tile_avx512, pack_pixels_avx512};

}  // namespace segk

#endif  // x86-64
