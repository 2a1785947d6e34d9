// Run-time ISA choice, threading and the convolution driver shared by every ISA path.
#include <time.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "bitpack.h"
#include "conv_job.h"
#include "kernels.h"
#include "threadpool.h"
#include "weight_layout.h"

namespace segk {
namespace {

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
#else
    return false;
#endif
}

// Best first.
std::vector<const IsaKernels*> supported_kernels() {
    std::vector<const IsaKernels*> out;
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx512()) out.push_back(&kAvx512Kernels);
    if (cpu_has_avx2()) out.push_back(&kAvx2Kernels);
#endif
    out.push_back(&kScalarKernels);
    return out;
}

std::atomic<const IsaKernels*> g_kernels{supported_kernels().front()};
std::atomic<int> g_threads{available_processors()};

// --- Popcount method of the avx2 path: "lut", "mix1" or "mix2" (bconv_avx2.cpp). Which is fastest
// depends on the CPU's ports (vector shuffles vs integer POPCNT units), so unless one is forced
// (set_popcount, env SEG_POPCOUNT through the Python package), a short calibration on the first
// avx2 call times the three microkernels on a synthetic layer and keeps the fastest.
#if defined(__x86_64__) || defined(_M_X64)
const IsaKernels* const kAvx2Variants[] = {&kAvx2Kernels, &kAvx2Mix1Kernels, &kAvx2Mix2Kernels};
#endif
constexpr int kAvx2VariantCount = 3;
std::atomic<int> g_avx2_choice{-1};     // index into kAvx2Variants; -1: not chosen yet
std::atomic<bool> g_avx2_forced{false};  // chosen by set_popcount, not by calibration
std::mutex g_calibration_mu;
std::vector<double> g_calibration_ns;  // per variant: best thread CPU ns of the calibration work

double thread_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return 1e9 * static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec);
}

#if defined(__x86_64__) || defined(_M_X64)
// A mix variant must beat lut by this factor to be chosen (timing noise must not flip a tie).
constexpr double kMixMargin = 0.97;

int calibrate_avx2() {
    std::lock_guard<std::mutex> lock(g_calibration_mu);
    const int chosen = g_avx2_choice.load();
    if (chosen >= 0) return chosen;
    // Synthetic 3x3 layer, 256 input channels (4 words), 32 output channels (two blocks of 16),
    // 8 x 8 output pixels over a 10 x 10 input: L1-resident, about 5 M binary MACs per pass.
    constexpr int64_t kWords = 4, kSide = 10, kOut = 8, kOutC = 32, kK = 3;
    uint64_t state = 0x9e3779b97f4a7c15ULL;
    auto next = [&state]() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return state;
    };
    std::vector<uint64_t> raw(static_cast<size_t>(kSide * kSide * kWords)), split(2 * raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
        raw[i] = next();
        split[2 * i] = raw[i] & 0x0F0F0F0F0F0F0F0FULL;
        split[2 * i + 1] = (raw[i] >> 4) & 0x0F0F0F0F0F0F0F0FULL;
    }
    std::vector<uint64_t> w(static_cast<size_t>(kOutC * kK * kK * kWords));
    for (uint64_t& x : w) x = next();
    const PreparedWeights pw(w.data(), kOutC, kK, kWords, false);
    const BlockedWeights& nib = pw.for_isa(kAvx2Kernels, 1);
    const BlockedWeights& scal = pw.for_isa(kScalarKernels, 1);
    std::vector<int64_t> offsets;
    for (int64_t ky = 0; ky < kK; ++ky)
        for (int64_t kx = 0; kx < kK; ++kx)
            for (int64_t wd = 0; wd < kWords; ++wd) offsets.push_back((ky * kSide + kx) * 2 * kWords + 2 * wd);
    std::vector<int32_t> n_channel(kOutC + 64, static_cast<int32_t>(kK * kK * kWords * 64));
    ConvJob job;
    job.in = split.data();
    job.in_raw = raw.data();
    job.in_w = kSide;
    job.words = 2 * kWords;
    job.out_h = kOut;
    job.out_w = kOut;
    job.out_c = kOutC;
    job.step_offset = offsets.data();
    job.steps = static_cast<int64_t>(offsets.size());
    job.wblk = nib.words.data();
    job.block = nib.block;
    job.wblk_step = nib.wblk_step;
    job.wblk_steps = kK * kK * kWords;
    job.wraw = scal.words.data();
    job.n_channel = n_channel.data();
    std::vector<std::vector<int32_t>> outs(kAvx2VariantCount, std::vector<int32_t>(kOut * kOut * kOutC));
    std::vector<double> best(kAvx2VariantCount, 1e300);
    for (int trial = 0; trial < 7; ++trial) {
        for (int v = 0; v < kAvx2VariantCount; ++v) {
            job.out_int = outs[static_cast<size_t>(v)].data();
            const double t0 = thread_ns();
            for (int rep = 0; rep < 8; ++rep)
                for (int64_t cb = 0; cb < nib.blocks; ++cb) kAvx2Variants[v]->conv_tile(job, cb, 0, kOut * kOut);
            best[static_cast<size_t>(v)] = std::min(best[static_cast<size_t>(v)], thread_ns() - t0);
        }
    }
    int choice = 0;
    for (int v = 1; v < kAvx2VariantCount; ++v) {
        const bool same = outs[static_cast<size_t>(v)] == outs[0];  // never choose a variant that disagrees
        if (same && best[static_cast<size_t>(v)] < kMixMargin * best[0] &&
            best[static_cast<size_t>(v)] < best[static_cast<size_t>(choice)])
            choice = v;
    }
    g_calibration_ns = best;
    g_avx2_choice.store(choice);
    return choice;
}
#endif

// The microkernels to run for a path: the avx2 path's chosen popcount variant, else the path itself.
const IsaKernels& resolve(const IsaKernels& path) {
#if defined(__x86_64__) || defined(_M_X64)
    if (&path == &kAvx2Kernels) {
        int choice = g_avx2_choice.load();
        if (choice < 0) choice = calibrate_avx2();
        return *kAvx2Variants[choice];
    }
#endif
    return path;
}

// Work items are (channel block, pixel chunk) pairs handed out dynamically (threadpool.h). One
// thread walks the whole map per channel block. Several threads get about 16 items each, so that a
// helper that starts late or runs on a busier core leaves at most a small item to wait for at the
// end, but every item keeps at least ~2 M binary MACs (a couple of microseconds) so that claiming it
// and re-reading its weight block stay cheap. The chunks of a block are made equal and whole
// multiples of the AVX-512 pixel tile (6; the avx2 tiles are 1, 2 and 4 pixels, and chunks become
// whole rows of the map anyway, below).
int64_t pixel_chunk_length(int64_t blocks, int64_t pixels, double macs_per_pixel_block, int threads) {
    if (threads <= 1) return pixels;
    constexpr int64_t kItemsPerThread = 16, kTile = 6;
    constexpr double kMinItemMacs = 2e6;
    const int64_t wanted_chunks = (kItemsPerThread * threads + blocks - 1) / blocks;
    int64_t len = (pixels + wanted_chunks - 1) / wanted_chunks;
    len = std::max(len, static_cast<int64_t>(kMinItemMacs / std::max(1.0, macs_per_pixel_block)) + 1);
    const int64_t chunks = (pixels + len - 1) / len;
    len = (pixels + chunks - 1) / chunks;
    len = (len + kTile - 1) / kTile * kTile;
    return std::min(len, pixels);
}

// Output coordinates [o0, o1) along one axis whose valid taps (those not on the padding) are
// exactly k0 .. k1 - 1 (k1 <= k0: all taps are padding).
struct TapRun {
    int64_t o0, o1, k0, k1;
};

std::vector<TapRun> tap_runs(int64_t out, int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
    std::vector<TapRun> runs;
    for (int64_t o = 0; o < out; ++o) {
        int64_t k0 = 0, k1 = 0;
        // Taps at o * stride - pad + t * dilation; the valid ones form one interval of t.
        while (k0 < k && o * stride - pad + k0 * dilation < 0) ++k0;
        k1 = k0;
        while (k1 < k && o * stride - pad + k1 * dilation < in) ++k1;
        if (!runs.empty() && runs.back().k0 == k0 && runs.back().k1 == k1)
            runs.back().o1 = o + 1;
        else
            runs.push_back({o, o + 1, k0, k1});
    }
    return runs;
}

bool covers_all_taps(const TapRun& rows, const TapRun& cols, int64_t k) {
    return rows.k0 == 0 && rows.k1 == k && cols.k0 == 0 && cols.k1 == k;
}

// Merges adjacent runs where splitting saves less than it costs. A merged run computes the union of
// its runs' valid taps: taps on the padding for some of its pixels then read the zero words, which
// is still exact. Cost of a run: length x computed taps + `run_cost` (the price of one more region:
// partial register tiles, smaller work items), in units of one pixel's tap along this axis. Exact
// by dynamic programming over the <= 2k + 1 runs.
std::vector<TapRun> merge_runs(const std::vector<TapRun>& runs, int64_t run_cost) {
    const size_t n = runs.size();
    std::vector<int64_t> best(n + 1, 0);
    std::vector<size_t> cut(n + 1, 0);
    for (size_t j = 1; j <= n; ++j) {
        best[j] = -1;
        int64_t k0 = runs[j - 1].k0, k1 = runs[j - 1].k1;
        for (size_t i = j; i-- > 0;) {  // group runs[i .. j)
            k0 = std::min(k0, runs[i].k0);
            k1 = std::max(k1, runs[i].k1);
            const int64_t cost = best[i] + (runs[j - 1].o1 - runs[i].o0) * std::max<int64_t>(0, k1 - k0) + run_cost;
            if (best[j] < 0 || cost <= best[j]) {  // ties: the longer group (fewer regions)
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    std::vector<TapRun> merged;
    for (size_t j = n; j > 0; j = cut[j]) {
        TapRun r{runs[cut[j]].o0, runs[j - 1].o1, runs[j - 1].k0, runs[j - 1].k1};
        for (size_t i = cut[j]; i < j; ++i) {
            r.k0 = std::min(r.k0, runs[i].k0);
            r.k1 = std::max(r.k1, runs[i].k1);
        }
        merged.insert(merged.begin(), r);
    }
    return merged;
}

// Prices of one more region along each axis for merge_runs (pixel-taps), tuned on the 512x512
// Group-Net's and the ResNet-18 layer shapes (AVX-512). A row region is still one run of pixels,
// so rows split whenever a tap lies on the padding (1 thread: 7x7 1.07x, 14x14 1.03x, larger maps
// +-3%); a column region is walked row by row, so columns split only at larger dilations (64x64
// maps, 2 threads: dilation 6 1.10x, 10 1.20x, the ASPP's 12, 24, 36 1.25x, 1.6x, 2.1x).
constexpr int64_t kRowRunCost = 0;
constexpr int64_t kColumnRunCost = 4;

// Paired taps (run_conv 1a) up to this dilation: beyond it most taps of a small map fall on the
// padding, which the paired steps compute while the per-region steps leave them out.
constexpr int64_t kPairedMaxDilation = 4;

// Binary MACs per thread at least (~1-2 us on one core; threads_for): the person model's 1x1
// stride-2 shortcuts go to two threads. With a single 16 M threshold (until the twenty-fifth
// session) they and the small float ops ran on one; lowering them all made two-thread predict
// 2-3 % faster (docs/benchmarks.md).
constexpr double kMinMacsPerThread = 1e6;
// Inputs of at least this many bytes are packed / padded on all threads.
constexpr int64_t kMinParallelInputBytes = int64_t{1} << 20;
// Nibble-split inputs (avx2) and paired-tap words (avx2 and avx512) of at least this many bytes are
// written on all threads of a parallel call: the helpers are awake for the conv anyway. On one
// thread, the split of a 66x82 padded 80-channel map and the paired words of a 32-channel one took
// several percent of their convs' time on two threads (avx512, the person model at 320x240: about
// 1 % of predict); smaller maps (person's 8x10 to 32x40) ran no faster split in two.
constexpr int64_t kMinParallelSplitBytes = int64_t{64} << 10;

// Pixels per sub-range of a chain: each base's tiles of the same output pixels follow each other
// while those outputs (48 x 32 floats per channel block) are still in the L1 cache.
constexpr int64_t kChainPixels = 48;

// Everything of a convolution call that depends only on its geometry, its weights, the ISA path and
// the thread count: the input's layout flags, the output regions with their steps and per-channel
// constants, and the work items. A model runs the same convs on every frame, and building these
// took some 5 us per call (a person frame makes 41 conv calls), so conv_plan keeps them with the
// first base's weights, per key, and run_conv only fills in the call's buffers.
struct ConvPlan {
    int threads = 1;
    bool tail_rows = false, paired = false, split_pairs = false, split_now = false;
    int64_t padded_h = 0, padded_w = 0;
    int64_t pixel_words = 0;  // words per padded input pixel as the microkernels read them
    int64_t in_words = 0, word_stride = 1;
    int64_t weight_steps = 0;  // (tap, word) weight steps per channel block in this layout
    struct Region {
        int64_t y0, y1, x0, x1;
        bool all_taps;  // no tap of the region on the padding: the weight steps run in order
        std::vector<int64_t> step_offset, step_weight;
        std::vector<std::vector<int32_t>> n_channel;  // per base
    };
    std::vector<Region> regions;
    struct Item {
        int64_t region, cb, y0, y1;
    };
    std::vector<Item> items;
    int64_t blocks = 0, block = 1;
};

// The weights of base `pw` as `path` arranges them for a plan's layout (paired taps, row-packed tails
// or plain).
const BlockedWeights& plan_weights(const ConvPlan& plan, const PreparedWeights& pw, const IsaKernels& path) {
    return plan.paired      ? pw.for_isa_paired(path, plan.threads)
           : plan.tail_rows ? pw.for_isa_tail_rows(path, plan.threads)
                            : pw.for_isa(path, plan.threads);
}

std::shared_ptr<const ConvPlan> make_conv_plan(const PreparedWeights* const* pws, int64_t bases, const ConvShape& s,
                                               const IsaKernels& path, const IsaKernels& kern, int requested_threads) {
    auto plan = std::make_shared<ConvPlan>();
    ConvPlan& p = *plan;
    const int64_t words = s.words, k = s.kernel, pad = s.padding;
    p.padded_h = s.in_h + 2 * pad;
    p.padded_w = s.in_w + 2 * pad;
    const double binary_macs =
        static_cast<double>(s.out_h * s.out_w) * static_cast<double>(bases * s.out_c * k * k * s.in_channels);
    p.threads = threads_for(binary_macs, kMinMacsPerThread, requested_threads);

    // Input layouts (run_conv steps 0, 1a and 1b say what each means).
    const int64_t tail_bits = s.in_channels - (words - 1) * 64;
    p.tail_rows = &path == &kAvx2Kernels && k == 3 && tail_bits <= kTailRowBits && s.dilation <= kPairedMaxDilation;
    p.paired = (&path == &kAvx2Kernels || &path == &kAvx512Kernels) && k == 3 && words == 1 && s.in_channels <= 32 &&
               s.dilation <= kPairedMaxDilation && !p.tail_rows;
    p.split_pairs = p.paired && kern.nibble_weights && kern.raw_layout == nullptr;
    p.split_now = kern.nibble_weights && !p.split_pairs;
    p.pixel_words = p.paired ? 3 : words;
    p.in_words = p.split_pairs || p.split_now ? 2 * p.pixel_words : p.pixel_words;
    p.word_stride = p.split_pairs || p.split_now ? 2 : 1;
    p.weight_steps = p.paired ? kPairedSteps : p.tail_rows ? tail_row_steps(words) : k * k * words;
    const int64_t in_words = p.in_words, word_stride = p.word_stride, padded_w = p.padded_w;
    // Channel blocks: the same for every base (one out_c, one path).
    const BlockedWeights& first = plan_weights(p, *pws[0], path);
    p.blocks = first.blocks;
    p.block = first.block;
    const int64_t n_padded = p.blocks * p.block + 64, n_all = k * k * s.in_channels;

    // Regions of the output whose pixels share the same valid taps (run_conv step 2), each with its
    // steps and, per base, the count every pixel starts from (step 3).
    const bool one_region = p.paired || p.tail_rows;
    const std::vector<TapRun> row_runs =
        one_region ? std::vector<TapRun>{{0, s.out_h, 0, k}}
                   : merge_runs(tap_runs(s.out_h, s.in_h, k, s.stride, pad, s.dilation), kRowRunCost);
    const std::vector<TapRun> col_runs =
        one_region ? std::vector<TapRun>{{0, s.out_w, 0, k}}
                   : merge_runs(tap_runs(s.out_w, s.in_w, k, s.stride, pad, s.dilation), kColumnRunCost);
    p.regions.reserve(row_runs.size() * col_runs.size());
    for (const TapRun& ry : row_runs) {
        for (const TapRun& rx : col_runs) {
            ConvPlan::Region r{ry.o0, ry.o1, rx.o0, rx.o1, covers_all_taps(ry, rx, k), {}, {}, {}};
            if (p.paired) {  // word offsets of weight_layout.h's kPairedSteps (3 words per pixel)
                const int64_t d = s.dilation;
                const int64_t pair_at[kPairedSteps][3] = {{0, 0, 0}, {d, 0, 0}, {2 * d, 0, 0}, {0, 2 * d, 1}, {2 * d, 2 * d, 2}};
                for (const auto& at : pair_at) {
                    r.step_offset.push_back((at[0] * padded_w + at[1]) * in_words + at[2] * word_stride);
                    r.step_weight.push_back(static_cast<int64_t>(r.step_weight.size()));
                }
            } else if (p.tail_rows) {  // weight_layout.h's row-packed tail steps
                const int64_t d = s.dilation, full = words - 1;
                for (int64_t tap = 0; tap < 9; ++tap)
                    for (int64_t wd = 0; wd < full; ++wd)
                        r.step_offset.push_back(((tap / 3) * d * padded_w + (tap % 3) * d) * in_words +
                                                wd * word_stride);
                for (int64_t ky = 0; ky < 3; ++ky)
                    r.step_offset.push_back(ky * d * padded_w * in_words + full * word_stride);
                for (size_t i = 0; i < r.step_offset.size(); ++i) r.step_weight.push_back(static_cast<int64_t>(i));
            } else {
                for (int64_t ky = ry.k0; ky < ry.k1; ++ky)
                    for (int64_t kx = rx.k0; kx < rx.k1; ++kx)
                        for (int64_t wd = 0; wd < words; ++wd) {
                            r.step_offset.push_back((ky * s.dilation * padded_w + kx * s.dilation) * in_words +
                                                    wd * word_stride);
                            r.step_weight.push_back((ky * k + kx) * words + wd);
                        }
            }
            for (int64_t j = 0; j < bases; ++j) {
                std::vector<int32_t> n_channel(static_cast<size_t>(n_padded), static_cast<int32_t>(n_all));
                if (!r.all_taps) {
                    const std::vector<int32_t>& padded = pws[j]->padded_tap_ones(ry.k0, ry.k1, rx.k0, rx.k1);
                    for (int64_t c = 0; c < s.out_c; ++c)
                        n_channel[static_cast<size_t>(c)] -= 2 * padded[static_cast<size_t>(c)];
                }
                r.n_channel.push_back(std::move(n_channel));
            }
            p.regions.push_back(std::move(r));
        }
    }

    // Work items (run_conv step 4).
    for (int64_t ri = 0; ri < static_cast<int64_t>(p.regions.size()); ++ri) {
        const ConvPlan::Region& r = p.regions[static_cast<size_t>(ri)];
        const int64_t width = r.x1 - r.x0, rows = r.y1 - r.y0;
        const double macs_per_pixel_block =
            static_cast<double>(bases * p.block * 64) * static_cast<double>(std::max<size_t>(1, r.step_offset.size()));
        const int64_t chunk_pixels = pixel_chunk_length(p.blocks, rows * width, macs_per_pixel_block, p.threads);
        const int64_t chunk_rows = std::max<int64_t>(1, chunk_pixels / width);
        // Rows outermost: each thread's share of the items (threadpool.h) is then a band of rows,
        // the band the ops before and after this one give it too.
        for (int64_t y = r.y0; y < r.y1; y += chunk_rows)
            for (int64_t cb = 0; cb < p.blocks; ++cb) p.items.push_back({ri, cb, y, std::min(r.y1, y + chunk_rows)});
    }
    return plan;
}

// The plan of a call: kept with pws[0], keyed by everything make_conv_plan reads (the other bases
// by their ids, which no other weights ever take).
std::shared_ptr<const ConvPlan> conv_plan(const PreparedWeights* const* pws, int64_t bases, const ConvShape& s,
                                          const IsaKernels& path, const IsaKernels& kern, int requested_threads) {
    std::vector<int64_t> key = {s.in_h,     s.in_w,    s.words,   s.out_c, s.kernel, s.in_channels,
                                s.stride,   s.padding, s.dilation, s.out_h, s.out_w,  bases,
                                requested_threads,
                                static_cast<int64_t>(reinterpret_cast<intptr_t>(&path)),
                                static_cast<int64_t>(reinterpret_cast<intptr_t>(&kern))};
    for (int64_t j = 1; j < bases; ++j) key.push_back(static_cast<int64_t>(pws[j]->id()));
    if (std::shared_ptr<const void> kept = pws[0]->plan(key)) return std::static_pointer_cast<const ConvPlan>(kept);
    std::shared_ptr<const ConvPlan> plan = make_conv_plan(pws, bases, s, path, kern, requested_threads);
    pws[0]->keep_plan(std::move(key), plan);
    return plan;
}

// A convolution, or a chain of `bases` convolutions of one input and shape whose epilogues add up:
// base j's epilogue takes base j - 1's output as its residual (base 0 takes eps[0].residual), and
// only the last one's output is stored (intermediate ones live in cache only). ep == nullptr: raw
// dots (one base).
void run_conv(const uint64_t* a, const float* x, const PreparedWeights* const* pws, int64_t bases, const ConvShape& s,
              int32_t* out_int, float* out_f, const Epilogue* eps) {
    const IsaKernels& path = *g_kernels.load();  // weight layout (shared by a path's popcount variants)
    const IsaKernels& kern = resolve(path);         // microkernels
    const std::shared_ptr<const ConvPlan> plan_ptr = conv_plan(pws, bases, s, path, kern, g_threads.load());
    const ConvPlan& plan = *plan_ptr;
    const int threads = plan.threads;
    const int64_t words = s.words, pad = s.padding;
    const int64_t padded_h = plan.padded_h, padded_w = plan.padded_w;

    // 0. Row-packed tails (avx2, 3x3, the input's last word holding at most kTailRowBits channels,
    //    e.g. 80 channels = one full word and 16 channels): the lookup path spends as long on a
    //    partial word as on a full one, so the last words of a kernel row's three taps share one word
    //    (weight_layout.h): 9 * (words - 1) + 3 steps per output pixel instead of 9 * words (80
    //    channels: 12 instead of 18). The input's last word of each padded pixel becomes its "row"
    //    word, own | right << kTailRowBits | right of right << 2 kTailRowBits (taken as zero past
    //    the map's edge, where no tap reads them), written in step 1; the conv runs over every tap,
    //    the padding included (one region).
    const bool tail_rows = plan.tail_rows;

    // 1. Input bits with the +1 padding as zero words around them (packed from floats, or copied). Only
    //    the border is zeroed: every interior word is written.
    const uint64_t* in = a;
    const bool need_buffer = x != nullptr || pad > 0 || tail_rows;
    AlignedWords padded(need_buffer ? static_cast<size_t>(padded_h * padded_w * words) : 0, false);
    if (need_buffer) {
        uint64_t* dst = padded.data();
        const int64_t row_words = padded_w * words;
        const int64_t input_bytes = s.in_h * s.in_w * (x != nullptr ? s.in_channels * 4 : words * 8);
        parallel_for(input_bytes >= kMinParallelInputBytes ? threads : 1, padded_h, [&](int64_t py) {
            uint64_t* row = dst + py * row_words;
            const int64_t y = py - pad;
            if (y < 0 || y >= s.in_h) {
                std::fill(row, row + row_words, uint64_t{0});
                return;
            }
            std::fill(row, row + pad * words, uint64_t{0});
            std::fill(row + (pad + s.in_w) * words, row + row_words, uint64_t{0});
            if (x != nullptr)
                kern.pack_pixels(x + y * s.in_w * s.in_channels, s.in_w, s.in_channels, s.in_channels,
                                 row + pad * words, words);
            else
                std::memcpy(row + pad * words, a + y * s.in_w * words,
                            static_cast<size_t>(s.in_w * words) * sizeof(uint64_t));
            if (tail_rows) {  // in place, left to right: a row word reads the words to its right
                const int64_t d = s.dilation, last = words - 1;
                for (int64_t px = 0; px < padded_w; ++px) {
                    uint64_t word = row[px * words + last];
                    if (px + d < padded_w) word |= row[(px + d) * words + last] << kTailRowBits;
                    if (px + 2 * d < padded_w) word |= row[(px + 2 * d) * words + last] << (2 * kTailRowBits);
                    row[px * words + last] = word;
                }
            }
        });
        in = dst;
    }

    // 1a. Paired taps (avx2 and avx512, 3x3, <= 32 input channels): a 32-channel pixel fills only
    //     half of its word, so the microkernel would spend half of every step on zero bits, and 9
    //     steps per pixel leave the per-tile sums and epilogue a large share. Instead each pixel gets
    //     three words, [row pair = in(y, x) | in(y, x + d) << 32, column pair = in(y, x) |
    //     in(y + d, x) << 32, in(y, x)], and the conv runs over the 5 steps of weight_layout.h's
    //     kPairedSteps (every tap, the padding included: one region). Neighbours past the map's edge
    //     (never read by a tap whose weight half is nonzero) are taken as zero. On avx512 (VPOPCNTQ
    //     counts whole words too) the 64x80x32 -> 32 conv of a webcam model ran 1.2-1.4x faster.
    //     On avx2, maps of at most kTailRowBits channels take the row-packed tails of step 0 instead
    //     (3 steps per pixel).
    const bool paired = plan.paired;
    //     Nibble-lookup paths without a POPCNT share (avx2 "lut") get the three words split into
    //     nibbles (step 1b) in the same pass.
    constexpr uint64_t kLowNibbles = 0x0F0F0F0F0F0F0F0FULL;
    const bool split_pairs = plan.split_pairs;
    AlignedWords pair_words(paired ? static_cast<size_t>(padded_h * padded_w * (split_pairs ? 6 : 3)) : 0, false);
    if (paired) {
        constexpr uint64_t kLow = 0xFFFFFFFFULL;
        const uint64_t* src = in;
        uint64_t* dst = pair_words.data();
        const int64_t d = s.dilation;
        const bool parallel = padded_h * padded_w * (split_pairs ? 48 : 24) >= kMinParallelSplitBytes;
        parallel_for(parallel ? threads : 1, padded_h, [&](int64_t py) {
            const uint64_t* row = src + py * padded_w;
            const uint64_t* below = py + d < padded_h ? row + d * padded_w : nullptr;
            uint64_t* to = dst + py * padded_w * (split_pairs ? 6 : 3);
            for (int64_t px = 0; px < padded_w; ++px) {
                const uint64_t self = row[px] & kLow;
                const uint64_t right = px + d < padded_w ? row[px + d] & kLow : 0;
                const uint64_t down = below != nullptr ? below[px] & kLow : 0;
                const uint64_t pair_row = self | right << 32, pair_column = self | down << 32;
                if (split_pairs) {
                    to[6 * px] = pair_row & kLowNibbles;
                    to[6 * px + 1] = (pair_row >> 4) & kLowNibbles;
                    to[6 * px + 2] = pair_column & kLowNibbles;
                    to[6 * px + 3] = (pair_column >> 4) & kLowNibbles;
                    to[6 * px + 4] = self & kLowNibbles;
                    to[6 * px + 5] = (self >> 4) & kLowNibbles;
                } else {
                    to[3 * px] = pair_row;
                    to[3 * px + 1] = pair_column;
                    to[3 * px + 2] = self;
                }
            }
        });
        in = dst;
    }

    // 1b. Nibble-lookup paths read each input word split into its low and high nibbles (two words,
    //     like their weights), so the split is done once per input word here instead of once per
    //     (word, output channel block) in the inner loop.
    const uint64_t* in_raw = in;  // unsplit words, for the scalar POPCNT share of the avx2 mix variants
    const int64_t pixel_words = plan.pixel_words;
    AlignedWords split(plan.split_now ? static_cast<size_t>(2 * padded_h * padded_w * pixel_words) : 0, false);
    if (plan.split_now) {
        const uint64_t* src = in;
        uint64_t* dst = split.data();
        const int64_t row_words = padded_w * pixel_words;
        parallel_for(2 * padded_h * row_words * 8 >= kMinParallelSplitBytes ? threads : 1, padded_h, [&](int64_t py) {
            const uint64_t* from = src + py * row_words;
            uint64_t* to = dst + 2 * py * row_words;
            for (int64_t i = 0; i < row_words; ++i) {
                to[2 * i] = from[i] & kLowNibbles;
                to[2 * i + 1] = (from[i] >> 4) & kLowNibbles;
            }
        });
        in = dst;
    }

    // 2. Regions of the output whose pixels share the same valid taps (the plan's). With large
    //    dilations much of a map's taps fall on the padding (ASPP's rate 36 on a 64x64 map: 61% of
    //    them), and a padded tap contributes the same to every pixel of a region, a per-channel
    //    constant: the ones of its weight words (+1 padding against a weight bit 1 is a mismatch). So
    //    each region computes only its valid taps and starts from that constant (ConvJob::n_channel).
    //    A region narrower than the map is walked row by row, so splitting columns costs more than
    //    splitting rows. Paired taps and row-packed tails: one region with every tap.
    // 3. Per base, its weights in this ISA's channel blocks and this call's buffers.
    std::vector<ConvJob> jobs(plan.regions.size() * static_cast<size_t>(bases));  // [region][base]
    for (int64_t j = 0; j < bases; ++j) {
        const BlockedWeights& wb = plan_weights(plan, *pws[j], path);
        ConvJob base;
        base.in = in;
        base.in_w = padded_w;
        base.words = plan.in_words;
        base.out_h = s.out_h;
        base.out_w = s.out_w;
        base.out_c = s.out_c;
        base.stride = s.stride;
        base.wblk = wb.words.data();
        base.block = wb.block;
        base.wblk_step = wb.wblk_step;
        base.wblk_steps = plan.weight_steps;
        if (kern.raw_layout != nullptr) {
            base.in_raw = in_raw;
            base.wraw = plan_weights(plan, *pws[j], *kern.raw_layout).words.data();
        }
        base.out_int = out_int;
        base.out_f = out_f;
        if (eps != nullptr) {
            const Epilogue& ep = eps[j];
            base.mul = ep.mul;
            base.bias = ep.bias;
            base.residual = j == 0 ? ep.residual : out_f;  // a chain adds up in the output
            base.relu_before = ep.relu_before;
            base.relu_after = ep.relu_after;
            base.out_bits = j == bases - 1 ? ep.out_bits : nullptr;
            base.out_words = words_for(s.out_c);
        }
        for (size_t ri = 0; ri < plan.regions.size(); ++ri) {
            const ConvPlan::Region& r = plan.regions[ri];
            ConvJob& job = jobs[ri * static_cast<size_t>(bases) + static_cast<size_t>(j)];
            job = base;
            job.step_offset = r.step_offset.data();
            // Every tap: the weight steps run in order (no index table in the inner loop).
            job.step_weight = r.all_taps ? nullptr : r.step_weight.data();
            job.steps = static_cast<int64_t>(r.step_offset.size());
            job.n_channel = r.n_channel[static_cast<size_t>(j)].data();
        }
    }

    // 4. Work items (region, channel block, rows of the region). A region as wide as the map is one
    //    run of pixels; a narrower one is walked row by row within its columns. A chain runs its
    //    bases one after another on each short run of pixels.
    auto run_range = [&](const ConvJob* region_jobs, int64_t cb, int64_t p0, int64_t p1) {
        if (bases == 1) {
            kern.conv_tile(region_jobs[0], cb, p0, p1);
            return;
        }
        for (int64_t q0 = p0; q0 < p1; q0 += kChainPixels)
            for (int64_t j = 0; j < bases; ++j)
                kern.conv_tile(region_jobs[j], cb, q0, std::min(p1, q0 + kChainPixels));
    };
    parallel_for(threads, static_cast<int64_t>(plan.items.size()), [&](int64_t i) {
        const ConvPlan::Item& it = plan.items[static_cast<size_t>(i)];
        const ConvPlan::Region& r = plan.regions[static_cast<size_t>(it.region)];
        const ConvJob* region_jobs = jobs.data() + it.region * bases;
        if (r.x0 == 0 && r.x1 == s.out_w) {
            run_range(region_jobs, it.cb, it.y0 * s.out_w, it.y1 * s.out_w);
            return;
        }
        for (int64_t y = it.y0; y < it.y1; ++y) run_range(region_jobs, it.cb, y * s.out_w + r.x0, y * s.out_w + r.x1);
    });
}

}  // namespace

std::string isa() { return g_kernels.load()->name; }

std::vector<std::string> available_isas() {
    std::vector<std::string> names;
    for (const IsaKernels* k : supported_kernels()) names.emplace_back(k->name);
    return names;
}

bool set_isa(const std::string& name) {
    for (const IsaKernels* k : supported_kernels()) {
        if (name == k->name) {
            g_kernels.store(k);
            return true;
        }
    }
    return false;
}

std::string popcount_method() { return resolve(*g_kernels.load()).popcount; }

std::vector<std::string> available_popcounts() {
    std::vector<std::string> names;
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx2())
        for (const IsaKernels* k : kAvx2Variants) names.emplace_back(k->popcount);
#endif
    return names;
}

bool set_popcount(const std::string& name) {
#if defined(__x86_64__) || defined(_M_X64)
    if (name == "auto") {
        std::lock_guard<std::mutex> lock(g_calibration_mu);
        int best = -1;  // a finished calibration is kept; otherwise the next avx2 call runs one
        if (!g_calibration_ns.empty()) {
            best = 0;
            for (int v = 1; v < kAvx2VariantCount; ++v)
                if (g_calibration_ns[static_cast<size_t>(v)] < kMixMargin * g_calibration_ns[0] &&
                    g_calibration_ns[static_cast<size_t>(v)] < g_calibration_ns[static_cast<size_t>(best)])
                    best = v;
        }
        g_avx2_forced.store(false);
        g_avx2_choice.store(best);
        return true;
    }
    if (!cpu_has_avx2()) return false;
    for (int v = 0; v < kAvx2VariantCount; ++v) {
        if (name == kAvx2Variants[v]->popcount) {
            g_avx2_forced.store(true);
            g_avx2_choice.store(v);
            return true;
        }
    }
    return false;
#else
    return name == "auto";
#endif
}

DispatchInfo dispatch_info() {
    DispatchInfo info;
    const IsaKernels& path = *g_kernels.load();
    info.isa = path.name;
    info.popcount = resolve(path).popcount;
#if defined(__x86_64__) || defined(_M_X64)
    if (&path == &kAvx2Kernels)
        info.popcount_source = g_avx2_forced.load() ? "forced" : "calibrated";
    else
        info.popcount_source = "fixed";
    std::lock_guard<std::mutex> lock(g_calibration_mu);
    for (size_t v = 0; v < g_calibration_ns.size(); ++v)
        info.calibration_ns.emplace_back(kAvx2Variants[v]->popcount, g_calibration_ns[v]);
#else
    info.popcount_source = "fixed";
#endif
    info.threads = g_threads.load();
    return info;
}

void set_num_threads(int n) { g_threads.store(std::max(1, n)); }
int get_num_threads() { return g_threads.load(); }

void pack_bits(const float* x, int64_t pixels, int64_t channels, uint64_t* out) {
    const IsaKernels& kern = *g_kernels.load();
    const int64_t words = words_for(channels);
    const int threads = g_threads.load();
    // Chunks of pixels per thread; tiny inputs stay on the calling thread.
    const int64_t chunk = 4096;
    const int64_t n_chunks = (pixels + chunk - 1) / chunk;
    parallel_for(threads, n_chunks, [&](int64_t c) {
        const int64_t p0 = c * chunk, count = std::min(chunk, pixels - p0);
        kern.pack_pixels(x + p0 * channels, count, channels, channels, out + p0 * words, words);
    });
}

void pack_pixels(const float* x, int64_t pixels, int64_t channels, uint64_t* out) {
    g_kernels.load()->pack_pixels(x, pixels, channels, channels, out, words_for(channels));
}

// Float values per thread at least when sign-packing a map (threads_for).
constexpr double kMinPackValuesPerThread = 1 << 14;

void pack_pixels_strided(const float* x, int64_t pixels, int64_t channels, uint64_t* out, int64_t out_stride) {
    g_kernels.load()->pack_pixels(x, pixels, channels, channels, out, out_stride);
}

void pack_bits_strided(const float* x, int64_t pixels, int64_t channels, uint64_t* out, int64_t out_stride) {
    const IsaKernels& kern = *g_kernels.load();
    const int threads = threads_for(static_cast<double>(pixels * channels), kMinPackValuesPerThread, g_threads.load());
    const int64_t chunk = 1024;
    parallel_for(threads, (pixels + chunk - 1) / chunk, [&](int64_t item) {
        const int64_t p0 = item * chunk, count = std::min(chunk, pixels - p0);
        kern.pack_pixels(x + p0 * channels, count, channels, channels, out + p0 * out_stride, out_stride);
    });
}

void pack_bits_concat(const float* const* parts, const int64_t* part_channels, int64_t n_parts, int64_t pixels,
                      uint64_t* out) {
    const IsaKernels& kern = *g_kernels.load();
    int64_t channels = 0;
    bool word_aligned = true;  // every part starts at a word boundary: each packs its own words
    for (int64_t i = 0; i < n_parts; ++i) {
        word_aligned = word_aligned && channels % 64 == 0;
        channels += part_channels[i];
    }
    const int64_t words = words_for(channels);
    // Otherwise a chunk of pixels is gathered into a small scratch buffer (it stays in L1), then packed.
    const int64_t chunk = word_aligned ? 1024 : std::max<int64_t>(1, 4096 / channels);
    const int threads = threads_for(static_cast<double>(pixels * channels), kMinPackValuesPerThread, g_threads.load());
    parallel_for(threads, (pixels + chunk - 1) / chunk, [&](int64_t item) {
        const int64_t p0 = item * chunk, count = std::min(chunk, pixels - p0);
        uint64_t* dst = out + p0 * words;
        if (word_aligned) {
            for (int64_t i = 0, offset = 0; i < n_parts; offset += part_channels[i], ++i)
                kern.pack_pixels(parts[i] + p0 * part_channels[i], count, part_channels[i], part_channels[i],
                                 dst + offset / 64, words);
            return;
        }
        thread_local std::vector<float> scratch;
        scratch.resize(static_cast<size_t>(count * channels));
        for (int64_t p = 0; p < count; ++p) {
            float* row = scratch.data() + p * channels;
            for (int64_t i = 0; i < n_parts; ++i) {
                const int64_t c = part_channels[i];
                std::memcpy(row, parts[i] + (p0 + p) * c, static_cast<size_t>(c) * sizeof(float));
                row += c;
            }
        }
        kern.pack_pixels(scratch.data(), count, channels, channels, dst, words);
    });
}

int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
    const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

void bconv_int(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, int32_t* out_int) {
    const PreparedWeights* ws[1] = {&w};
    run_conv(a, nullptr, ws, 1, shape, out_int, nullptr, nullptr);
}

void bconv(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep, float* out) {
    const PreparedWeights* ws[1] = {&w};
    run_conv(a, nullptr, ws, 1, shape, nullptr, out, &ep);
}

void bconv_float(const float* x, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep,
                 float* out) {
    const PreparedWeights* ws[1] = {&w};
    run_conv(nullptr, x, ws, 1, shape, nullptr, out, &ep);
}

void bconv_chain(const uint64_t* a, const PreparedWeights* const* ws, const Epilogue* eps, int64_t bases,
                 const ConvShape& shape, float* out) {
    run_conv(a, nullptr, ws, bases, shape, nullptr, out, eps);
}

}  // namespace segk
