#include "weight_layout.h"

#include <algorithm>
#include <atomic>

#include "threadpool.h"

namespace segk {

void arrange_weights(const IsaKernels& kern, const uint64_t* w, int64_t out_c, int64_t steps, int threads,
                     BlockedWeights& out) {
    const int64_t block = kern.block;
    out.block = block;
    out.blocks = (out_c + block - 1) / block;
    out.wblk_step = kern.nibble_weights ? 2 * block : block;
    out.words = AlignedWords(static_cast<size_t>(out.blocks * steps * out.wblk_step));  // zero lanes past out_c
    uint64_t* base = out.words.data();
    const int64_t wstep = out.wblk_step;
    constexpr uint64_t kLowNibbles = 0x0F0F0F0F0F0F0F0FULL;
    auto arrange_block = [&](int64_t cb) {
        const int64_t o_end = std::min(out_c, (cb + 1) * block);
        for (int64_t o = cb * block; o < o_end; ++o) {
            uint64_t* dst = base + cb * steps * wstep + lane_of_channel(kern, o - cb * block);
            const uint64_t* src = w + o * steps;
            for (int64_t st = 0; st < steps; ++st) {
                if (kern.nibble_weights) {
                    dst[st * wstep] = src[st] & kLowNibbles;
                    dst[st * wstep + block] = (src[st] >> 4) & kLowNibbles;
                } else {
                    dst[st * wstep] = src[st];
                }
            }
        }
    };
    // Large weight sets (deep layers) are arranged in parallel; small ones are not worth a wake-up.
    parallel_for(out_c * steps >= (1 << 16) ? threads : 1, out.blocks, arrange_block);
}

void pair_tap_weights(const uint64_t* w, int64_t out_c, uint64_t* out) {
    constexpr uint64_t kLow = 0xFFFFFFFFULL;
    for (int64_t c = 0; c < out_c; ++c) {
        const uint64_t* t = w + c * 9;  // t[ky * 3 + kx]
        uint64_t* o = out + c * kPairedSteps;
        for (int64_t ky = 0; ky < 3; ++ky) o[ky] = (t[ky * 3] & kLow) | (t[ky * 3 + 1] & kLow) << 32;
        o[3] = (t[2] & kLow) | (t[5] & kLow) << 32;
        o[4] = t[8] & kLow;
    }
}

void tail_row_weights(const uint64_t* w, int64_t out_c, int64_t words, uint64_t* out) {
    const int64_t full = words - 1, steps = tail_row_steps(words);
    for (int64_t c = 0; c < out_c; ++c) {
        const uint64_t* t = w + c * 9 * words;  // t[tap * words + word]
        uint64_t* o = out + c * steps;
        for (int64_t tap = 0; tap < 9; ++tap)
            for (int64_t i = 0; i < full; ++i) o[tap * full + i] = t[tap * words + i];
        for (int64_t ky = 0; ky < 3; ++ky) {
            uint64_t row = 0;
            for (int64_t kx = 0; kx < 3; ++kx) row |= t[(ky * 3 + kx) * words + full] << (kTailRowBits * kx);
            o[9 * full + ky] = row;
        }
    }
}

namespace {
std::atomic<uint64_t> g_next_weights_id{1};
}  // namespace

PreparedWeights::PreparedWeights(const uint64_t* w, int64_t out_c, int64_t kernel, int64_t words, bool copy)
    : out_c_(out_c), kernel_(kernel), words_(words), id_(g_next_weights_id.fetch_add(1)), raw_(w) {
    if (copy) {
        owned_.assign(w, w + out_c * kernel * kernel * words);
        raw_ = owned_.data();
    }
}

const BlockedWeights& PreparedWeights::for_isa(const IsaKernels& kern, int threads) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : arranged_)
        if (entry.first == &kern) return *entry.second;
    auto blocked = std::make_unique<BlockedWeights>();
    arrange_weights(kern, raw_, out_c_, kernel_ * kernel_ * words_, threads, *blocked);
    arranged_.emplace_back(&kern, std::move(blocked));
    return *arranged_.back().second;
}

const BlockedWeights& PreparedWeights::for_isa_paired(const IsaKernels& kern, int threads) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : arranged_paired_)
        if (entry.first == &kern) return *entry.second;
    std::vector<uint64_t> paired(static_cast<size_t>(out_c_ * kPairedSteps));
    pair_tap_weights(raw_, out_c_, paired.data());
    auto blocked = std::make_unique<BlockedWeights>();
    arrange_weights(kern, paired.data(), out_c_, kPairedSteps, threads, *blocked);
    arranged_paired_.emplace_back(&kern, std::move(blocked));
    return *arranged_paired_.back().second;
}

const BlockedWeights& PreparedWeights::for_isa_tail_rows(const IsaKernels& kern, int threads) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : arranged_tail_rows_)
        if (entry.first == &kern) return *entry.second;
    const int64_t steps = tail_row_steps(words_);
    std::vector<uint64_t> packed(static_cast<size_t>(out_c_ * steps));
    tail_row_weights(raw_, out_c_, words_, packed.data());
    auto blocked = std::make_unique<BlockedWeights>();
    arrange_weights(kern, packed.data(), out_c_, steps, threads, *blocked);
    arranged_tail_rows_.emplace_back(&kern, std::move(blocked));
    return *arranged_tail_rows_.back().second;
}

const std::vector<int32_t>& PreparedWeights::padded_tap_ones(int64_t ky0, int64_t ky1, int64_t kx0,
                                                              int64_t kx1) const {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t k = kernel_, taps = k * k;
    if (tap_ones_.empty()) {
        tap_ones_.assign(static_cast<size_t>(out_c_ * taps), 0);
        for (int64_t i = 0; i < out_c_ * taps; ++i) {
            int32_t ones = 0;
            for (int64_t wd = 0; wd < words_; ++wd) ones += __builtin_popcountll(raw_[i * words_ + wd]);
            tap_ones_[static_cast<size_t>(i)] = ones;
        }
    }
    auto [it, added] = padded_tap_ones_.try_emplace({ky0, ky1, kx0, kx1});
    if (added) {
        std::vector<int32_t>& ones = it->second;
        ones.assign(static_cast<size_t>(out_c_), 0);
        for (int64_t c = 0; c < out_c_; ++c)
            for (int64_t ky = 0; ky < k; ++ky)
                for (int64_t kx = 0; kx < k; ++kx)
                    if (ky < ky0 || ky >= ky1 || kx < kx0 || kx >= kx1)
                        ones[static_cast<size_t>(c)] += tap_ones_[static_cast<size_t>(c * taps + ky * k + kx)];
    }
    return it->second;  // std::map nodes stay put when others are added
}

std::shared_ptr<const void> PreparedWeights::plan(const std::vector<int64_t>& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < plans_.size(); ++i) {
        if (plans_[i].first != key) continue;
        const auto at = plans_.begin() + static_cast<std::ptrdiff_t>(i);
        std::rotate(at, at + 1, plans_.end());  // now the most recently used
        return plans_.back().second;
    }
    return nullptr;
}

void PreparedWeights::keep_plan(std::vector<int64_t> key, std::shared_ptr<const void> plan) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : plans_)
        if (entry.first == key) return;  // another thread kept the same plan first
    if (plans_.size() >= kMaxPlans) plans_.erase(plans_.begin());
    plans_.emplace_back(std::move(key), std::move(plan));
}

}  // namespace segk
