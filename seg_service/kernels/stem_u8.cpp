// Integer direct convolution of a uint8 image (the RGB stem: 7x7, stride 2, 3 -> 32 channels) with
// 7-bit signed weights, and a float epilogue with per-position bias classes.
//
// The float stem (float_conv.cpp) is FMA-bound: 147 taps x 2 zmm FMAs per pixel. Here a multiply-add
// takes 4 taps at once: AVX-512 VNNI's vpdpbusd sums four u8 x s8 products into each int32 lane, so
// one kernel row of the stem (21 taps, padded with zero weights to 24) is 6 instructions per
// 16 channels instead of 21. Everything else follows float_conv.cpp: a register tile of P output
// pixels (along a row) x one block of NB output channels; per group of 4 taps the block's weights are
// loaded once (pre-arranged as [block][ky][group][NB][4] int8, 64-byte aligned) and each pixel
// broadcasts its 4 input bytes (one 32-bit load: with dilation 1 a kernel row's k * C taps are
// contiguous bytes of an input row) into a dot product with each weight vector.
//
//   avx512: NB = 32 (2 zmm of int32), P <= 12 -> 24 accumulators. vpdpbusd where the CPU has VNNI,
//           else vpmaddubsw + vpmaddwd(1) + vpaddd (exact: weights in [-64, 63] keep vpmaddubsw's
//           int16 pair sums within |255 * 64 * 2| = 32640, no saturation).
//   avx2:   the same on ymm, NB = 16 (2 ymm): vpdpbusd of AVX-VNNI (VEX-encoded, 256-bit) where the CPU
//           has it (Intel client CPUs since the 12th generation, which have AVX2 and no AVX-512; AMD
//           Zen 5), P <= 6 (12 accumulators, the 2 weights and the broadcast); else the emulation, P <= 5
//           (10 accumulators; the ones and the products take the registers of the sixth pixel).
//   scalar: the same tile in plain C++ (P <= 4 x 16 channels).
// Integer sums are exact and the epilogue is one fma(float(acc), scale, bias) rounded once on every
// path (|acc| <= 11 * 11 * 4 * 255 * 64 < 2^24, so float(acc) is exact), so all paths give the same
// bits whatever the order of the taps.
//
// Borders without a padded copy, as float_conv.cpp: kernel rows outside the image are skipped (their
// taps are zero: integer sums need no fixed order), a tile whose windows' columns lie inside the
// image reads it directly, and a tile that reaches the left or right padding reads a small zero-padded
// patch of its windows. The output size is the caller's (row_class / col_class lengths), possibly past
// the conv's natural size: those pixels read only zeros (no tap computed) and get their bias.
// The last group of a kernel row reads up to 3 bytes past the row's taps (zero weights); a direct
// tile whose over-read would pass the image's last byte reads a patch instead.
// Threads split the output rows (one parallel loop per call).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "kernels.h"
#include "threadpool.h"

// As in float_conv.cpp: neighbouring pixels' windows overlap; keep GCC from carrying input values
// across the group loop in registers (it would spill accumulators).
#pragma GCC optimize("no-predictive-commoning")

namespace segk {
namespace {

struct U8Conv {
    const int8_t* wt;    // [blocks][k][groups_row][nb][4], zero past out_c and past each row's k * c taps
    const float* scale;  // [blocks * nb], zero past out_c
    int64_t c, kernel, stride, groups_row;  // groups_row = ceil(k * c / 4)
    bool relu;
    int64_t out_c;
};

// See tile() in stem_u8_tile.h.
using TileFn = void (*)(const U8Conv& d, const uint8_t* src, int64_t row_step, int64_t ky0, int64_t rows,
                        const float* bias_row, const int32_t* cols, float* out, int64_t ob);

struct TileSet {
    const TileFn* fns;  // fns[P - 1]: P pixels (P = 1 .. pixels) of one channel block of `block` channels
    int pixels, block;
};

// Channel count, stride and kernel size with a compile-time instantiation; kC == 0: the generic tiles.
template <int C, int S, int K>
struct Geometry {
    static constexpr int kC = C, kS = S, kK = K;
};
using Generic = Geometry<0, 0, 0>;
using Stem2 = Geometry<3, 2, 7>;

#if defined(__x86_64__) || defined(_M_X64)
// The accumulators are GCC's int32 vector types (__v16si, __v8si), not __m512i / __m256i (64-bit
// lanes): with those, every dot product converts between modes and GCC 12 copies and spills the
// accumulators inside the tap loop.
//
// Shared by the avx512 variants: the int32 -> float epilogue and stores of 16 lanes.
#define SEGK_AVX512_FLOAT_OPS                                                                            \
    using F = __m512;                                                                                    \
    SEGK_FN static V zero() { return V{}; }                                                              \
    SEGK_FN static W load_w(const int8_t* p) { return _mm512_load_si512(p); }                            \
    SEGK_FN static X bcast(const uint8_t* p) {                                                           \
        int32_t v;                                                                                       \
        std::memcpy(&v, p, 4);                                                                           \
        return _mm512_set1_epi32(v);                                                                     \
    }                                                                                                    \
    SEGK_FN static F loadf(const float* p) { return _mm512_loadu_ps(p); }                                \
    SEGK_FN static F loadf_first(const float* p, int64_t n) {                                            \
        return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);                         \
    }                                                                                                    \
    SEGK_FN static F epilogue(V acc, F scale, F bias) {                                                  \
        return _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, (__m512i)acc), scale, bias);             \
    }                                                                                                    \
    /* max(0, r) keeps r unless r < 0, as std::max(r, 0.0f); the maskz forms: GCC 12 warns about the    \
       plain ones' undefined source operand */                                                           \
    SEGK_FN static F relu(F r) { return _mm512_maskz_max_ps(0xffff, _mm512_setzero_ps(), r); }           \
    SEGK_FN static void store(float* p, F r) { _mm512_storeu_ps(p, r); }                                 \
    SEGK_FN static void store_first(float* p, F r, int64_t n) {                                          \
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), r);                              \
    }

namespace avx512vnni {
#define SEGK_FN __attribute__((target("avx512f,avx512bw,avx512vnni,fma"))) inline
struct I {
    using V = __v16si;
    using W = __m512i;
    using X = __m512i;
    static constexpr int kLanes = 16, kVectors = 2, kPixels = 12;
    SEGK_AVX512_FLOAT_OPS
    SEGK_FN static V dot(V acc, X x, W w) { return (V)_mm512_dpbusd_epi32((__m512i)acc, x, w); }
};
#include "stem_u8_tile.h"
#undef SEGK_FN
}  // namespace avx512vnni

namespace avx512 {
#define SEGK_FN __attribute__((target("avx512f,avx512bw,fma"))) inline
struct I {
    using V = __v16si;
    using W = __m512i;
    using X = __m512i;
    static constexpr int kLanes = 16, kVectors = 2, kPixels = 12;
    SEGK_AVX512_FLOAT_OPS
    SEGK_FN static V dot(V acc, X x, W w) {
        const __m512i pairs = _mm512_maddubs_epi16(x, w);  // no saturation: |w| <= 64
        return acc + (V)_mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
    }
};
#include "stem_u8_tile.h"
#undef SEGK_FN
}  // namespace avx512
#undef SEGK_AVX512_FLOAT_OPS

// Shared by the avx2 variants: the operands' loads and the int32 -> float epilogue of 8 lanes.
#define SEGK_AVX2_OPS                                                                                            \
    using F = __m256;                                                                                            \
    SEGK_FN static V zero() { return V{}; }                                                                      \
    SEGK_FN static W load_w(const int8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }  \
    SEGK_FN static X bcast(const uint8_t* p) {                                                                   \
        int32_t v;                                                                                               \
        std::memcpy(&v, p, 4);                                                                                   \
        return _mm256_set1_epi32(v);                                                                             \
    }                                                                                                            \
    SEGK_FN static F loadf(const float* p) { return _mm256_loadu_ps(p); }                                        \
    SEGK_FN static F loadf_first(const float* p, int64_t n) {                                                    \
        float tmp[kLanes] = {};                                                                                  \
        std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(float));                                             \
        return _mm256_loadu_ps(tmp);                                                                             \
    }                                                                                                            \
    SEGK_FN static F epilogue(V acc, F scale, F bias) {                                                          \
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps((__m256i)acc), scale, bias);                                   \
    }                                                                                                            \
    SEGK_FN static F relu(F r) { return _mm256_max_ps(_mm256_setzero_ps(), r); }                                 \
    SEGK_FN static void store(float* p, F r) { _mm256_storeu_ps(p, r); }                                         \
    SEGK_FN static void store_first(float* p, F r, int64_t n) {                                                  \
        float tmp[kLanes];                                                                                       \
        _mm256_storeu_ps(tmp, r);                                                                                \
        std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(float));                                             \
    }

// AVX-VNNI's intrinsics and target name: GCC 11 and clang 12 on (older compilers build without the path).
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define SEGK_HAVE_AVX_VNNI 1
namespace avx2vnni {
#define SEGK_FN __attribute__((target("avx2,fma,avxvnni"))) inline
struct I {
    using V = __v8si;
    using W = __m256i;
    using X = __m256i;
    static constexpr int kLanes = 8, kVectors = 2, kPixels = 6;
    SEGK_AVX2_OPS
    SEGK_FN static V dot(V acc, X x, W w) { return (V)_mm256_dpbusd_avx_epi32((__m256i)acc, x, w); }
};
#include "stem_u8_tile.h"
#undef SEGK_FN
}  // namespace avx2vnni
#endif

namespace avx2 {
#define SEGK_FN __attribute__((target("avx2,fma"))) inline
struct I {
    using V = __v8si;
    using W = __m256i;
    using X = __m256i;
    static constexpr int kLanes = 8, kVectors = 2, kPixels = 5;
    SEGK_AVX2_OPS
    SEGK_FN static V dot(V acc, X x, W w) {
        const __m256i pairs = _mm256_maddubs_epi16(x, w);  // no saturation: |w| <= 64
        return acc + (V)_mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    }
};
#include "stem_u8_tile.h"
#undef SEGK_FN
}  // namespace avx2
#undef SEGK_AVX2_OPS
#endif

// Portable path: one int32 per lane, 16 lanes per block; the same sums and the same fma.
namespace scalar {
#define SEGK_FN inline
struct I {
    using V = int32_t;
    using W = const int8_t*;
    using X = const uint8_t*;
    using F = float;
    static constexpr int kLanes = 1, kVectors = 16, kPixels = 4;
    static V zero() { return 0; }
    static W load_w(const int8_t* p) { return p; }
    static X bcast(const uint8_t* p) { return p; }
    static V dot(V acc, X x, W w) { return acc + x[0] * w[0] + x[1] * w[1] + x[2] * w[2] + x[3] * w[3]; }
    static F loadf(const float* p) { return *p; }
    static F loadf_first(const float* p, int64_t) { return *p; }
    static F epilogue(V acc, F scale, F bias) { return std::fma(static_cast<float>(acc), scale, bias); }
    static F relu(F r) { return std::max(r, 0.0f); }
    static void store(float* p, F r) { *p = r; }
    static void store_first(float* p, F r, int64_t) { *p = r; }
};
#include "stem_u8_tile.h"
#undef SEGK_FN
}  // namespace scalar

// The dot products: vpdpbusd where the CPU has it for the path in use (AVX-512 VNNI for avx512,
// AVX-VNNI for avx2), unless turned off for a test of the emulation (set_u8_vnni).
bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}
bool cpu_has_avx_vnni() {
#if defined(SEGK_HAVE_AVX_VNNI)
    // AVX-VNNI is CPUID leaf 7 sub-leaf 1, EAX bit 4 (GCC 12's __builtin_cpu_supports does not know it);
    // its VEX instructions need the OS to save the ymm state, which AVX2's presence already says.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
    __builtin_cpu_init();
    return (eax & (1u << 4)) != 0 && __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}
const bool g_has_avx512_vnni = cpu_has_avx512_vnni();
const bool g_has_avx_vnni = cpu_has_avx_vnni();
std::atomic<bool> g_use_vnni{true};

// Whether the integer stem multiplies with vpdpbusd on ISA path `path`.
bool vnni_on(const std::string& path) {
    if (!g_use_vnni.load()) return false;
    return (path == "avx512" && g_has_avx512_vnni) || (path == "avx2" && g_has_avx_vnni);
}

TileSet select_tiles(int64_t c, int64_t kernel, int64_t stride) {
    const bool stem = c == 3 && kernel == 7 && stride == 2;
#if defined(__x86_64__) || defined(_M_X64)
    const std::string path = isa();
    const bool vnni = vnni_on(path);
    if (path == "avx512" && vnni) return stem ? avx512vnni::tile_set<Stem2>() : avx512vnni::tile_set<Generic>();
    if (path == "avx512") return stem ? avx512::tile_set<Stem2>() : avx512::tile_set<Generic>();
#if defined(SEGK_HAVE_AVX_VNNI)
    if (path == "avx2" && vnni) return stem ? avx2vnni::tile_set<Stem2>() : avx2vnni::tile_set<Generic>();
#endif
    if (path == "avx2") return stem ? avx2::tile_set<Stem2>() : avx2::tile_set<Generic>();
#endif
    return stem ? scalar::tile_set<Stem2>() : scalar::tile_set<Generic>();
}

// The call's fixed parts.
struct Plan {
    const uint8_t* image;  // [h, w, c]
    int64_t h, w, c, kernel, stride, padding;
    const int32_t* row_class;
    const int32_t* col_class;
    const float* bias_table;  // [R, S, out_c]
    int64_t classes_s;        // S
    int64_t out_w, out_c, blocks;
    float* out;
    TileSet tiles;
    int64_t row_tiles, narrow, wider;  // a row: `row_tiles` tiles, the first `wider` of narrow + 1 pixels
    int64_t groups_row;
    int64_t patch_step;  // bytes per patch row: the widest tile's windows and the last group's over-read
};

// Copies kernel rows iy .. iy + rows - 1 (all inside the image) of the windows of `pixels` pixels from
// column ix0 (may lie in the padding) into `patch` ([rows][patch_step] bytes), zero outside the image.
void fill_patch(const Plan& p, int64_t iy, int64_t rows, int64_t ix0, int64_t pixels, uint8_t* patch) {
    const int64_t cols = (pixels - 1) * p.stride + p.kernel;
    const int64_t lo = std::clamp<int64_t>(-ix0, 0, cols), hi = std::clamp<int64_t>(p.w - ix0, lo, cols);
    for (int64_t r = 0; r < rows; ++r) {
        uint8_t* dst = patch + r * p.patch_step;
        std::memset(dst, 0, static_cast<size_t>(lo * p.c));
        std::memcpy(dst + lo * p.c, p.image + ((iy + r) * p.w + ix0 + lo) * p.c, static_cast<size_t>((hi - lo) * p.c));
        std::memset(dst + hi * p.c, 0, static_cast<size_t>(p.patch_step - hi * p.c));
    }
}

void conv_row(const Plan& p, const U8Conv& d, int64_t y, std::vector<uint8_t>& patch) {
    const int64_t iy0 = y * p.stride - p.padding;
    // Kernel rows whose input row lies in the image.
    const int64_t ky0 = std::clamp<int64_t>(-iy0, 0, p.kernel), ky1 = std::clamp<int64_t>(p.h - iy0, ky0, p.kernel);
    const float* bias_row = p.bias_table + static_cast<int64_t>(p.row_class[y]) * p.classes_s * p.out_c;
    const int64_t image_bytes = p.h * p.w * p.c;
    int64_t x0 = 0;
    for (int64_t i = 0; i < p.row_tiles; ++i) {
        const int64_t pixels = p.narrow + (i < p.wider ? 1 : 0);
        const int64_t ix0 = x0 * p.stride - p.padding, cols = (pixels - 1) * p.stride + p.kernel;
        // No window column in the image: no tap to compute, the bias only.
        const int64_t rows = ix0 >= p.w || ix0 + cols <= 0 ? 0 : ky1 - ky0;
        const uint8_t* src = nullptr;
        int64_t row_step = 0;
        if (rows > 0) {
            const int64_t first = ((iy0 + ky0) * p.w + ix0) * p.c;
            const int64_t last_end = first + (rows - 1) * p.w * p.c + (pixels - 1) * p.stride * p.c + 4 * p.groups_row;
            if (ix0 >= 0 && ix0 + cols <= p.w && last_end <= image_bytes) {
                src = p.image + first;
                row_step = p.w * p.c;
            } else {
                patch.resize(static_cast<size_t>(p.kernel * p.patch_step));
                fill_patch(p, iy0 + ky0, rows, ix0, pixels, patch.data());
                src = patch.data();
                row_step = p.patch_step;
            }
        }
        const TileFn fn = p.tiles.fns[pixels - 1];
        float* out = p.out + (y * p.out_w + x0) * p.out_c;
        for (int64_t ob = 0; ob < p.blocks; ++ob)
            fn(d, src, row_step, ky0, rows, bias_row, p.col_class + x0, out, ob);
        x0 += pixels;
    }
}

struct AlignedFree {
    void operator()(int8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

}  // namespace

std::string u8_dot_method() {
    const std::string path = isa();
    if (path == "avx512" || path == "avx2") return vnni_on(path) ? "vnni" : "maddubs";
    return "scalar";
}

bool set_u8_vnni(bool enabled) { return g_use_vnni.exchange(enabled); }

void conv2d_u8(const uint8_t* image, int64_t h, int64_t w, int64_t c, const int8_t* weight, int64_t out_c,
               int64_t kernel, const float* scale, const int32_t* row_class, int64_t out_h, const int32_t* col_class,
               int64_t out_w, const float* bias_table, int64_t classes_s, int64_t stride, int64_t padding, bool relu,
               float* out) {
    const TileSet tiles = select_tiles(c, kernel, stride);
    const int64_t nb = tiles.block;
    const int64_t blocks = (out_c + nb - 1) / nb;
    const int64_t row_taps = kernel * c, groups_row = (row_taps + 3) / 4;
    const double macs = static_cast<double>(out_h) * static_cast<double>(out_w * out_c * kernel * row_taps);
    const int threads = macs < 4e6 ? 1 : get_num_threads();

    // Weights [out_c, k, k, c] -> [block][ky][group][nb][4] (64-byte aligned), tap kx * c + ci of a
    // kernel row at group (kx * c + ci) / 4, byte (kx * c + ci) % 4; zero past each row's taps.
    const size_t wt_bytes = static_cast<size_t>(blocks * kernel * groups_row * nb * 4);
    std::unique_ptr<int8_t[], AlignedFree> wt(new (std::align_val_t(64)) int8_t[wt_bytes]);
    std::memset(wt.get(), 0, wt_bytes);
    for (int64_t o = 0; o < out_c; ++o)
        for (int64_t ky = 0; ky < kernel; ++ky)
            for (int64_t t = 0; t < row_taps; ++t) {
                const int64_t group = ((o / nb) * kernel + ky) * groups_row + t / 4;
                wt[static_cast<size_t>((group * nb + o % nb) * 4 + t % 4)] = weight[(o * kernel + ky) * row_taps + t];
            }
    std::vector<float> scale_padded(static_cast<size_t>(blocks * nb), 0.0f);
    std::copy(scale, scale + out_c, scale_padded.begin());

    // A row: the fewest tiles of at most tiles.pixels pixels, of widths differing by at most one.
    const int64_t row_tiles = (out_w + tiles.pixels - 1) / tiles.pixels;
    const int64_t narrow = out_w / row_tiles, wider = out_w % row_tiles;
    const int64_t widest = narrow + (wider > 0 ? 1 : 0);
    const int64_t patch_step = (widest - 1) * stride * c + 4 * groups_row;

    const U8Conv d{wt.get(), scale_padded.data(), c, kernel, stride, groups_row, relu, out_c};
    const Plan plan{image, h, w, c, kernel, stride, padding, row_class, col_class, bias_table, classes_s,
                    out_w, out_c, blocks, out, tiles, row_tiles, narrow, wider, groups_row, patch_step};
    parallel_for(threads, out_h, [&](int64_t y) {
        std::vector<uint8_t> patch;  // allocated by the rows that need one (those near the border)
        conv_row(plan, d, y, patch);
    });
}

}  // namespace segk
