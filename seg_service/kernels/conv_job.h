// Shared description of one binary convolution call, as seen by the per-ISA microkernels.
//
// The driver (dispatch.cpp) turns every call into a *valid* convolution over a copy of the input
// that already carries the +1 padding (zero bit words), so microkernels never test borders.
// Weights are re-arranged into channel blocks of `block` output channels:
//   wblk[cb][step][lane], step = tap * words + word, lane = output channel within the block,
// so one vector load fetches the same (tap, word) of `block` consecutive output channels.
// ISAs that popcount by nibble lookup ask for split weights instead: wblk[cb][step][half][lane],
// half 0 = low nibble of every byte (w & 0x0f..), half 1 = high nibble ((w >> 4) & 0x0f..).
// ISAs with `pair_interleaved_lanes` put, in each group of 16 lanes (two 8-lane vectors), the even
// channels of the group in the first vector and the odd ones in the second: the two vectors' 64-bit
// counts then merge into one vector of 32-bit counts in channel order with a shift and an OR.
// The arrangement is done once per layer and ISA (weight_layout.h).
#pragma once

#include <algorithm>
#include <cstdint>

namespace segk {

struct ConvJob {
    // Padded input bits, [in_h, in_w, words], row-major (already includes padding). For ISAs with
    // nibble-split weights each input word is split the same way: `words` is then twice the packed
    // word count, word 2i holding the low nibbles of packed word i and word 2i + 1 the high ones.
    const uint64_t* in = nullptr;
    int64_t in_w = 0;
    int64_t words = 0;

    int64_t out_h = 0, out_w = 0, out_c = 0;
    int64_t stride = 1;

    // The (tap, word) steps this job's pixels compute: taps that fall on the padding for all of them
    // are left out (the driver splits the output into regions that share their valid taps).
    // step_offset[s] = word offset of step s relative to the pixel's first tap; step_weight[s] = its
    // index among the layer's k * k * words weight steps (nullptr: every step, step_weight[s] = s).
    const int64_t* step_offset = nullptr;
    const int64_t* step_weight = nullptr;
    int64_t steps = 0;

    // Blocked weights (see above), zero-filled for channels >= out_c; `wblk_step` words per step,
    // `wblk_steps` (= k * k * words) steps per channel block.
    const uint64_t* wblk = nullptr;
    int64_t block = 0;
    int64_t wblk_step = 0;
    int64_t wblk_steps = 0;

    // Paths that also count some channels with scalar POPCNT on the integer units (avx2 "mix1",
    // "mix2"): the unsplit padded input (a pixel's base and a step's offset there are half those in
    // `in`) and the weights in the scalar path's 8-channel blocks (block 2 cb + 1 holds channels
    // 8 .. 15 of the 16-channel block cb), `wblk_steps` steps each.
    const uint64_t* in_raw = nullptr;
    const uint64_t* wraw = nullptr;

    // dot = n_channel[c] - 2 * count, where n_channel[c] = k * k * in_channels - 2 * (the +1 padding's
    // mismatches with channel c's weights on the left-out taps: the ones of those weight words). Every
    // tap counts, padded ones included. Padded with entries up to a whole number of 64 channels.
    const int32_t* n_channel = nullptr;

    // Exactly one of out_int / out_f is set.
    int32_t* out_int = nullptr;
    float* out_f = nullptr;
    const float* mul = nullptr;
    const float* bias = nullptr;
    const float* residual = nullptr;  // [out_h, out_w, out_c] or nullptr
    bool relu_before = false;
    bool relu_after = false;

    // With out_f only: also the sign bits of the finished outputs, packed as pack_bits packs them
    // ([out_h * out_w, out_words] words, bit = 1 where the output < 0), for a binary conv that reads
    // this output next. Channel blocks are multiples of 8 channels, so each block writes whole bytes
    // of its own and threads never share one; bytes past the last block are left as the caller
    // zeroed them.
    uint64_t* out_bits = nullptr;
    int64_t out_words = 0;
};

// The byte of out_bits holding channels c .. c + 7 (c a multiple of 8) of pixel p.
inline uint8_t* sign_byte(const ConvJob& job, int64_t p, int64_t c) {
    return reinterpret_cast<uint8_t*>(job.out_bits + p * job.out_words) + c / 8;
}

// Walks output pixels in row-major order and yields the word offset of each one's first tap in
// the padded input, without a division per pixel.
class PixelWalker {
public:
    PixelWalker(const ConvJob& job, int64_t p)
        : out_w_(job.out_w), col_step_(job.stride * job.words), row_step_(job.stride * job.in_w * job.words) {
        const int64_t oy = p / out_w_;
        ox_ = p - oy * out_w_;
        row_base_ = oy * row_step_;
    }
    int64_t base() const { return row_base_ + ox_ * col_step_; }
    void next() {
        if (++ox_ == out_w_) {
            ox_ = 0;
            row_base_ += row_step_;
        }
    }

private:
    int64_t out_w_, col_step_, row_step_;
    int64_t ox_ = 0, row_base_ = 0;
};

// Writes `count` finished dot products of pixel p, channels [c0, c0 + count), through the epilogue.
// Header-inline on purpose: it is inlined into each ISA's target-attributed tile function and so is
// vectorised with that ISA. kFused: mul * pre + bias rounded once, as the ISA's full blocks do with
// FMA (spelled out, not left to the compiler's contraction, which differed between inlining sites).
template <bool kFused>
inline void store_dots(const ConvJob& job, int64_t p, int64_t c0, int64_t count, const int32_t* dots) {
    const int64_t at = p * job.out_c + c0;
    if (job.out_int != nullptr) {
        int32_t* o = job.out_int + at;
        for (int64_t i = 0; i < count; ++i) o[i] = dots[i];
        return;
    }
    float* o = job.out_f + at;  // dots already include n_channel
    const float* m = job.mul + c0;
    const float* b = job.bias + c0;
    float pre[64];  // block <= 64
    for (int64_t i = 0; i < count; ++i) {
        const float v = static_cast<float>(dots[i]);
        pre[i] = job.relu_before ? std::max(v, 0.0f) : v;
    }
    // The residual may be this output itself (a chain adds up in place): read before the write.
    const float* r = job.residual != nullptr ? job.residual + at : nullptr;
    for (int64_t i = 0; i < count; ++i) {
        const float y = kFused ? __builtin_fmaf(m[i], pre[i], b[i]) : m[i] * pre[i] + b[i];
        o[i] = r != nullptr ? y + r[i] : y;
    }
    if (job.relu_after) {
        for (int64_t i = 0; i < count; ++i) o[i] = std::max(o[i], 0.0f);
    }
    if (job.out_bits != nullptr) {
        uint8_t* bytes = sign_byte(job, p, c0);
        for (int64_t b = 0; b * 8 < count; ++b) {
            uint8_t byte = 0;
            for (int64_t i = b * 8; i < std::min(count, b * 8 + 8); ++i)
                byte = static_cast<uint8_t>(byte | (o[i] < 0.0f ? 1u << (i - b * 8) : 0u));
            bytes[b] = byte;
        }
    }
}

// One ISA's entry points.
struct IsaKernels {
    const char* name;
    int64_t block;        // output channels per weight block
    bool nibble_weights;  // weights (and input words) split into low/high nibbles (see the layout note above)
    bool pair_interleaved_lanes;  // even/odd channel split per 16 lanes (see the layout note above)
    // Computes pixels [p_begin, p_end) of channel block cb and stores them through the epilogue.
    void (*conv_tile)(const ConvJob& job, int64_t cb, int64_t p_begin, int64_t p_end);
    // Packs `count` pixels of `channels` floats each (pixel stride `src_stride` floats) into words;
    // pixel i's words go to dst + i * dst_stride. bit = 1 where x < 0.
    void (*pack_pixels)(const float* src, int64_t count, int64_t channels, int64_t src_stride,
                        uint64_t* dst, int64_t dst_stride);
    const char* popcount;  // how it counts bits: "vpopcntq", "lut", "mix1", "mix2", "popcnt"
    // Set for paths that also read weights in another path's layout (ConvJob::wraw): that path.
    const struct IsaKernels* raw_layout;
};

extern const IsaKernels kScalarKernels;
#if defined(__x86_64__) || defined(_M_X64)
extern const IsaKernels kAvx2Kernels;      // nibble lookup ("lut")
extern const IsaKernels kAvx2Mix1Kernels;  // lut + scalar POPCNT, 1-pixel tile ("mix1")
extern const IsaKernels kAvx2Mix2Kernels;  // lut + scalar POPCNT, 2-pixel tile ("mix2")
extern const IsaKernels kAvx512Kernels;
#endif

}  // namespace segk
