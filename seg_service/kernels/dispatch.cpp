// Run-time ISA choice, threading and the convolution driver shared by every ISA path.
#include <atomic>
#include <cstring>

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

// Work items are (channel block, pixel chunk) pairs handed out dynamically (threadpool.h). One
// thread walks the whole map per channel block. Several threads get about 16 items each, so that a
// helper that starts late or runs on a busier core leaves at most a small item to wait for at the
// end, but every item keeps at least ~2 M binary MACs (a couple of microseconds) so that claiming it
// and re-reading its weight block stay cheap. The chunks of a block are made equal and whole
// multiples of the AVX-512 pixel tile (6; the other paths' tiles divide it).
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

// Below this many binary MACs (~15 us on one AVX-512 core) a call runs on the calling thread only.
constexpr double kMinParallelMacs = 16e6;
// Inputs of at least this many bytes are packed / padded on all threads.
constexpr int64_t kMinParallelInputBytes = int64_t{1} << 20;

void run_conv(const uint64_t* a, const float* x, const PreparedWeights& pw, const ConvShape& s, int32_t* out_int,
              float* out_f, const Epilogue* ep) {
    const IsaKernels& kern = *g_kernels.load();
    const int requested_threads = g_threads.load();
    const int64_t words = s.words, k = s.kernel, pad = s.padding;
    const int64_t padded_h = s.in_h + 2 * pad, padded_w = s.in_w + 2 * pad;
    const int64_t pixels = s.out_h * s.out_w;
    const double binary_macs = static_cast<double>(pixels) * static_cast<double>(s.out_c * k * k * s.in_channels);
    // Tiny calls stay on one thread: waking a helper costs more than it saves.
    const int threads = binary_macs < kMinParallelMacs ? 1 : requested_threads;

    // 1. Input bits with the +1 padding as zero words around them (packed from floats, or copied). Only
    //    the border is zeroed: every interior word is written.
    const uint64_t* in = a;
    const bool need_buffer = x != nullptr || pad > 0;
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
        });
        in = dst;
    }

    // 1b. Nibble-lookup paths read each input word split into its low and high nibbles (two words,
    //     like their weights), so the split is done once per input word here instead of once per
    //     (word, output channel block) in the inner loop.
    int64_t in_words = words, word_stride = 1;
    AlignedWords split(kern.nibble_weights ? static_cast<size_t>(2 * padded_h * padded_w * words) : 0, false);
    if (kern.nibble_weights) {
        constexpr uint64_t kLowNibbles = 0x0F0F0F0F0F0F0F0FULL;
        const uint64_t* src = in;
        uint64_t* dst = split.data();
        const int64_t row_words = padded_w * words;
        parallel_for(padded_h * row_words * 8 >= kMinParallelInputBytes ? threads : 1, padded_h, [&](int64_t py) {
            const uint64_t* from = src + py * row_words;
            uint64_t* to = dst + 2 * py * row_words;
            for (int64_t i = 0; i < row_words; ++i) {
                to[2 * i] = from[i] & kLowNibbles;
                to[2 * i + 1] = (from[i] >> 4) & kLowNibbles;
            }
        });
        in = dst;
        in_words = 2 * words;
        word_stride = 2;
    }

    // 2. Word offset of each (tap, word) step relative to a pixel's top-left tap.
    const int64_t steps = k * k * words;
    std::vector<int64_t> step_offset(static_cast<size_t>(steps));
    for (int64_t ky = 0; ky < k; ++ky)
        for (int64_t kx = 0; kx < k; ++kx)
            for (int64_t wd = 0; wd < words; ++wd)
                step_offset[(ky * k + kx) * words + wd] =
                    (ky * s.dilation * padded_w + kx * s.dilation) * in_words + wd * word_stride;

    // 3. Weights in this ISA's channel blocks (arranged once per PreparedWeights and ISA).
    const BlockedWeights& wb = pw.for_isa(kern, threads);

    ConvJob job;
    job.in = in;
    job.in_w = padded_w;
    job.words = in_words;
    job.out_h = s.out_h;
    job.out_w = s.out_w;
    job.out_c = s.out_c;
    job.stride = s.stride;
    job.step_offset = step_offset.data();
    job.steps = steps;
    job.wblk = wb.words.data();
    job.block = wb.block;
    job.wblk_step = wb.wblk_step;
    job.n = static_cast<int32_t>(k * k * s.in_channels);
    job.out_int = out_int;
    job.out_f = out_f;
    if (ep != nullptr) {
        job.mul = ep->mul;
        job.bias = ep->bias;
        job.residual = ep->residual;
        job.relu_before = ep->relu_before;
        job.relu_after = ep->relu_after;
        job.out_bits = ep->out_bits;
        job.out_words = words_for(s.out_c);
    }

    // 4. Work items: (channel block, pixel chunk).
    const int64_t blocks = wb.blocks;
    const double macs_per_pixel_block = static_cast<double>(wb.block * k * k * s.in_channels);
    const int64_t chunk_len = pixel_chunk_length(blocks, pixels, macs_per_pixel_block, threads);
    const int64_t chunks = (pixels + chunk_len - 1) / chunk_len;
    parallel_for(threads, blocks * chunks, [&](int64_t item) {
        const int64_t cb = item / chunks, ch = item % chunks;
        const int64_t p0 = ch * chunk_len, p1 = std::min(pixels, p0 + chunk_len);
        if (p0 < p1) kern.conv_tile(job, cb, p0, p1);
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

int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
    const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

void bconv_int(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, int32_t* out_int) {
    run_conv(a, nullptr, w, shape, out_int, nullptr, nullptr);
}

void bconv(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep, float* out) {
    run_conv(a, nullptr, w, shape, nullptr, out, &ep);
}

void bconv_float(const float* x, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep,
                 float* out) {
    run_conv(nullptr, x, w, shape, nullptr, out, &ep);
}

}  // namespace segk
