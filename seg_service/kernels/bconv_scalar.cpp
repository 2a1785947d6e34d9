// Portable scalar path: compiles on any CPU; used when no SIMD path is available or SEG_ISA=scalar.
#include "bitpack.h"
#include "conv_job.h"

namespace segk {
namespace {

constexpr int64_t kBlock = 8;  // output channels per weight block
constexpr int kPixels = 2;     // pixels per register tile (2 x 8 accumulators fit the GPR file)

// always_inline so that the body is compiled with the caller's target (popcnt instruction or not).
template <int P>
__attribute__((always_inline)) inline void tile_scalar(const ConvJob& job, int64_t cb, int64_t p0,
                                                       PixelWalker& pixels) {
    const uint64_t* a[P];
    for (int j = 0; j < P; ++j) {
        a[j] = job.in + pixels.base();
        pixels.next();
    }
    const uint64_t* w = job.wblk + cb * job.wblk_steps * kBlock;
    uint64_t acc[P][kBlock] = {};
    for (int64_t s = 0; s < job.steps; ++s) {
        const int64_t off = job.step_offset[s];
        const uint64_t* ws = w + (job.step_weight != nullptr ? job.step_weight[s] : s) * kBlock;
        for (int j = 0; j < P; ++j) {
            const uint64_t av = a[j][off];
            for (int64_t c = 0; c < kBlock; ++c) acc[j][c] += __builtin_popcountll(av ^ ws[c]);
        }
    }
    const int64_t c0 = cb * kBlock;
    const int64_t count = std::min(kBlock, job.out_c - c0);
    for (int j = 0; j < P; ++j) {
        int32_t dots[kBlock];
        for (int64_t c = 0; c < kBlock; ++c) dots[c] = job.n_channel[c0 + c] - 2 * static_cast<int32_t>(acc[j][c]);
        store_dots<false>(job, p0 + j, c0, count, dots);
    }
}

__attribute__((always_inline)) inline void tile_range(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    int64_t p = p_begin;
    PixelWalker pixels(job, p_begin);
    for (; p + kPixels <= p_end; p += kPixels) tile_scalar<kPixels>(job, cb, p, pixels);
    for (; p < p_end; ++p) tile_scalar<1>(job, cb, p, pixels);
}

void conv_tile_portable(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
    tile_range(job, cb, p_begin, p_end);
}

#if defined(__x86_64__) || defined(_M_X64)
// Same code with the POPCNT instruction (baseline x86-64 compiles __builtin_popcountll to a slow
// bit-twiddling routine); chosen at run time on CPUs that have it.
__attribute__((target("popcnt"))) void conv_tile_popcnt(const ConvJob& job, int64_t cb, int64_t p_begin,
                                                         int64_t p_end) {
    tile_range(job, cb, p_begin, p_end);
}

bool cpu_has_popcnt() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt");
}

const bool kHasPopcnt = cpu_has_popcnt();
#endif

void conv_tile_scalar(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end) {
#if defined(__x86_64__) || defined(_M_X64)
    if (kHasPopcnt) return conv_tile_popcnt(job, cb, p_begin, p_end);
#endif
    conv_tile_portable(job, cb, p_begin, p_end);
}

void pack_pixels_scalar(const float* src, int64_t count, int64_t channels, int64_t src_stride,
                        uint64_t* dst, int64_t dst_stride) {
    for (int64_t i = 0; i < count; ++i) pack_pixel_scalar(src + i * src_stride, 0, channels, dst + i * dst_stride);
}

}  // namespace

const IsaKernels kScalarKernels = {"scalar", kBlock, false, false, conv_tile_scalar, pack_pixels_scalar,
                                  "popcnt", nullptr};

}  // namespace segk
