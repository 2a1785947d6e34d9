// Scalar sign-bit packing along channels: bit i of word j is channel 64*j + i, 1 where x < 0.
// Zero (and -0.0) pack as +1 (bit 0); NaN compares false and so also packs as +1.
#pragma once

#include <cstdint>

namespace segk {

inline int64_t words_for(int64_t channels) { return (channels + 63) / 64; }

// Packs channels [first, channels) of one pixel into dst words, ORing into dst[first / 64 ...].
// `first` must be a multiple of 64 or the caller must have zeroed/filled the words it shares.
inline void pack_pixel_scalar(const float* x, int64_t first, int64_t channels, uint64_t* dst) {
    for (int64_t base = first; base < channels; base += 64) {
        const int64_t len = (channels - base < 64) ? channels - base : 64;
        uint64_t word = 0;
        for (int64_t i = 0; i < len; ++i) word |= static_cast<uint64_t>(x[base + i] < 0.0f) << i;
        dst[base / 64] = word;
    }
}

}  // namespace segk
