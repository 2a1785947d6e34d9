// Bilinear resampling taps (align_corners=False), shared by upsample_bilinear (float_ops.cpp) and
// the guided filter's coefficient upsampling (guided_filter.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace segk {

struct Tap {
    int64_t i0, i1;
    float frac;
};

// Output i samples the input at (i + 0.5) * in / out - 0.5, clamped at 0; frac weights i1.
inline std::vector<Tap> linear_taps(int64_t in_size, int64_t out_size) {
    std::vector<Tap> taps(static_cast<size_t>(out_size));
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    for (int64_t i = 0; i < out_size; ++i) {
        const double src = std::max(0.0, (static_cast<double>(i) + 0.5) * scale - 0.5);
        const int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in_size - 1);
        taps[static_cast<size_t>(i)] = {i0, std::min(i0 + 1, in_size - 1), static_cast<float>(src - static_cast<double>(i0))};
    }
    return taps;
}

}  // namespace segk
