// Binary weights re-arranged into the layout an ISA path's microkernel reads (see conv_job.h).
//
// The layout depends only on the weights and the ISA path, so a model arranges each layer's weights
// once (PreparedWeights, kept for the model's lifetime) instead of on every call; calls that pass
// plain weight arrays arrange them into a temporary on the fly.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "conv_job.h"

namespace segk {

// A buffer of u64 words whose data() is 64-byte aligned (whole-line vector loads). Zero-filled unless
// asked not to (buffers that the caller overwrites completely skip the fill).
class AlignedWords {
public:
    AlignedWords() = default;
    explicit AlignedWords(size_t count, bool zero = true) : storage_(new uint64_t[count + 8]) {
        const auto addr = reinterpret_cast<uintptr_t>(storage_.get());
        data_ = storage_.get() + ((64 - addr % 64) % 64) / sizeof(uint64_t);
        if (zero) std::fill(data_, data_ + count, uint64_t{0});
    }
    uint64_t* data() { return data_; }
    const uint64_t* data() const { return data_; }

private:
    std::unique_ptr<uint64_t[]> storage_;
    uint64_t* data_ = nullptr;
};

// One ISA path's arrangement of a layer's weights: wblk[cb][step][...] as described in conv_job.h.
struct BlockedWeights {
    int64_t block = 0;      // output channels per block
    int64_t blocks = 0;     // ceil(out_c / block)
    int64_t wblk_step = 0;  // words per (block, step)
    AlignedWords words;
};

// Position of output channel `c` (0 <= c < kern.block) inside its block's lanes.
inline int64_t lane_of_channel(const IsaKernels& kern, int64_t c) {
    if (!kern.pair_interleaved_lanes) return c;
    // Groups of 16 channels over two 8-lane vectors: even channels in the first, odd in the second.
    return c / 16 * 16 + (c % 2) * 8 + (c % 16) / 2;
}

// Paired taps of a 3x3 kernel over <= 32 channels (one word per tap, channels in its low half): a
// pixel's 9 taps x 32 bits go in 5 words instead of 9, two taps per word where it can:
//   step 0..2: taps (ky, 0) | (ky, 1) << 32 for ky = 0, 1, 2 (the input's "row pair" word)
//   step 3:    taps (0, 2) | (1, 2) << 32                    (the input's "column pair" word)
//   step 4:    tap (2, 2)                                    (the input's own word)
constexpr int64_t kPairedSteps = 5;
// Raw weights [out_c, 9] -> [out_c, kPairedSteps] as above (upper halves of the taps masked off).
void pair_tap_weights(const uint64_t* w, int64_t out_c, uint64_t* out);

// Row-packed tails of a 3x3 kernel whose input's last word holds at most kTailRowBits channels
// (e.g. 80 channels: one full word and 16 channels): the three taps of a kernel row share one word
// for their last words, tap (ky, kx)'s at bit kTailRowBits * kx, so a pixel's 9 taps take
// 9 * (words - 1) + 3 steps instead of 9 * words:
//   step (ky * 3 + kx) * (words - 1) + i: word i < words - 1 of tap (ky, kx), as in the plain layout
//   step 9 * (words - 1) + ky:            last words of taps (ky, 0), (ky, 1), (ky, 2) (the input's
//                                          "row" word: its own last word and the two to its right)
constexpr int64_t kTailRowBits = 21;
constexpr int64_t kTailRowSteps = 3;
inline int64_t tail_row_steps(int64_t words) { return 9 * (words - 1) + kTailRowSteps; }
// Raw weights [out_c, 9, words] (last words clean past kTailRowBits) -> [out_c, tail_row_steps(words)].
void tail_row_weights(const uint64_t* w, int64_t out_c, int64_t words, uint64_t* out);

// Arranges raw weights [out_c, steps] (steps = k * k * words) for `kern`, on up to `threads` threads.
void arrange_weights(const IsaKernels& kern, const uint64_t* w, int64_t out_c, int64_t steps, int threads,
                     BlockedWeights& out);

// A layer's packed weights [out_c, k, k, words] plus their arrangement for each ISA path used so far.
// Thread-safe: concurrent calls may share one PreparedWeights.
class PreparedWeights {
public:
    // Copies the weights when `copy` is true; otherwise `w` must outlive this object.
    PreparedWeights(const uint64_t* w, int64_t out_c, int64_t kernel, int64_t words, bool copy);

    int64_t out_c() const { return out_c_; }
    int64_t kernel() const { return kernel_; }
    int64_t words() const { return words_; }
    const uint64_t* raw() const { return raw_; }

    // The arrangement for `kern`, built on first use (with up to `threads` threads) and cached.
    const BlockedWeights& for_isa(const IsaKernels& kern, int threads) const;

    // 3x3 layers of at most 32 input channels (one word per tap, its upper half zero): the weights of
    // the five paired-tap steps (pair_tap_weights above) arranged for `kern`, built on first use
    // and cached like for_isa.
    const BlockedWeights& for_isa_paired(const IsaKernels& kern, int threads) const;

    // 3x3 layers whose input's last word holds at most kTailRowBits channels: the weights of the
    // row-packed tail steps (tail_row_weights above) arranged for `kern`, built on first use and
    // cached like for_isa.
    const BlockedWeights& for_isa_tail_rows(const IsaKernels& kern, int threads) const;

    // Per output channel, the mismatches of the +1 padding with the weights of every tap outside
    // rows [ky0, ky1) x columns [kx0, kx1) (the ones of those taps' weight words): what those taps
    // add to the count of a pixel for which they all lie on the padding. Cached per tap window.
    const std::vector<int32_t>& padded_tap_ones(int64_t ky0, int64_t ky1, int64_t kx0, int64_t kx1) const;

    // A number no other PreparedWeights of this process ever has (addresses are reused; these are not).
    uint64_t id() const { return id_; }

    // The conv driver's plans of calls on these weights (dispatch.cpp: regions, per-channel constants,
    // work items), by a key of the call's geometry, path and threads; type-erased, so this header
    // need not know them. The kMaxPlans most recently used are kept; nullptr when none matches.
    std::shared_ptr<const void> plan(const std::vector<int64_t>& key) const;
    void keep_plan(std::vector<int64_t> key, std::shared_ptr<const void> plan) const;
    static constexpr size_t kMaxPlans = 4;

private:
    int64_t out_c_, kernel_, words_;
    uint64_t id_;
    std::vector<uint64_t> owned_;
    const uint64_t* raw_;
    mutable std::mutex mu_;
    mutable std::vector<std::pair<const IsaKernels*, std::unique_ptr<BlockedWeights>>> arranged_;
    mutable std::vector<std::pair<const IsaKernels*, std::unique_ptr<BlockedWeights>>> arranged_paired_;
    mutable std::vector<std::pair<const IsaKernels*, std::unique_ptr<BlockedWeights>>> arranged_tail_rows_;
    mutable std::vector<int32_t> tap_ones_;  // [out_c * k * k]: ones of each (channel, tap)'s words
    mutable std::map<std::array<int64_t, 4>, std::vector<int32_t>> padded_tap_ones_;
    mutable std::vector<std::pair<std::vector<int64_t>, std::shared_ptr<const void>>> plans_;  // oldest first
};

}  // namespace segk
