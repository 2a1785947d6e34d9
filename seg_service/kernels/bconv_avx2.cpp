// AVX2 path: no vector popcount instruction, so popcount each byte with a nibble lookup (VPSHUFB).
// popcount(a ^ w) per byte = lut[(a ^ w) & 0xf] + lut[((a ^ w) >> 4) & 0xf], and the nibbles of
// a ^ w are the XOR of the nibbles of a and w: weights and input words come pre-split into
// low/high nibbles (the driver splits the input once per call), so a step broadcasts two words. Byte counts add up for
// up to 31 steps (<= 8 per byte per step, so at most 248), then VPSADBW folds them into 64-bit lane
// totals. Tile ("lut"): 4 pixels x 8 channels, 8 byte counters; a step's 4 weight vectors (8
// channels' low and high nibbles) are loaded into registers once and serve the 4 pixels, so a step
// loads 12 vectors for 32 pixel-channels (the previous 2 pixels x 16 channels tile read each weight
// vector from L1 once per pixel: 20 loads for as many). A channel block of 16 runs as two halves.
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

#include <limits>

#include "bitpack.h"
#include "conv_job.h"
#include "isa_dispatch.h"

#define SEGK_AVX2 __attribute__((target("avx2,fma,popcnt")))

namespace segk {
namespace {

constexpr int64_t kBlock = 16;  // output channels per weight block (4 ymm of 4 x u64)
constexpr int kVecs = 4;
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

// Steps [s0, s1) of the mix tile (at most kFlushSteps: byte counters) into `acc`, and with kMix the
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
            store_dots<true>(job, p0 + j, c0, count, tmp);
        }
    }
}

// --- "lut": tiles of 4 pixels x 8 channels ---
constexpr int kLutPixels = 4;

// The epilogue's loop-invariant job fields, copied out of the job once per pixel range: read
// through the job reference after each output store, the compiler reloaded them (a store to a
// float* may alias the job) and spilled the job pointer.
struct LutOutputs {
    const int32_t* n_channel;
    int32_t* out_int;
    float* out_f;
    const float* mul;
    const float* bias;
    const float* residual;
    uint64_t* out_bits;
    int64_t out_c, out_words;
    bool relu_before, relu_after;
    explicit LutOutputs(const ConvJob& job)
        : n_channel(job.n_channel), out_int(job.out_int), out_f(job.out_f), mul(job.mul), bias(job.bias),
          residual(job.residual), out_bits(job.out_bits), out_c(job.out_c), out_words(job.out_words),
          relu_before(job.relu_before), relu_after(job.relu_after) {}
};

// Pixels p0 .. p0 + P - 1, channels c .. c + 7 (`count` of them real), from the 64-bit lane totals
// of each pixel's two counter vectors (sums[j][0]: channels c .. c + 3, sums[j][1]: c + 4 .. c + 7):
// s0 | s1 << 32 holds the counts as 32-bit lanes in the order c, c + 4, c + 1, c + 5, ...; one VPERMD
// puts them in channel order. The epilogue runs stage by stage over the tile's pixels, each optional
// stage tested once per tile rather than once per pixel.
template <int P>
SEGK_AVX2 SEGK_ALWAYS_INLINE void lut_finish(const ConvJob& job, const LutOutputs& o, int64_t p0, int64_t c,
                                              int64_t count, const __m256i (&sums)[P][2]) {
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i n = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.n_channel + c));
    __m256i dots[P];
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
        const __m256i counts =
            _mm256_permutevar8x32_epi32(_mm256_or_si256(sums[j][0], _mm256_slli_epi64(sums[j][1], 32)), order);
        dots[j] = _mm256_sub_epi32(n, _mm256_add_epi32(counts, counts));
    }
    if (count < 8) {
        alignas(32) int32_t tmp[8];
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), dots[j]);
            store_dots<true>(job, p0 + j, c, count, tmp);
        }
        return;
    }
    const int64_t at = p0 * o.out_c + c;
    if (o.out_int != nullptr) {
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.out_int + at + j * o.out_c), dots[j]);
        return;
    }
    // relu_before as a floor under the (integer, so never NaN) dots: 0, or -inf for none.
    const __m256 zero = _mm256_setzero_ps();
    const __m256 floor = o.relu_before ? zero : _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256 mul = _mm256_loadu_ps(o.mul + c), bias = _mm256_loadu_ps(o.bias + c);
    __m256 y[P];
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) y[j] = _mm256_fmadd_ps(mul, _mm256_max_ps(_mm256_cvtepi32_ps(dots[j]), floor), bias);
    if (o.residual != nullptr) {
        const float* r = o.residual + at;
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) y[j] = _mm256_add_ps(y[j], _mm256_loadu_ps(r + j * o.out_c));
    }
    if (o.relu_after) {
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) y[j] = _mm256_max_ps(y[j], zero);
    }
    float* out = o.out_f + at;
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) _mm256_storeu_ps(out + j * o.out_c, y[j]);
    if (o.out_bits != nullptr) {
        uint8_t* bits = reinterpret_cast<uint8_t*>(o.out_bits + p0 * o.out_words) + c / 8;
        const int64_t stride = 8 * o.out_words;
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j)
            bits[j * stride] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(y[j], zero, _CMP_LT_OQ)));
    }
}

// One pixel's step of the 4-pixel tile: broadcast its two nibble words, XOR with the 8 channels'
// low-nibble (w0, w1) and high-nibble (w2, w3) weight vectors held in registers, look up, add into
// the pixel's 2 byte counters. 8 counters + 4 weights + the table + 3 scratch = 16 ymm.
#define SEGK_LUT_LOOKUP(w, b, c)                                                                   \
    "vpxor %[" w "], %%ymm" b ", %%ymm15\n\t"                                                       \
    "vpshufb %%ymm15, %[lut], %%ymm15\n\t"                                                         \
    "vpaddb %%ymm15, %[" c "], %[" c "]\n\t"
#define SEGK_LUT_PIXEL(j, c0, c1)                                                                  \
    "vpbroadcastq (%[a" j "],%[off],8), %%ymm13\n\t"                                                \
    "vpbroadcastq 8(%[a" j "],%[off],8), %%ymm14\n\t" SEGK_LUT_LOOKUP("w0", "13", c0)             \
        SEGK_LUT_LOOKUP("w2", "14", c0) SEGK_LUT_LOOKUP("w1", "13", c1) SEGK_LUT_LOOKUP("w3", "14", c1)

// Steps [s0, s1) (at most kFlushSteps) of P pixels' channels c .. c + 7 into byte counters. `w`:
// the block's weights at the low nibbles of channel c (a step's 8 channels: w[0 .. 7] low nibbles,
// w[16 .. 23] high nibbles; steps 2 * kBlock words apart).
template <int P, bool kIndexed>
SEGK_AVX2 SEGK_ALWAYS_INLINE void lut_steps(const ConvJob& job, const uint64_t* const* a, const uint64_t* w,
                                             int64_t s0, int64_t s1, __m256i (&acc)[P][2]) {
    const int64_t wstep = 2 * kBlock;
    const int64_t* step_weight = job.step_weight;
    const int64_t* offs = job.step_offset;
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    for (int64_t s = s0; s < s1; ++s) {
        const int64_t off = offs[s];
        const __m256i* ws = reinterpret_cast<const __m256i*>(w + (kIndexed ? step_weight[s] : s) * wstep);
        const __m256i w0 = _mm256_load_si256(ws), w1 = _mm256_load_si256(ws + 1);
        const __m256i w2 = _mm256_load_si256(ws + 4), w3 = _mm256_load_si256(ws + 5);
        if constexpr (P == kLutPixels) {
            // In asm: the compiler does not keep 16 ymm live without spilling some to the stack. It
            // reads the input words a[j][off], a[j][off + 1], which nothing writes during a conv
            // (more "m" operands than asm allows would be needed to name them).
            asm(SEGK_LUT_PIXEL("0", "c0", "c1") SEGK_LUT_PIXEL("1", "c2", "c3") SEGK_LUT_PIXEL("2", "c4", "c5")
                    SEGK_LUT_PIXEL("3", "c6", "c7")
                : [c0] "+x"(acc[0][0]), [c1] "+x"(acc[0][1]), [c2] "+x"(acc[1][0]), [c3] "+x"(acc[1][1]),
                  [c4] "+x"(acc[2][0]), [c5] "+x"(acc[2][1]), [c6] "+x"(acc[3][0]), [c7] "+x"(acc[3][1])
                : [a0] "r"(a[0]), [a1] "r"(a[1]), [a2] "r"(a[2]), [a3] "r"(a[3]), [off] "r"(off), [w0] "x"(w0),
                  [w1] "x"(w1), [w2] "x"(w2), [w3] "x"(w3), [lut] "x"(lut)
                : "xmm13", "xmm14", "xmm15");
            continue;
        }
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) {
            const __m256i lo = _mm256_set1_epi64x(static_cast<long long>(a[j][off]));
            const __m256i hi = _mm256_set1_epi64x(static_cast<long long>(a[j][off + 1]));
            acc[j][0] = _mm256_add_epi8(acc[j][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(lo, w0)));
            acc[j][0] = _mm256_add_epi8(acc[j][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi, w2)));
            acc[j][1] = _mm256_add_epi8(acc[j][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(lo, w1)));
            acc[j][1] = _mm256_add_epi8(acc[j][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi, w3)));
        }
    }
}

// P pixels (their first taps' words at a[j]) x channels c .. c + 7 of block cb, through the epilogue.
template <int P, bool kIndexed>
SEGK_AVX2 SEGK_ALWAYS_INLINE void lut_tile(const ConvJob& job, const LutOutputs& o, const uint64_t* const* a,
                                            const uint64_t* w, int64_t p0, int64_t c, int64_t count) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i sums[P][2];
    if (job.steps <= kFlushSteps) {
        __m256i acc[P][2];
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) acc[j][0] = acc[j][1] = zero;
        lut_steps<P, kIndexed>(job, a, w, 0, job.steps, acc);
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) {
            sums[j][0] = _mm256_sad_epu8(acc[j][0], zero);
            sums[j][1] = _mm256_sad_epu8(acc[j][1], zero);
        }
    } else {
        alignas(32) __m256i total[P][2];  // in memory, as in tile_avx2
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) total[j][0] = total[j][1] = zero;
        for (int64_t s0 = 0; s0 < job.steps; s0 += kFlushSteps) {
            const int64_t s1 = std::min(job.steps, s0 + kFlushSteps);
            __m256i acc[P][2];
#pragma GCC unroll 4
            for (int j = 0; j < P; ++j) acc[j][0] = acc[j][1] = zero;
            lut_steps<P, kIndexed>(job, a, w, s0, s1, acc);
#pragma GCC unroll 4
            for (int j = 0; j < P; ++j) {
                total[j][0] = _mm256_add_epi64(total[j][0], _mm256_sad_epu8(acc[j][0], zero));
                total[j][1] = _mm256_add_epi64(total[j][1], _mm256_sad_epu8(acc[j][1], zero));
            }
            asm volatile("" : : "r"(&total[0][0]) : "memory");
        }
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j) {
            sums[j][0] = total[j][0];
            sums[j][1] = total[j][1];
        }
    }
    lut_finish<P>(job, o, p0, c, count, sums);
}

template <int P, bool kIndexed>
SEGK_AVX2 SEGK_ALWAYS_INLINE void lut_pixels(const ConvJob& job, const LutOutputs& o, const uint64_t* w,
                                              int64_t c0, int64_t count, int64_t p, PixelWalker& pixels) {
    const uint64_t* a[P];
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
        a[j] = job.in + pixels.base();
        pixels.next();
    }
    lut_tile<P, kIndexed>(job, o, a, w, p, c0, std::min<int64_t>(8, count));
    if (count > 8) lut_tile<P, kIndexed>(job, o, a, w + 8, p, c0 + 8, count - 8);
}

template <bool kIndexed>
SEGK_AVX2 void lut_range(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    const LutOutputs o(job);
    const int64_t c0 = cb * kBlock;
    const int64_t count = std::min(kBlock, job.out_c - c0);
    const uint64_t* w = job.wblk + cb * job.wblk_steps * 2 * kBlock;
    PixelWalker pixels(job, p_begin);
    int64_t p = p_begin;
    for (; p + kLutPixels <= p_end; p += kLutPixels) lut_pixels<kLutPixels, kIndexed>(job, o, w, c0, count, p, pixels);
    switch (p_end - p) {
        case 3: lut_pixels<3, kIndexed>(job, o, w, c0, count, p, pixels); break;
        case 2: lut_pixels<2, kIndexed>(job, o, w, c0, count, p, pixels); break;
        case 1: lut_pixels<1, kIndexed>(job, o, w, c0, count, p, pixels); break;
        default: break;
    }
}

// kMix: 1 = "mix1" (1-pixel tiles, channels 8 .. 15 by POPCNT), 2 = "mix2" (2-pixel tiles, the
// second pixel's channels 8 .. 15 by POPCNT).
template <bool kIndexed, int kMix>
SEGK_AVX2 void tile_range_avx2(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    static_assert(kMix == 1 || kMix == 2, "the lut method runs lut_range");
    if (job.out_c - cb * kBlock <= 8) {  // no channels 8 .. 15 in this block
        lut_range<kIndexed>(job, cb, p_begin, p_end);
        return;
    }
    constexpr int P = kMix == 1 ? 1 : 2;
    int64_t p = p_begin;
    PixelWalker pixels(job, p_begin);
    if (job.steps <= kFlushSteps) {
        for (; p + P <= p_end; p += P) tile_avx2<P, kIndexed, true, true>(job, cb, p, pixels);
        if (p < p_end) tile_avx2<1, kIndexed, true, true>(job, cb, p, pixels);
        return;
    }
    for (; p + P <= p_end; p += P) tile_avx2<P, kIndexed, true, false>(job, cb, p, pixels);
    if (p < p_end) tile_avx2<1, kIndexed, true, false>(job, cb, p, pixels);
}

template <int kMix>
SEGK_AVX2 void conv_tile_avx2(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    if constexpr (kMix == 0) {
        if (job.step_weight != nullptr)
            lut_range<true>(job, cb, p_begin, p_end);
        else
            lut_range<false>(job, cb, p_begin, p_end);
    } else {
        if (job.step_weight != nullptr)
            tile_range_avx2<true, kMix>(job, cb, p_begin, p_end);
        else
            tile_range_avx2<false, kMix>(job, cb, p_begin, p_end);
    }
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
