// In-register ceilings of the ways to count bits (kernels.popcount_ceilings): each method
// runs a loop that only XORs "activation" words with "weight" words held in registers and counts the
// bits of the result, as a binary conv's inner loop does, with no memory traffic. The activation
// registers go through an empty asm statement before each use, so the compiler must treat them as
// new values (as a real kernel's broadcasts are) and cannot hoist or merge the work; it costs no
// instruction. One XOR-popcount bit = one binary MAC. Timed by this thread's CPU time (the machine
// may be shared), several repeats each, so the caller can take medians.
//
// Methods of the avx2 path (measured where that path runs: AVX2, FMA, POPCNT):
//   lut     the AVX2 microkernel's way: inputs pre-split into nibbles, per 256 bits 2 VPXOR +
//           2 VPSHUFB (16-entry table) + 2 VPADDB into byte counters, VPSADBW every 31 steps.
//           Tile as the kernel: 8 ymm counters (2 pixels x 16 channels).
//   lut8    the textbook nibble table on unsplit words: per 256 bits VPXOR, VPSRLW, 2 VPAND,
//           2 VPSHUFB, 2 VPADDB.
//   hs      Harley-Seal: carry-save adders (3 XOR/AND/OR ops per 3:2 step) over 16 XORed vectors,
//           the nibble table only for the 16s; per 256 bits about 6.2 vector ops.
//   scalar  64-bit POPCNT on the integer units: per 64 bits XOR + POPCNT + ADD.
//   mix_V+S the lut loop on V ymm counters and S scalar POPCNT words in the same loop body, so the
//           vector and integer units work at once; several ratios, among them the avx2 "mix1"
//           (2+8) and "mix2" (6+8) microkernels' steps.
// Method of the avx512 path (measured where that path runs: AVX-512 F/BW/VL/DQ + VPOPCNTDQ):
//   vpopcntq the avx512 microkernel's step: per pixel a broadcast activation XOR 4 weight zmm,
//           VPOPCNTQ, VPADDQ into 24 zmm counters (6 pixels x 32 channels).
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <time.h>
#endif

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace segk {
namespace {

#if defined(__x86_64__) || defined(_M_X64)

#define SEGK_PROBE __attribute__((target("avx2,popcnt"), noinline))
#define SEGK_PROBE_INLINE __attribute__((target("avx2,popcnt"))) inline

double thread_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// "A new value": the compiler must assume the register changed (no instruction is emitted).
#define SEGK_FRESH_V(x) asm volatile("" : "+x"(x))
#define SEGK_FRESH_R(x) asm volatile("" : "+r"(x))

SEGK_PROBE_INLINE __m256i lut_table() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
                            3, 4);
}

SEGK_PROBE_INLINE uint64_t fold(__m256i v) {
    return static_cast<uint64_t>(_mm256_extract_epi64(v, 0)) + static_cast<uint64_t>(_mm256_extract_epi64(v, 1)) +
           static_cast<uint64_t>(_mm256_extract_epi64(v, 2)) + static_cast<uint64_t>(_mm256_extract_epi64(v, 3));
}

// One lut step on one byte counter (4 output channels of one pixel): VPXOR the activation's low and
// high nibbles with the weight's, two VPSHUFB lookups, two VPADDB. Written in asm so the compiler
// keeps every counter in a register (it spilled them to the stack in C++) and cannot merge the
// equal XORs of this register-only loop (the kernel's weights differ per vector).
#define SEGK_LUT1(c)                                                                           \
    "vpxor %[alo], %[wlo], %%ymm14\n\t vpxor %[ahi], %[whi], %%ymm15\n\t"                      \
    "vpshufb %%ymm14, %[lut], %%ymm14\n\t vpshufb %%ymm15, %[lut], %%ymm15\n\t"                 \
    "vpaddb %%ymm14, %[" c "], %[" c "]\n\t vpaddb %%ymm15, %[" c "], %[" c "]\n\t"

// Scalar words: XOR + POPCNT (in place: no false output dependency) + ADD into 4 counters.
#define SEGK_POP4                                                                                  \
    "mov %[a], %[t]\n\t xor %[w], %[t]\n\t popcnt %[t], %[t]\n\t add %[t], %[s0]\n\t"            \
    "mov %[a], %[t]\n\t xor %[w], %[t]\n\t popcnt %[t], %[t]\n\t add %[t], %[s1]\n\t"            \
    "mov %[a], %[t]\n\t xor %[w], %[t]\n\t popcnt %[t], %[t]\n\t add %[t], %[s2]\n\t"            \
    "mov %[a], %[t]\n\t xor %[w], %[t]\n\t popcnt %[t], %[t]\n\t add %[t], %[s3]\n\t"

// --- lut and mix: V ymm byte counters (4 per pixel of 16 channels) per step and S scalar POPCNT words
// (0, 4, 8, 12 or 16) in the same step: S = 0 is the avx2 microkernel's "lut" loop (V = 8: 2 pixels
// x 16 channels), S > 0 the vector + integer unit mixes (the "mix1" microkernel's step is V = 2,
// S = 8; "mix2"'s V = 6, S = 8). 31 steps per flush (VPSADBW). Bits per call: iters * 31 * (V * 256
// + S * 64).
template <int V, int S>
SEGK_PROBE uint64_t run_lut_mix(int64_t iters) {
    static_assert(V == 2 || V == 4 || V == 6 || V == 8, "2, 4, 6 or 8 counters");
    const __m256i lut = lut_table(), zero = _mm256_setzero_si256();
    const __m256i w_lo = _mm256_set1_epi8(0x05), w_hi = _mm256_set1_epi8(0x0c);
    const __m256i a_lo = _mm256_set1_epi8(0x06), a_hi = _mm256_set1_epi8(0x09);
    const uint64_t w = 0x0123456789abcdefULL, a = 0x9e3779b97f4a7c15ULL;
    __m256i total = zero;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, t = 0;
    for (int64_t it = 0; it < iters; ++it) {
        __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero, c7 = zero;
        for (int s = 0; s < 31; ++s) {
#define SEGK_LUT_IN [alo] "x"(a_lo), [ahi] "x"(a_hi), [wlo] "x"(w_lo), [whi] "x"(w_hi), [lut] "x"(lut)
            if constexpr (V == 8)
                asm volatile(SEGK_LUT1("c0") SEGK_LUT1("c1") SEGK_LUT1("c2") SEGK_LUT1("c3") SEGK_LUT1("c4")
                                 SEGK_LUT1("c5") SEGK_LUT1("c6") SEGK_LUT1("c7")
                             : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), [c4] "+x"(c4),
                               [c5] "+x"(c5), [c6] "+x"(c6), [c7] "+x"(c7)
                             : SEGK_LUT_IN
                             : "xmm14", "xmm15");
            else if constexpr (V == 6)
                asm volatile(SEGK_LUT1("c0") SEGK_LUT1("c1") SEGK_LUT1("c2") SEGK_LUT1("c3") SEGK_LUT1("c4")
                                 SEGK_LUT1("c5")
                             : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), [c4] "+x"(c4),
                               [c5] "+x"(c5)
                             : SEGK_LUT_IN
                             : "xmm14", "xmm15");
            else if constexpr (V == 4)
                asm volatile(SEGK_LUT1("c0") SEGK_LUT1("c1") SEGK_LUT1("c2") SEGK_LUT1("c3")
                             : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3)
                             : SEGK_LUT_IN
                             : "xmm14", "xmm15");
            else
                asm volatile(SEGK_LUT1("c0") SEGK_LUT1("c1")
                             : [c0] "+x"(c0), [c1] "+x"(c1)
                             : SEGK_LUT_IN
                             : "xmm14", "xmm15");
#undef SEGK_LUT_IN
#pragma GCC unroll 4
            for (int q = 0; q < S / 4; ++q)
                asm volatile(SEGK_POP4
                             : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [t] "=&r"(t)
                             : [a] "r"(a), [w] "r"(w));
        }
        const __m256i cs[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
        for (int j = 0; j < V; ++j) total = _mm256_add_epi64(total, _mm256_sad_epu8(cs[j], zero));
    }
    return fold(total) + s0 + s1 + s2 + s3;
}

// --- lut8: unsplit words, 4 ymm per step (one pixel), 31 steps per flush.
SEGK_PROBE uint64_t run_lut8(int64_t iters) {
    const __m256i lut = lut_table(), zero = _mm256_setzero_si256(), mask = _mm256_set1_epi8(0x0f);
    __m256i w0 = _mm256_set1_epi8(0x35), w1 = _mm256_set1_epi8(0x5a), w2 = _mm256_set1_epi8(0x6c),
            w3 = _mm256_set1_epi8(0x1e);
    __m256i a = _mm256_set1_epi8(0x69), total = zero;
    for (int64_t it = 0; it < iters; ++it) {
        __m256i acc[4] = {zero, zero, zero, zero};
        for (int s = 0; s < 31; ++s) {
            SEGK_FRESH_V(a);
            const __m256i ws[4] = {w0, w1, w2, w3};
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v) {
                const __m256i x = _mm256_xor_si256(a, ws[v]);
                const __m256i lo = _mm256_and_si256(x, mask);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask);
                acc[v] = _mm256_add_epi8(acc[v], _mm256_shuffle_epi8(lut, lo));
                acc[v] = _mm256_add_epi8(acc[v], _mm256_shuffle_epi8(lut, hi));
            }
        }
        for (int v = 0; v < 4; ++v) total = _mm256_add_epi64(total, _mm256_sad_epu8(acc[v], zero));
    }
    return fold(total);
}

// --- hs: Harley-Seal over 16 inputs per iteration. Bits per call: iters * 16 * 256.
SEGK_PROBE_INLINE void csa(__m256i& h, __m256i& l, __m256i a, __m256i b, __m256i c) {
    const __m256i u = _mm256_xor_si256(a, b);
    h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
    l = _mm256_xor_si256(u, c);
}

SEGK_PROBE uint64_t run_hs(int64_t iters) {
    const __m256i lut = lut_table(), zero = _mm256_setzero_si256(), mask = _mm256_set1_epi8(0x0f);
    const __m256i w0 = _mm256_set1_epi8(0x35), w1 = _mm256_set1_epi8(0x5a);
    __m256i a = _mm256_set1_epi8(0x69);
    __m256i ones = zero, twos = zero, fours = zero, eights = zero, total = zero;
    // Input i: a fresh activation XOR one of the four weight registers.
#define in(i)                                                                                     \
    __extension__({                                                                              \
        SEGK_FRESH_V(a);                                                                         \
        _mm256_xor_si256(a, ((i) & 1) ? w1 : w0);                                                 \
    })
    for (int64_t it = 0; it < iters; ++it) {
        __m256i twos_a, twos_b, fours_a, fours_b, eights_a, eights_b, sixteens;
        csa(twos_a, ones, ones, in(0), in(1));
        csa(twos_b, ones, ones, in(2), in(3));
        csa(fours_a, twos, twos, twos_a, twos_b);
        csa(twos_a, ones, ones, in(4), in(5));
        csa(twos_b, ones, ones, in(6), in(7));
        csa(fours_b, twos, twos, twos_a, twos_b);
        csa(eights_a, fours, fours, fours_a, fours_b);
        csa(twos_a, ones, ones, in(8), in(9));
        csa(twos_b, ones, ones, in(10), in(11));
        csa(fours_a, twos, twos, twos_a, twos_b);
        csa(twos_a, ones, ones, in(12), in(13));
        csa(twos_b, ones, ones, in(14), in(15));
        csa(fours_b, twos, twos, twos_a, twos_b);
        csa(eights_b, fours, fours, fours_a, fours_b);
        csa(sixteens, eights, eights, eights_a, eights_b);
        const __m256i lo = _mm256_and_si256(sixteens, mask);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(sixteens, 4), mask);
        const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
        total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, zero));
    }
#undef in
    // The leftover counters (not part of the timed work's rate: once per call).
    return 16 * fold(total) + fold(ones) + fold(twos) + fold(fours) + fold(eights);
}

// --- scalar: 8 words per step (XOR + POPCNT + ADD), 4 counters. Bits per call: iters * 8 * 64.
SEGK_PROBE uint64_t run_scalar(int64_t iters) {
    const uint64_t w = 0x0123456789abcdefULL, a = 0x9e3779b97f4a7c15ULL;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, t = 0;
    for (int64_t it = 0; it < iters; ++it)
        asm volatile(SEGK_POP4 SEGK_POP4
                     : [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [t] "=&r"(t)
                     : [a] "r"(a), [w] "r"(w));
    return s0 + s1 + s2 + s3;
}

// --- vpopcntq: the avx512 tile (bconv_avx512.cpp) in registers, 6 pixels x 4 zmm of 8 channels.
// Bits per call: iters * 6 * 4 * 512.
#define SEGK_PROBE_AVX512 __attribute__((target("avx512f,avx512vpopcntdq"), noinline))
// As SEGK_FRESH_V, for a zmm that may live in registers 16-31 (constraint "v", not "x").
#define SEGK_FRESH_Z(x) asm volatile("" : "+v"(x))

SEGK_PROBE_AVX512 uint64_t run_vpopcntq(int64_t iters) {
    constexpr int kPixels = 6, kVecs = 4;
    __m512i w[kVecs];
    for (int v = 0; v < kVecs; ++v)
        w[v] = _mm512_set1_epi64(static_cast<long long>(0x0123456789abcdefULL * static_cast<uint64_t>(v + 1)));
    __m512i a = _mm512_set1_epi64(static_cast<long long>(0x9e3779b97f4a7c15ULL));
    __m512i acc[kPixels][kVecs];
    for (int j = 0; j < kPixels; ++j)
        for (int v = 0; v < kVecs; ++v) acc[j][v] = _mm512_setzero_si512();
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 6
        for (int j = 0; j < kPixels; ++j) {
            SEGK_FRESH_Z(a);  // the next pixel's broadcast
#pragma GCC unroll 4
            for (int v = 0; v < kVecs; ++v)
                acc[j][v] = _mm512_add_epi64(acc[j][v], _mm512_popcnt_epi64(_mm512_xor_si512(a, w[v])));
        }
    }
    __m512i total = _mm512_setzero_si512();
    for (int j = 0; j < kPixels; ++j)
        for (int v = 0; v < kVecs; ++v) total = _mm512_add_epi64(total, acc[j][v]);
    alignas(64) uint64_t lanes[8];
    _mm512_store_si512(lanes, total);
    uint64_t sum = 0;
    for (const uint64_t lane : lanes) sum += lane;
    return sum;
}

struct Method {
    const char* name;
    const char* isa;  // the kernel path whose ceiling it is; measured where that path runs
    const char* detail;
    double bits_per_iter;
    uint64_t (*run)(int64_t);
};

const std::vector<Method>& methods() {
    static const std::vector<Method> list = {
        {"lut", "avx2", "nibble-split VPSHUFB, 8 ymm counters (2 px x 16 ch) per step: the avx2 'lut' microkernel's loop",
         31.0 * 8 * 256, run_lut_mix<8, 0>},
        {"lut8", "avx2", "VPSHUFB on unsplit words (shift + 2 AND per vector), 4 ymm per step", 31.0 * 4 * 256, run_lut8},
        {"hs", "avx2", "Harley-Seal CSA over 16 ymm, VPSHUFB for the 16s only", 16.0 * 256, run_hs},
        {"scalar", "avx2", "64-bit POPCNT on the integer units (XOR + POPCNT + ADD per word)", 8.0 * 64, run_scalar},
        {"mix_2+8", "avx2", "lut 2 ymm + 8 POPCNT words per step: the 'mix1' microkernel's loop", 31.0 * (2 * 256 + 8 * 64),
         run_lut_mix<2, 8>},
        {"mix_6+8", "avx2", "lut 6 ymm + 8 POPCNT words per step: the 'mix2' microkernel's loop", 31.0 * (6 * 256 + 8 * 64),
         run_lut_mix<6, 8>},
        {"mix_4+4", "avx2", "lut 4 ymm + 4 POPCNT words per step", 31.0 * (4 * 256 + 4 * 64), run_lut_mix<4, 4>},
        {"mix_4+8", "avx2", "lut 4 ymm + 8 POPCNT words per step", 31.0 * (4 * 256 + 8 * 64), run_lut_mix<4, 8>},
        {"mix_2+16", "avx2", "lut 2 ymm + 16 POPCNT words per step", 31.0 * (2 * 256 + 16 * 64), run_lut_mix<2, 16>},
        {"mix_8+8", "avx2", "lut 8 ymm + 8 POPCNT words per step", 31.0 * (8 * 256 + 8 * 64), run_lut_mix<8, 8>},
        {"vpopcntq", "avx512",
         "VPXORQ + VPOPCNTQ + VPADDQ per zmm, 24 zmm counters (6 px x 32 ch): the avx512 microkernel's step",
         6.0 * 4 * 512, run_vpopcntq},
    };
    return list;
}

#endif  // x86-64

}  // namespace

std::vector<PopcountCeiling> popcount_ceilings(const std::vector<std::string>& names, int repeats, double seconds) {
    std::vector<PopcountCeiling> out;
#if defined(__x86_64__) || defined(_M_X64)
    const std::vector<std::string> paths = available_isas();  // the CPU checks of the kernel paths
    volatile uint64_t sink = 0;
    for (const Method& m : methods()) {
        if (std::find(paths.begin(), paths.end(), m.isa) == paths.end()) continue;
        if (!names.empty() && std::find(names.begin(), names.end(), m.name) == names.end()) continue;
        PopcountCeiling c;
        c.method = m.name;
        c.isa = m.isa;
        c.detail = m.detail;
        // Size the call so one repeat takes about `seconds` of CPU time.
        int64_t iters = 64;
        for (;;) {
            const double t0 = thread_seconds();
            sink = sink + m.run(iters);
            const double dt = thread_seconds() - t0;
            if (dt >= seconds / 4 || iters > (int64_t{1} << 40)) {
                iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * seconds / std::max(dt, 1e-9)));
                break;
            }
            iters *= 4;
        }
        for (int r = 0; r < repeats; ++r) {
            const double t0 = thread_seconds();
            sink = sink + m.run(iters);
            const double dt = thread_seconds() - t0;
            c.gbmacs.push_back(m.bits_per_iter * static_cast<double>(iters) / dt * 1e-9);
        }
        out.push_back(std::move(c));
    }
    (void)sink;
#else
    (void)names;
    (void)repeats;
    (void)seconds;
#endif
    return out;
}

}  // namespace segk
