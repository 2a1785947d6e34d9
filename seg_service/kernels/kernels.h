// C++ API of the packed-bit kernels (bound to Python in bindings.cpp). Arguments are trusted here:
// shape and dtype validation happens in the bindings.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace segk {

// ISA selection ("avx512" | "avx2" | "scalar").
std::string isa();
std::vector<std::string> available_isas();
bool set_isa(const std::string& name);  // false when this CPU (or build) does not support it

// How the path in use counts bits: "vpopcntq" (avx512), "lut" | "mix1" | "mix2" (avx2, chosen per
// CPU by a short calibration at the first avx2 call unless forced), "popcnt" (scalar).
std::string popcount_method();
std::vector<std::string> available_popcounts();  // the avx2 path's methods (empty without AVX2)
// "lut" | "mix1" | "mix2" forces the avx2 path's method; "auto" returns to the calibrated choice.
// false for an unknown name or a CPU without AVX2.
bool set_popcount(const std::string& name);

struct DispatchInfo {
    std::string isa, popcount;
    std::string popcount_source;  // "calibrated" | "forced" (avx2 path) | "fixed" (other paths)
    std::vector<std::pair<std::string, double>> calibration_ns;  // avx2 variants' calibration times, if run
    int threads = 1;
};
DispatchInfo dispatch_info();

// Threads used by each call (>= 1). Default: all processors available to the process.
void set_num_threads(int n);
int get_num_threads();

// In-register ceilings of the ways to count bits (popcount_probe.cpp): per method, G binary MAC/s
// on one core (thread CPU time), one value per repeat of about `seconds`. `names` empty: every
// method this CPU runs (the avx2 path's with AVX2 + POPCNT, the avx512 path's with AVX-512
// VPOPCNTDQ); `isa` is the kernel path a method's ceiling is for.
struct PopcountCeiling {
    std::string method, isa, detail;
    std::vector<double> gbmacs;
};
std::vector<PopcountCeiling> popcount_ceilings(const std::vector<std::string>& names, int repeats, double seconds);

// Median over `batches` of the mean time, in ns, for a cache line to go from the calling thread's
// CPU to another CPU the process may use and back (cpu_probe.cpp): what each hand-off of a
// parallel call costs at least. NaN with a single CPU or off Linux.
double cpu_round_trip_ns(int64_t rounds, int batches);

// x: [pixels, channels] floats -> out: [pixels, ceil(channels / 64)] words, bit = 1 where x < 0.
void pack_bits(const float* x, int64_t pixels, int64_t channels, uint64_t* out);
// The same on the calling thread only (for callers that already split the work).
void pack_pixels(const float* x, int64_t pixels, int64_t channels, uint64_t* out);
// pack_pixels with each pixel's words at out + pixel * out_stride (out_stride >= ceil(channels /
// 64)): the sign bits of one part of a channel concat, into its words of the concat's bits.
void pack_pixels_strided(const float* x, int64_t pixels, int64_t channels, uint64_t* out, int64_t out_stride);
// The same for a whole map, split over the kernels' threads.
void pack_bits_strided(const float* x, int64_t pixels, int64_t channels, uint64_t* out, int64_t out_stride);
// pack_bits of the channel concatenation of `n_parts` maps (part i: [pixels, part_channels[i]]
// floats), without building it: out [pixels, ceil(sum of channels / 64)] words.
void pack_bits_concat(const float* const* parts, const int64_t* part_channels, int64_t n_parts, int64_t pixels,
                      uint64_t* out);

struct ConvShape {
    int64_t in_h = 0, in_w = 0, words = 0;  // input [in_h, in_w, words]
    int64_t out_c = 0, kernel = 0;          // weights [out_c, kernel, kernel, words]
    int64_t in_channels = 0;
    int64_t stride = 1, padding = 0, dilation = 1;
    int64_t out_h = 0, out_w = 0;
};

struct Epilogue {
    const float* mul = nullptr;       // [out_c]
    const float* bias = nullptr;      // [out_c]
    const float* residual = nullptr;  // [out_h, out_w, out_c] or nullptr
    bool relu_before = false;
    bool relu_after = false;
    // Optional: also the output's sign bits, [out_h, out_w, ceil(out_c / 64)] words as pack_bits
    // writes them. The caller zeroes the buffer first (the kernels write only the bytes of whole
    // 8-channel groups they compute).
    uint64_t* out_bits = nullptr;
};

// Output spatial size (PyTorch's formula); <= 0 when the kernel does not fit.
int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation);

class PreparedWeights;  // weight_layout.h: weights [out_c, kernel, kernel, words] + per-ISA arrangements

// Raw dot products: out_int [out_h, out_w, out_c].
void bconv_int(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, int32_t* out_int);
// Fused float epilogue: out [out_h, out_w, out_c].
void bconv(const uint64_t* a, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep, float* out);
// Same, from a float input [in_h, in_w, in_channels] that is binarised and packed on the fly.
void bconv_float(const float* x, const PreparedWeights& w, const ConvShape& shape, const Epilogue& ep,
                 float* out);

// A chain of `bases` binary convs of the same input and shape whose outputs add up, as a layer-wise
// binary decomposition (a binary ASPP branch's K bases) runs: base j's epilogue eps[j] takes base
// j - 1's output as its residual (eps[0].residual is the chain's own), and only the last output
// is written to `out` (eps[bases - 1].out_bits for its sign bits). Equal, bit for bit, to running
// the bases one by one with those residuals, without writing and re-reading bases - 1 maps.
void bconv_chain(const uint64_t* a, const PreparedWeights* const* ws, const Epilogue* eps, int64_t bases,
                 const ConvShape& shape, float* out);

// --- Float ops between the binary convolutions (float_ops.cpp) ---

// One term of a linear combination: coeff * source, where sources [0, n_inputs) are the inputs and
// source n_inputs + m is output m of the same group (m must be smaller than the output using it).
struct LincombTerm {
    int64_t source = 0;
    float coeff = 0.0f;
};

// A group of linear combinations over maps of n floats each, computed in one pass over the elements:
// outputs[m][i] = sum of the terms term_begin[m] .. term_begin[m + 1] - 1, evaluated left to right
// (first = coeff * x, then += coeff * x, each step rounded to float32). Group-Net's branch sum and
// the soft gates that read it run as one group, so each map is read from memory once. The maps are
// [pixels, channels]; bits[m], when not nullptr, receives pack_bits of output m ([pixels, words]).
// outputs[m] may be nullptr for an output needed only inside the group or as bits: it is never
// written to memory.
void lincomb_group(const float* const* inputs, int64_t n_inputs, float* const* outputs, int64_t n_outputs,
                   const int64_t* term_begin, const LincombTerm* terms, int64_t pixels, int64_t channels,
                   uint64_t* const* bits);

// Bilinear resampling of x [h, w, c] to out [out_h, out_w, c], as PyTorch's F.interpolate with
// align_corners=False: rows first, then columns, each product and sum rounded to float32.
void upsample_bilinear(const float* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w);
// The same without writing the floats: each output pixel's sign bits (as pack_bits) go to bits +
// pixel * bits_stride, packed row by row while the row is in cache.
void upsample_bilinear_bits(const float* x, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                            uint64_t* bits, int64_t bits_stride);

// Area (box) resampling of x [h, w, c] (uint8 or float32) to out [out_h, out_w, c] float32
// (resample.cpp): width pass then height pass, each product and sum rounded to float32 as in
// kernels.reference.resize_area.
void resize_area(const uint8_t* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w);
void resize_area(const float* x, int64_t h, int64_t w, int64_t c, float* out, int64_t out_h, int64_t out_w);

// The network input from an image [h, w, channels] (uint8, or float32 after the input's area
// resize; input_prep.cpp): x [padded_h, padded_w, channels] = v * scale[c] + offset[c] (two float32
// roundings) with zeros past h and w, and, when guide is not nullptr, guide [h, w, channels] =
// clip(v * float32(1 / 255), 0, 1), the guided filter's guide.
// The u8 pixels rint(x * pixel_scale + pixel_zero) clipped to [0, 255] of a normalised image
// x [h, w, channels] (what an integer stem reads; kernels.reference.image_pixels).
void image_pixels(const float* x, int64_t h, int64_t w, int64_t channels, const float* pixel_scale,
                  const float* pixel_zero, uint8_t* out);
void normalize_image(const uint8_t* image, int64_t h, int64_t w, int64_t channels, const float* scale,
                     const float* offset, int64_t padded_h, int64_t padded_w, float* x, float* guide);
void normalize_image(const float* image, int64_t h, int64_t w, int64_t channels, const float* scale,
                     const float* offset, int64_t padded_h, int64_t padded_w, float* x, float* guide);
// The guide alone, guide [h, w, channels] = clip(v * float32(1 / 255), 0, 1): normalize_image's
// guide without the network input (an integer stem reads the u8 pixels themselves).
void image_guide(const uint8_t* image, int64_t h, int64_t w, int64_t channels, float* guide);
void image_guide(const float* image, int64_t h, int64_t w, int64_t channels, float* guide);

// Colour guided filter coefficients, window-averaged (guided_filter.cpp): guide [h, w, 3], src
// [h, w, k] -> a_out [h, w, k, 3], b_out [h, w, k], so that channel j's filtered value is
// a . guide + b; windows (2 radius + 1)^2 clipped at the border, eps added to the colour covariance.
void guided_coefficients(const float* guide, const float* src, int64_t h, int64_t w, int64_t k, int64_t radius,
                         double eps, float* a_out, float* b_out);

// The fast guided filter's full-resolution step: a [hl, wl, k, 3] and b [hl, wl, k] upsampled
// bilinearly to [h, w] (as upsample_bilinear), filtered_j = a_j . guide + b_j, then
// out[..., c] = signs[c] * filtered[sources[c]] + bias[c] for `channels` outputs.
void guided_apply(const float* a, const float* b, int64_t hl, int64_t wl, int64_t k, const float* guide, int64_t h,
                  int64_t w, const int64_t* sources, const float* signs, const float* bias, int64_t channels,
                  float* out);

// The two-class guided filter's source (guided_filter.cpp): out[p] = clip((scores[p, 1] - scores[p, 0]) *
// 0.5, -clip, clip) for scores [pixels, 2], the class-1 logit centred over the two classes.
void half_logit_difference(const float* scores, int64_t pixels, float clip, float* out);

// Index of the largest of each pixel's `channels` values (channels <= 256), as numpy's argmax:
// the first maximum wins and a NaN counts as the maximum. With bias ([channels], or nullptr): of
// x + bias, each sum rounded to float32 (a model's stored decision biases, without another pass).
void argmax_channels(const float* x, int64_t pixels, int64_t channels, const float* bias, uint8_t* out);

// Per-channel affine of x [pixels, c] (a BatchNorm left standing): pre = ReLU(x) if relu_before,
// pre * mul[k] + bias[k] (+ residual [pixels, c]), ReLU if relu_after; each product and sum rounded
// to float32 and the ReLUs as numpy's maximum (NaN propagates), so equal to runtime.ops' numpy.
void affine(const float* x, int64_t pixels, int64_t c, const float* mul, const float* bias, bool relu_before,
            bool relu_after, const float* residual, float* out);

// The flip pass of a prediction: out [h, w, c] = a[y, x] + b[y, w - 1 - x] over the top-left h x w of
// a [ha, wa, c] and b [hb, wb, c] (each sum one float32 addition, as numpy's a + b[:, ::-1]).
void add_mirrored(const float* a, int64_t wa, const float* b, int64_t wb, int64_t h, int64_t w, int64_t c,
                  float* out);

// Mean over the pixels of x [pixels, c] -> out [c] (an ASPP head's image pooling): each channel summed
// in float64 in pixel order, divided by the pixel count, rounded to float32 once.
void global_avgpool(const float* x, int64_t pixels, int64_t c, float* out);

// Max pooling of x [h, w, c] -> out [out_h, out_w, c] (sizes as PyTorch's floor mode): padded
// positions never win, as in torch.nn.MaxPool2d.
void maxpool2d(const float* x, int64_t h, int64_t w, int64_t c, int64_t kernel, int64_t stride, int64_t padding,
               float* out, int64_t out_h, int64_t out_w);

// Float convolution with zero padding, computed directly (float_conv.cpp): x [h, w, c], weight
// [out_c, k, k, c], bias [out_c] or nullptr, optional ReLU -> out [out_h, out_w, out_c]. Meant for
// few input channels (the RGB stem), where an im2col GEMM is a poor shape for BLAS.
void conv2d_direct(const float* x, int64_t h, int64_t w, int64_t c, const float* weight, int64_t out_c,
                   int64_t kernel, const float* bias, int64_t stride, int64_t padding, int64_t dilation, bool relu,
                   float* out);

// Integer direct convolution of a uint8 image with 7-bit weights (stem_u8.cpp): image [h, w, c]
// (c <= 4), weight [out_c, k, k, c] int8 in [-64, 63] (k <= 11, dilation 1), zero padding, output
// [out_h, out_w, out_c] of the caller's size (past the natural size the input reads as zeros):
// acc = the int32 sum of weight * input over the window, out = fma(float(acc), scale[o],
// bias_table[row_class[y], col_class[x], o]) rounded once (bias_table [R, classes_s, out_c]), then
// max(out, 0) if relu. Equal bit for bit on every ISA path and thread count.
void conv2d_u8(const uint8_t* image, int64_t h, int64_t w, int64_t c, const int8_t* weight, int64_t out_c,
               int64_t kernel, const float* scale, const int32_t* row_class, int64_t out_h, const int32_t* col_class,
               int64_t out_w, const float* bias_table, int64_t classes_s, int64_t stride, int64_t padding, bool relu,
               float* out);
// Whether conv2d_u8 may use vpdpbusd (AVX-512 VNNI on the avx512 path, AVX-VNNI on the avx2 path, each
// only where the CPU has it) or must use its emulation (vpmaddubsw + vpmaddwd): off only for tests of
// the emulation. Returns the previous setting.
bool set_u8_vnni(bool enabled);
// How conv2d_u8 forms its u8 x s8 dot products on the path in use: "vnni" (vpdpbusd), "maddubs"
// (vpmaddubsw + vpmaddwd) or "scalar".
std::string u8_dot_method();

// 1x1 float convolution of the channel concatenation of `n_parts` maps (pointwise_conv.cpp): part
// i is [pixels, part_channels[i]] floats, weight_t [sum of channels, out_c] (input-channel major),
// bias [out_c] or nullptr, optional ReLU -> out [pixels, out_c]. Each output sums its input
// channels in order, then adds the bias.
void conv1x1(const float* const* parts, const int64_t* part_channels, int64_t n_parts, int64_t pixels,
             const float* weight_t, int64_t out_c, const float* bias, bool relu, float* out);

}  // namespace segk
