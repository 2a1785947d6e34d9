// The network input of a model's predict (seg_service/runtime/model.py): an RGB image (uint8, or the
// float32 result of the input's area resize) normalised per channel as v * scale + offset into a
// zero-padded buffer and, optionally, the guided filter's guide, v / 255 clipped to [0, 1], from
// the same read of the image. numpy needs a float copy of the image and two passes with a
// tiny-last-axis broadcast (slow) for the same result.
//
// Rounding: v * scale and then + offset, each rounded to float32 (contraction into an FMA is off
// for this file), and v * float32(1 / 255): bit for bit kernels.reference.normalize_image.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa_dispatch.h"
#include "kernels.h"
#include "threadpool.h"

#pragma GCC optimize("fp-contract=off")

namespace segk {
namespace {

// Below this many image values a call stays on the calling thread (a 480x360 frame is ~0.5 M;
// the pass is memory-bound and waking a helper costs about as much as it saves).
constexpr int64_t kMinParallelValues = int64_t{1} << 20;
constexpr int64_t kValuesPerItem = int64_t{1} << 16;

// A per-channel value repeated along a row of `row_values` interleaved values, so the row loops
// have no channel index.
std::vector<float> channel_row(const float* per_channel, int64_t row_values, int64_t channels) {
    std::vector<float> row(static_cast<size_t>(row_values));
    for (int64_t i = 0; i < row_values; ++i) row[static_cast<size_t>(i)] = per_channel[i % channels];
    return row;
}

// fn(r0, r1) over `rows` rows of `row_values` values, in items of about kValuesPerItem values,
// on all threads once the whole holds kMinParallelValues values or more.
template <typename Fn>
void for_row_items(int64_t rows, int64_t row_values, const Fn& fn) {
    const int threads = rows * row_values < kMinParallelValues ? 1 : get_num_threads();
    const int64_t rows_per_item = std::max<int64_t>(1, kValuesPerItem / std::max<int64_t>(1, row_values));
    parallel_for(threads, (rows + rows_per_item - 1) / rows_per_item, [&](int64_t item) {
        const int64_t r0 = item * rows_per_item;
        fn(r0, std::min(rows, r0 + rows_per_item));
    });
}

template <typename T>
struct NormalizeCall {
    const T* image;
    int64_t h, row_values;  // row_values = w * channels
    const float* scale_row;   // [row_values]: scale repeated along the row, so the loop has no channel index
    const float* offset_row;  // [row_values]
    float inv_255;
    float* x;                 // [padded_h, padded_w * channels], or nullptr: the guide alone
    int64_t padded_row_values;
    float* guide;             // [h, row_values] or nullptr
};

template <typename T>
SEGK_ALWAYS_INLINE void normalize_rows_body(const NormalizeCall<T>& c, int64_t r0, int64_t r1) {
    const int64_t n = c.row_values;
    for (int64_t y = r0; y < r1; ++y) {
        if (y >= c.h) {  // padding rows of the network input (the guide has none)
            std::fill(c.x + y * c.padded_row_values, c.x + (y + 1) * c.padded_row_values, 0.0f);
            continue;
        }
        const T* __restrict src = c.image + y * n;
        if (c.x != nullptr) {
            float* __restrict dst = c.x + y * c.padded_row_values;
            const float* __restrict scale = c.scale_row;
            const float* __restrict offset = c.offset_row;
            for (int64_t i = 0; i < n; ++i) {
                const float product = static_cast<float>(src[i]) * scale[i];
                dst[i] = product + offset[i];
            }
            std::fill(dst + n, dst + c.padded_row_values, 0.0f);
        }
        if (c.guide != nullptr) {
            float* __restrict g = c.guide + y * n;
            const float inv = c.inv_255;
            for (int64_t i = 0; i < n; ++i) {
                const float v = static_cast<float>(src[i]) * inv;
                // np.clip's order (maximum, then minimum); a NaN stays NaN
                const float low = v < 0.0f ? 0.0f : v;
                g[i] = low > 1.0f ? 1.0f : low;
            }
        }
    }
}

template <typename T>
using NormalizeFn = void (*)(const NormalizeCall<T>&, int64_t, int64_t);

template <typename T>
SEGK_TARGET("avx512f") void normalize_rows_avx512(const NormalizeCall<T>& c, int64_t r0, int64_t r1) {
    normalize_rows_body(c, r0, r1);
}
template <typename T>
SEGK_TARGET("avx2") void normalize_rows_avx2(const NormalizeCall<T>& c, int64_t r0, int64_t r1) {
    normalize_rows_body(c, r0, r1);
}
template <typename T>
void normalize_rows_scalar(const NormalizeCall<T>& c, int64_t r0, int64_t r1) {
    normalize_rows_body(c, r0, r1);
}

template <typename T>
void normalize_image_impl(const T* image, int64_t h, int64_t w, int64_t channels, const float* scale,
                          const float* offset, int64_t padded_h, int64_t padded_w, float* x, float* guide) {
    const int64_t row_values = w * channels;
    std::vector<float> scale_row, offset_row;  // read only for the network input
    if (x != nullptr) {
        scale_row = channel_row(scale, row_values, channels);
        offset_row = channel_row(offset, row_values, channels);
    }
    const NormalizeCall<T> call{image,          h, row_values, scale_row.data(), offset_row.data(),
                                1.0f / 255.0f,  x, padded_w * channels, guide};
    const NormalizeFn<T> fn =
        for_current_isa<NormalizeFn<T>>(normalize_rows_avx512<T>, normalize_rows_avx2<T>, normalize_rows_scalar<T>);
    for_row_items(padded_h, padded_w * channels, [&](int64_t r0, int64_t r1) { fn(call, r0, r1); });
}

// image_pixels: the u8 pixels an integer stem (conv2d_u8) reads from a normalised input,
// rint(x * pixel_scale + pixel_zero) clipped to [0, 255]: the product and the sum each rounded to
// float32 (no contraction, see the pragma above), half to even, as numpy in kernels.reference.
struct PixelsCall {
    const float* x;
    int64_t row_values;  // w * channels
    const float* scale_row;
    const float* zero_row;
    uint8_t* out;
};

SEGK_ALWAYS_INLINE void pixels_rows_body(const PixelsCall& c, int64_t r0, int64_t r1) {
    const int64_t n = c.row_values;
    for (int64_t y = r0; y < r1; ++y) {
        const float* __restrict src = c.x + y * n;
        uint8_t* __restrict dst = c.out + y * n;
        const float* __restrict scale = c.scale_row;
        const float* __restrict zero = c.zero_row;
        for (int64_t i = 0; i < n; ++i) {
            const float product = src[i] * scale[i];
            const float level = std::nearbyint(product + zero[i]);
            // np.clip's order (maximum, then minimum)
            const float low = level < 0.0f ? 0.0f : level;
            dst[i] = static_cast<uint8_t>(static_cast<int32_t>(low > 255.0f ? 255.0f : low));
        }
    }
}

using PixelsFn = void (*)(const PixelsCall&, int64_t, int64_t);
SEGK_TARGET("avx512f") void pixels_rows_avx512(const PixelsCall& c, int64_t r0, int64_t r1) {
    pixels_rows_body(c, r0, r1);
}
SEGK_TARGET("avx2") void pixels_rows_avx2(const PixelsCall& c, int64_t r0, int64_t r1) {
    pixels_rows_body(c, r0, r1);
}
void pixels_rows_scalar(const PixelsCall& c, int64_t r0, int64_t r1) { pixels_rows_body(c, r0, r1); }

}  // namespace

void image_pixels(const float* x, int64_t h, int64_t w, int64_t channels, const float* pixel_scale,
                  const float* pixel_zero, uint8_t* out) {
    const int64_t row_values = w * channels;
    const std::vector<float> scale_row = channel_row(pixel_scale, row_values, channels);
    const std::vector<float> zero_row = channel_row(pixel_zero, row_values, channels);
    const PixelsCall call{x, row_values, scale_row.data(), zero_row.data(), out};
    const PixelsFn fn = for_current_isa<PixelsFn>(pixels_rows_avx512, pixels_rows_avx2, pixels_rows_scalar);
    for_row_items(h, row_values, [&](int64_t r0, int64_t r1) { fn(call, r0, r1); });
}

void normalize_image(const uint8_t* image, int64_t h, int64_t w, int64_t channels, const float* scale,
                     const float* offset, int64_t padded_h, int64_t padded_w, float* x, float* guide) {
    normalize_image_impl(image, h, w, channels, scale, offset, padded_h, padded_w, x, guide);
}

void normalize_image(const float* image, int64_t h, int64_t w, int64_t channels, const float* scale,
                     const float* offset, int64_t padded_h, int64_t padded_w, float* x, float* guide) {
    normalize_image_impl(image, h, w, channels, scale, offset, padded_h, padded_w, x, guide);
}

// The guide alone (an integer stem reads the u8 pixels, so no normalised copy is needed): the rows
// of normalize_image with x == nullptr; scale and offset are then never read.
void image_guide(const uint8_t* image, int64_t h, int64_t w, int64_t channels, float* guide) {
    normalize_image_impl(image, h, w, channels, nullptr, nullptr, h, w, nullptr, guide);
}

void image_guide(const float* image, int64_t h, int64_t w, int64_t channels, float* guide) {
    normalize_image_impl(image, h, w, channels, nullptr, nullptr, h, w, nullptr, guide);
}

}  // namespace segk
