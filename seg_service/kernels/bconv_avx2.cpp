// AVX2 path: no vector popcount instruction, so popcount each byte with a nibble lookup (VPSHUFB).
// popcount(a ^ w) per byte = lut[(a ^ w) & 0xf] + lut[((a ^ w) >> 4) & 0xf], and the nibbles of
// a ^ w are the XOR of the nibbles of a and w: weights and input words come pre-split into
// low/high nibbles (the driver splits the input once per call), so a step broadcasts two words. Byte counts add up for
// up to 31 steps (<= 8 per byte per step, so at most 248), then VPSADBW folds them into 64-bit lane
// totals. Tile: 2 pixels x 16 channels (4 ymm): 8 byte accumulators, weights read from L1.
//
// Popcount methods ("lut" above; chosen per CPU at run time, dispatch.cpp): the vector units are
// the only ones working in "lut", while the integer units idle. "mix1" and "mix2" give the last
// pixel of the tile's channels 8 .. 15 to 64-bit POPCNT on the integer units (unsplit input and
// weight words, 8 counters in general registers) in the same loop as the vector work, so both kinds
// of units run at once: mix1 = 1-pixel tile (8 lookup + 8 POPCNT channels), mix2 = 2-pixel tile (24
// + 8). Which wins depends on the CPU's port layout (kernels.popcount_ceilings measures it; on CPUs
// with separate integer and vector pipes, e.g. AMD Zen, the POPCNT share is nearly free).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include "bitpack.h"
#include "conv_job.h"

#define SEGK_AVX2 __attribute__((target("avx2,fma,popcnt")))

namespace segk {
namespace {

constexpr int64_t kBlock = 16;  // output channels per weight block (4 ymm of 4 x u64)
constexpr int kVecs = 4;
constexpr int kPixels = 2;
constexpr int64_t kFlushSteps = 31;  // 31 * 8 = 248 <= 255

// Epilogue of one pixel's full block of 16 channels straight from registers (the generic
// store_dots handles the partial last block).
SEGK_AVX2 inline void store_full_block(const ConvJob& job, int64_t p, int64_t c0, const __m256i* dots) {
    const int64_t at = p * job.out_c + c0;
    if (job.out_int != nullptr) {
        for (int h = 0; h < kVecs / 2; ++h)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(job.out_int + at + 8 * h), dots[h]);
        return;
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int h = 0; h < kVecs / 2; ++h) {
        __m256 y = _mm256_cvtepi32_ps(dots[h]);
        if (job.relu_before) y = _mm256_max_ps(y, zero);
        y = _mm256_fmadd_ps(_mm256_loadu_ps(job.mul + c0 + 8 * h), y, _mm256_loadu_ps(job.bias + c0 + 8 * h));
        if (job.residual != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(job.residual + at + 8 * h));
        if (job.relu_after) y = _mm256_max_ps(y, zero);
        _mm256_storeu_ps(job.out_f + at + 8 * h, y);
        if (job.out_bits != nullptr)
            *sign_byte(job, p, c0 + 8 * h) = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(y, zero, _CMP_LT_OQ)));
    }
}

// One pixel's step of the 2-pixel lut tile: broadcast its two nibble words (pixel "j": operand a0
// or a1), XOR with the block's 4 low-nibble and 4 high-nibble weight vectors (operand w: 8 ymm),
// look up, add into the pixel's 4 byte counters. Counters stay in registers: 8 counters + the table
// + 4 scratch = 13 ymm.
#define SEGK_LUT_VEC(v, c)                                                                       \
    "vpxor " #v "*32(%[w]), %%ymm12, %%ymm14\n\t"                                                 \
    "vpxor 128+" #v "*32(%[w]), %%ymm13, %%ymm15\n\t"                                             \
    "vpshufb %%ymm14, %[lut], %%ymm14\n\t"                                                       \
    "vpshufb %%ymm15, %[lut], %%ymm15\n\t"                                                       \
    "vpaddb %%ymm14, %[" c "], %[" c "]\n\t"                                                      \
    "vpaddb %%ymm15, %[" c "], %[" c "]\n\t"
#define SEGK_LUT_PIXEL(j, c0, c1, c2, c3)                                                       \
    "vpbroadcastq (%[a" j "]), %%ymm12\n\t"                                                       \
    "vpbroadcastq 8(%[a" j "]), %%ymm13\n\t" SEGK_LUT_VEC(0, c0) SEGK_LUT_VEC(1, c1) SEGK_LUT_VEC(2, c2) \
        SEGK_LUT_VEC(3, c3)

// Steps [s0, s1) of the lut tile (at most kFlushSteps: byte counters) into `acc`, and with kMix the
// last pixel's channels 8 .. 15 into scalar_count.
template <int P, bool kIndexed, bool kMix>
SEGK_AVX2 inline void accumulate_steps(const ConvJob& job, const uint64_t* const* a, const uint64_t* a_raw,
                                       const uint64_t* w, const uint64_t* w_raw, int64_t s0, int64_t s1,
                                       __m256i (&acc)[P][kVecs], uint64_t* scalar_count) {
    const int64_t wstep = 2 * kBlock;
    const int64_t* step_weight = job.step_weight;
    const int64_t* offs = job.step_offset;
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        for (int64_t s = s0; s < s1; ++s) {
            const int64_t off = offs[s];
            const __m256i* ws =
                reinterpret_cast<const __m256i*>(w + (kIndexed ? step_weight[s] : s) * wstep);
            if constexpr (P == 2 && !kMix) {
                // The full tile's step in asm: GCC hoisted the broadcasts and XORs ahead and spilled
                // three of the eight byte counters to the stack (a load and a store each per step).
                asm(SEGK_LUT_PIXEL("0", "c0", "c1", "c2", "c3") SEGK_LUT_PIXEL("1", "c4", "c5", "c6", "c7")
                    : [c0] "+x"(acc[0][0]), [c1] "+x"(acc[0][1]), [c2] "+x"(acc[0][2]), [c3] "+x"(acc[0][3]),
                      [c4] "+x"(acc[P - 1][0]), [c5] "+x"(acc[P - 1][1]), [c6] "+x"(acc[P - 1][2]),
                      [c7] "+x"(acc[P - 1][3])
                    : [a0] "r"(a[0] + off), [a1] "r"(a[P - 1] + off), [w] "r"(ws), [lut] "x"(lut), "m"(*ws),
                      "m"(a[0][off]), "m"(a[P - 1][off])
                    : "xmm12", "xmm13", "xmm14", "xmm15");
                continue;
            }
#pragma GCC unroll 8
            for (int j = 0; j < P; ++j) {
                const __m256i a_lo = _mm256_set1_epi64x(static_cast<long long>(a[j][off]));
                const __m256i a_hi = _mm256_set1_epi64x(static_cast<long long>(a[j][off + 1]));
                const int vecs = kMix && j == P - 1 ? kVecs / 2 : kVecs;
#pragma GCC unroll 4
                for (int v = 0; v < vecs; ++v) {
                    const __m256i lo = _mm256_xor_si256(a_lo, _mm256_load_si256(ws + v));
                    const __m256i hi = _mm256_xor_si256(a_hi, _mm256_load_si256(ws + kVecs + v));
                    acc[j][v] = _mm256_add_epi8(acc[j][v], _mm256_shuffle_epi8(lut, lo));
                    acc[j][v] = _mm256_add_epi8(acc[j][v], _mm256_shuffle_epi8(lut, hi));
                }
            }
            if (kMix) {
                const uint64_t aw = a_raw[off >> 1];
                const uint64_t* wr = w_raw + (kIndexed ? step_weight[s] : s) * 8;
#pragma GCC unroll 8
                for (int c = 0; c < 8; ++c)
                    scalar_count[c] += static_cast<uint64_t>(_mm_popcnt_u64(aw ^ wr[c]));
            }
        }
}

// kIndexed: the job leaves out taps on the padding (step_weight maps its steps to weight steps).
// kMix: the last pixel's channels 8 .. 15 are counted with scalar POPCNT (the caller makes sure the
// block has channels past 8).
// kOneFlush: job.steps <= kFlushSteps.
template <int P, bool kIndexed, bool kMix, bool kOneFlush>
SEGK_AVX2 inline void tile_avx2(const ConvJob& job, int64_t cb, int64_t p0, PixelWalker& pixels) {
    const uint64_t* a[P];
    const uint64_t* a_raw = nullptr;  // kMix: the last pixel's unsplit words
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        a[j] = job.in + pixels.base();
        if (kMix && j == P - 1) a_raw = job.in_raw + pixels.base() / 2;
        pixels.next();
    }
    const uint64_t* w_raw = kMix ? job.wraw + (2 * cb + 1) * job.wblk_steps * 8 : nullptr;
    uint64_t scalar_count[8] = {};
    const int64_t wstep = 2 * kBlock;  // low nibbles, then high nibbles
    const uint64_t* w = job.wblk + cb * job.wblk_steps * wstep;
    const __m256i zero = _mm256_setzero_si256();

    __m256i sums[P][kVecs];  // 64-bit lane totals, one lane per output channel
    if constexpr (kOneFlush) {
        // All steps fit in the byte counters (job.steps <= kFlushSteps: 3x3 convs of up to 3 words,
        // the paired-tap convs, 1x1 convs): one pass, the totals straight from registers.
        __m256i acc[P][kVecs];
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v) acc[j][v] = zero;
        accumulate_steps<P, kIndexed, kMix>(job, a, a_raw, w, w_raw, 0, job.steps, acc, scalar_count);
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v) sums[j][v] = _mm256_sad_epu8(acc[j][v], zero);
    } else {
        // Kept in memory: they change once per 31 steps, and held in registers they pushed byte
        // counters out to the stack (a load and a store per step).
        alignas(32) __m256i total[P][kVecs];
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v) total[j][v] = zero;
        for (int64_t s0 = 0; s0 < job.steps; s0 += kFlushSteps) {
            const int64_t s1 = std::min(job.steps, s0 + kFlushSteps);
            __m256i acc[P][kVecs];
#pragma GCC unroll 8
            for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
                for (int v = 0; v < kVecs; ++v) acc[j][v] = zero;
            accumulate_steps<P, kIndexed, kMix>(job, a, a_raw, w, w_raw, s0, s1, acc, scalar_count);
#pragma GCC unroll 8
            for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
                for (int v = 0; v < kVecs; ++v)
                    total[j][v] = _mm256_add_epi64(total[j][v], _mm256_sad_epu8(acc[j][v], zero));
            asm volatile("" : : "r"(&total[0][0]) : "memory");  // the totals live in memory (see above)
        }
#pragma GCC unroll 8
        for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v) sums[j][v] = total[j][v];
    }

    // dot = n - 2 * popcount; the low 32 bits of each 64-bit lane hold the whole count.
    const int64_t c0 = cb * kBlock;
    const int64_t count = std::min(kBlock, job.out_c - c0);
    const __m256i n[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(job.n_channel + c0)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(job.n_channel + c0 + 8))};
    const __m256i even_lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
#pragma GCC unroll 8
    for (int j = 0; j < P; ++j) {
        __m256i dots[kVecs / 2];  // 8 channels each
#pragma GCC unroll 2
        for (int h = 0; h < kVecs / 2; ++h) {
            __m256i counts;
            if (kMix && j == P - 1 && h == 1) {
                alignas(32) int32_t c32[8];
#pragma GCC unroll 8
                for (int c = 0; c < 8; ++c) c32[c] = static_cast<int32_t>(scalar_count[c]);
                counts = _mm256_load_si256(reinterpret_cast<const __m256i*>(c32));
            } else {
                const __m256i lo = _mm256_permutevar8x32_epi32(sums[j][2 * h], even_lanes);
                const __m256i hi = _mm256_permutevar8x32_epi32(sums[j][2 * h + 1], even_lanes);
                counts = _mm256_permute2x128_si256(lo, hi, 0x20);
            }
            dots[h] = _mm256_sub_epi32(n[h], _mm256_slli_epi32(counts, 1));
        }
        if (count == kBlock) {
            store_full_block(job, p0 + j, c0, dots);
        } else {
            alignas(32) int32_t tmp[kBlock];
#pragma GCC unroll 2
            for (int h = 0; h < kVecs / 2; ++h) _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * h), dots[h]);
            store_dots(job, p0 + j, c0, count, tmp);
        }
    }
}

// kMix: 0 = "lut" (2-pixel tiles), 1 = "mix1" (1-pixel tiles, channels 8 .. 15 by POPCNT), 2 = "mix2"
// (2-pixel tiles, the second pixel's channels 8 .. 15 by POPCNT).
template <bool kIndexed, int kMix>
SEGK_AVX2 void tile_range_avx2(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    if (kMix != 0 && job.out_c - cb * kBlock <= 8) {  // no channels 8 .. 15 in this block
        tile_range_avx2<kIndexed, 0>(job, cb, p_begin, p_end);
        return;
    }
    constexpr int P = kMix == 1 ? 1 : kPixels;
    int64_t p = p_begin;
    PixelWalker pixels(job, p_begin);
    if (job.steps <= kFlushSteps) {
        for (; p + P <= p_end; p += P) tile_avx2<P, kIndexed, kMix != 0, true>(job, cb, p, pixels);
        if (p < p_end) tile_avx2<1, kIndexed, kMix != 0, true>(job, cb, p, pixels);
        return;
    }
    for (; p + P <= p_end; p += P) tile_avx2<P, kIndexed, kMix != 0, false>(job, cb, p, pixels);
    if (p < p_end) tile_avx2<1, kIndexed, kMix != 0, false>(job, cb, p, pixels);
}

template <int kMix>
SEGK_AVX2 void conv_tile_avx2(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    if (job.step_weight != nullptr)
        tile_range_avx2<true, kMix>(job, cb, p_begin, p_end);
    else
        tile_range_avx2<false, kMix>(job, cb, p_begin, p_end);
}

// 8 floats per compare + VMOVMSKPS, the last word's whole groups of 8 channels included (narrow
// maps, e.g. 32 channels, have no full word: packing them bit by bit took about as long as their
// binary conv); only the last < 8 channels go bit by bit.
SEGK_AVX2 void pack_pixels_avx2(const float* src, int64_t count, int64_t channels, int64_t src_stride,
                                uint64_t* dst, int64_t dst_stride) {
    const __m256 zero = _mm256_setzero_ps();
    const int64_t full = channels / 64 * 64;
    const int64_t groups = (channels - full) / 8;  // whole groups of 8 in the last, partial word
    for (int64_t i = 0; i < count; ++i) {
        const float* x = src + i * src_stride;
        uint64_t* out = dst + i * dst_stride;
        for (int64_t base = 0; base < full; base += 64) {
            uint64_t word = 0;
            for (int g = 0; g < 8; ++g) {
                const __m256 v = _mm256_loadu_ps(x + base + 8 * g);
                const int neg = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ));
                word |= static_cast<uint64_t>(neg) << (8 * g);
            }
            out[base / 64] = word;
        }
        if (full == channels) continue;
        uint64_t word = 0;
        for (int64_t g = 0; g < groups; ++g) {
            const __m256 v = _mm256_loadu_ps(x + full + 8 * g);
            const int neg = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ));
            word |= static_cast<uint64_t>(neg) << (8 * g);
        }
        for (int64_t c = full + 8 * groups; c < channels; ++c)
            word |= static_cast<uint64_t>(x[c] < 0.0f) << (c - full);
        out[full / 64] = word;
    }
}

}  // namespace

const IsaKernels kAvx2Kernels = {"avx2", kBlock, true, false, conv_tile_avx2<0>, pack_pixels_avx2, "lut", nullptr};
const IsaKernels kAvx2Mix1Kernels = {"avx2", kBlock, true, false, conv_tile_avx2<1>, pack_pixels_avx2, "mix1",
                                     &kScalarKernels};
const IsaKernels kAvx2Mix2Kernels = {"avx2", kBlock, true, false, conv_tile_avx2<2>, pack_pixels_avx2, "mix2",
                                     &kScalarKernels};

}  // namespace segk

#endif  // x86-64
