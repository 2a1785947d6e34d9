// Area (box) downscaling, as the packed format's input rule and OpenCV's INTER_AREA: each output
// pixel averages the input interval [o * s, (o + 1) * s), s = in / out, partly covered pixels
// weighted by their covered fraction. Width pass, then height pass; every product and sum rounded
// to float32 in the order of kernels.reference.resize_area, so the two agree bit for bit. The input
// resize of a camera frame and the guided filter's subsampling both run here.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace segk {
namespace {

struct AreaTaps {
    int64_t taps = 0;
    std::vector<int64_t> index;  // [out, taps], clamped to the input
    std::vector<float> weight;   // [out, taps], 0 past the input's end
};

// The same float64 arithmetic as reference._area_taps, rounded to float32 at the end.
AreaTaps area_taps(int64_t in_size, int64_t out_size) {
    AreaTaps t;
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    t.taps = static_cast<int64_t>(std::ceil(scale)) + 1;
    t.index.resize(static_cast<size_t>(out_size * t.taps));
    t.weight.resize(static_cast<size_t>(out_size * t.taps));
    for (int64_t o = 0; o < out_size; ++o) {
        const double lo = static_cast<double>(o) * scale, hi = lo + scale;
        const int64_t first = static_cast<int64_t>(std::floor(lo));
        for (int64_t k = 0; k < t.taps; ++k) {
            const int64_t i = first + k;
            const double overlap = std::min(static_cast<double>(i + 1), hi) - std::max(static_cast<double>(i), lo);
            const double w = std::max(overlap, 0.0) / scale;
            t.index[o * t.taps + k] = std::min(i, in_size - 1);
            t.weight[o * t.taps + k] = i >= in_size ? 0.0f : static_cast<float>(w);
        }
    }
    return t;
}

constexpr int64_t kRowsPerItem = 16;

template <typename T>
void width_pass(const T* x, int64_t w, int64_t c, const AreaTaps& t, int64_t out_w, int64_t r0, int64_t r1,
                float* out) {
    for (int64_t r = r0; r < r1; ++r) {
        const T* row = x + r * w * c;
        float* dst = out + r * out_w * c;
        for (int64_t o = 0; o < out_w; ++o) {
            const int64_t* idx = t.index.data() + o * t.taps;
            const float* wt = t.weight.data() + o * t.taps;
            for (int64_t ch = 0; ch < c; ++ch) {
                float acc = static_cast<float>(row[idx[0] * c + ch]) * wt[0];
                for (int64_t k = 1; k < t.taps; ++k) {
                    const float term = static_cast<float>(row[idx[k] * c + ch]) * wt[k];
                    acc = acc + term;
                }
                dst[o * c + ch] = acc;
            }
        }
    }
}

void height_pass(const float* x, int64_t row_values, const AreaTaps& t, int64_t r0, int64_t r1, float* out) {
    for (int64_t o = r0; o < r1; ++o) {
        const int64_t* idx = t.index.data() + o * t.taps;
        const float* wt = t.weight.data() + o * t.taps;
        float* dst = out + o * row_values;
        const float* first = x + idx[0] * row_values;
        for (int64_t v = 0; v < row_values; ++v) dst[v] = first[v] * wt[0];
        for (int64_t k = 1; k < t.taps; ++k) {
            const float* src = x + idx[k] * row_values;
            for (int64_t v = 0; v < row_values; ++v) {
                const float term = src[v] * wt[k];
                dst[v] = dst[v] + term;
            }
        }
    }
}

template <typename T>
void resize_area_impl(const T* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w) {
    const AreaTaps cols = area_taps(w, out_w), rows = area_taps(h, out_h);
    std::vector<float> narrow(static_cast<size_t>(h * out_w * c));
    const int threads = h * w * c < (int64_t{1} << 16) ? 1 : get_num_threads();
    parallel_for(threads, (h + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item) {
        width_pass(x, w, c, cols, out_w, item * kRowsPerItem, std::min(h, (item + 1) * kRowsPerItem),
                   narrow.data());
    });
    parallel_for(threads, (out_h + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item) {
        height_pass(narrow.data(), out_w * c, rows, item * kRowsPerItem, std::min(out_h, (item + 1) * kRowsPerItem),
                    out);
    });
}

}  // namespace

void resize_area(const uint8_t* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w) {
    resize_area_impl(x, h, w, c, out, out_h, out_w);
}

void resize_area(const float* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w) {
    resize_area_impl(x, h, w, c, out, out_h, out_w);
}

}  // namespace segk
