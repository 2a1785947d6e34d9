// Run-time ISA choice, threading and the convolution driver shared by every ISA path.
#include <atomic>
#include <cstring>

#include "bitpack.h"
#include "conv_job.h"
#include "kernels.h"
#include "threadpool.h"

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

// A zero-initialised buffer of u64 words whose data() is 64-byte aligned (whole-line vector loads).
class AlignedWords {
public:
    explicit AlignedWords(size_t count) : storage_(count + 8, 0) {
        const auto addr = reinterpret_cast<uintptr_t>(storage_.data());
        data_ = storage_.data() + ((64 - addr % 64) % 64) / sizeof(uint64_t);
    }
    uint64_t* data() { return data_; }

private:
    std::vector<uint64_t> storage_;
    uint64_t* data_;
};

// Work items are (channel block, pixel chunk) pairs handed out dynamically (threadpool.h). With
// several threads, cut pixel ranges so that there are about 4 items per thread (a descheduled or
// slower core then costs little), but keep chunks long enough to amortise a weight block's trip
// into L1.
int64_t pixel_chunk_length(int64_t blocks, int64_t pixels, int threads) {
    if (threads <= 1) return pixels;
    const int64_t wanted_chunks = (4 * threads + blocks - 1) / blocks;
    constexpr int64_t kMinChunk = 24, kAlign = 12;  // multiples of every ISA's pixel tile
    int64_t len = std::max(kMinChunk, (pixels + wanted_chunks - 1) / wanted_chunks);
    len = (len + kAlign - 1) / kAlign * kAlign;
    return std::min(len, pixels);
}

// Below this many binary MACs (~15 us on one AVX-512 core) a call runs on the calling thread only.
constexpr double kMinParallelMacs = 16e6;

void run_conv(const uint64_t* a, const float* x, const uint64_t* w, const ConvShape& s, int32_t* out_int,
              float* out_f, const Epilogue* ep) {
    const IsaKernels& kern = *g_kernels.load();
    const int requested_threads = g_threads.load();
    const int64_t words = s.words, k = s.kernel, pad = s.padding;
    const int64_t padded_h = s.in_h + 2 * pad, padded_w = s.in_w + 2 * pad;

    // 1. Input bits with the +1 padding as zero words around them.
    const uint64_t* in = a;
    AlignedWords padded(x != nullptr || pad > 0 ? static_cast<size_t>(padded_h * padded_w * words) : 0);
    if (x != nullptr) {
        uint64_t* dst = padded.data();
        const bool big_input = s.in_h * s.in_w * s.in_channels >= (int64_t{1} << 20);
        parallel_for(big_input ? requested_threads : 1, s.in_h, [&](int64_t y) {
            kern.pack_pixels(x + y * s.in_w * s.in_channels, s.in_w, s.in_channels, s.in_channels,
                             dst + ((y + pad) * padded_w + pad) * words, words);
        });
        in = dst;
    } else if (pad > 0) {
        uint64_t* dst = padded.data();
        for (int64_t y = 0; y < s.in_h; ++y)
            std::memcpy(dst + ((y + pad) * padded_w + pad) * words, a + y * s.in_w * words,
                        static_cast<size_t>(s.in_w * words) * sizeof(uint64_t));
        in = dst;
    }

    // 2. Word offset of each (tap, word) step relative to a pixel's top-left tap.
    const int64_t steps = k * k * words;
    std::vector<int64_t> step_offset(static_cast<size_t>(steps));
    for (int64_t ky = 0; ky < k; ++ky)
        for (int64_t kx = 0; kx < k; ++kx)
            for (int64_t wd = 0; wd < words; ++wd)
                step_offset[(ky * k + kx) * words + wd] = (ky * s.dilation * padded_w + kx * s.dilation) * words + wd;

    // 3. Weights in channel blocks: wblk[cb][step][lane] (or [cb][step][half][lane]), zero lanes past out_c.
    const int64_t block = kern.block;
    const int64_t blocks = (s.out_c + block - 1) / block;
    const int64_t wblk_step = kern.nibble_weights ? 2 * block : block;
    AlignedWords wblk(static_cast<size_t>(blocks * steps * wblk_step));
    constexpr uint64_t kLowNibbles = 0x0F0F0F0F0F0F0F0FULL;
    auto repack_block = [&](int64_t cb) {
        const int64_t o_end = std::min(s.out_c, (cb + 1) * block);
        for (int64_t o = cb * block; o < o_end; ++o) {
            uint64_t* dst = wblk.data() + cb * steps * wblk_step + o % block;
            const uint64_t* src = w + o * steps;
            for (int64_t st = 0; st < steps; ++st) {
                if (kern.nibble_weights) {
                    dst[st * wblk_step] = src[st] & kLowNibbles;
                    dst[st * wblk_step + block] = (src[st] >> 4) & kLowNibbles;
                } else {
                    dst[st * wblk_step] = src[st];
                }
            }
        }
    };
    // Tiny calls stay on one thread: waking a helper costs more than it saves.
    const int64_t pixels = s.out_h * s.out_w;
    const double binary_macs = static_cast<double>(pixels) * static_cast<double>(s.out_c * k * k * s.in_channels);
    const int threads = binary_macs < kMinParallelMacs ? 1 : requested_threads;
    // Large weight sets (small maps deep in the network) are re-arranged in parallel too.
    parallel_for(s.out_c * steps >= (1 << 16) ? threads : 1, blocks, repack_block);

    ConvJob job;
    job.in = in;
    job.in_w = padded_w;
    job.words = words;
    job.out_h = s.out_h;
    job.out_w = s.out_w;
    job.out_c = s.out_c;
    job.stride = s.stride;
    job.step_offset = step_offset.data();
    job.steps = steps;
    job.wblk = wblk.data();
    job.block = block;
    job.wblk_step = wblk_step;
    job.n = static_cast<int32_t>(k * k * s.in_channels);
    job.out_int = out_int;
    job.out_f = out_f;
    if (ep != nullptr) {
        job.mul = ep->mul;
        job.bias = ep->bias;
        job.residual = ep->residual;
        job.relu_before = ep->relu_before;
        job.relu_after = ep->relu_after;
    }

    // 4. Work items: (channel block, pixel chunk).
    const int64_t chunk_len = pixel_chunk_length(blocks, pixels, threads);
    const int64_t chunks = (pixels + chunk_len - 1) / chunk_len;
    const int64_t items = blocks * chunks;
    parallel_for(threads, items, [&](int64_t item) {
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

int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
    const int64_t span = in + 2 * padding - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

void bconv_int(const uint64_t* a, const uint64_t* w, const ConvShape& shape, int32_t* out_int) {
    run_conv(a, nullptr, w, shape, out_int, nullptr, nullptr);
}

void bconv(const uint64_t* a, const uint64_t* w, const ConvShape& shape, const Epilogue& ep, float* out) {
    run_conv(a, nullptr, w, shape, nullptr, out, &ep);
}

void bconv_float(const float* x, const uint64_t* w, const ConvShape& shape, const Epilogue& ep, float* out) {
    run_conv(nullptr, x, w, shape, nullptr, out, &ep);
}

}  // namespace segk
