// pybind11 bindings of the packed-bit kernels: module seg_service.kernels._core.
// Every argument is validated here (shape, dtype, ranges) and bad input raises ValueError; the
// compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <utility>
#include <vector>

#include <algorithm>
#include <limits>
#include <string>

#include "bitpack.h"
#include "kernels.h"
#include "weight_layout.h"

namespace py = pybind11;

namespace {

template <typename T>
const char* dtype_name();
template <>
const char* dtype_name<float>() { return "float32"; }
template <>
const char* dtype_name<uint64_t>() { return "uint64"; }
template <>
const char* dtype_name<uint8_t>() { return "uint8"; }
template <>
const char* dtype_name<int8_t>() { return "int8"; }
template <>
const char* dtype_name<int32_t>() { return "int32"; }

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks dtype and rank strictly (no silent casts of packed bits or features) and returns a
// C-contiguous view (a copy only when the input is not C-contiguous).
template <typename T>
py::array_t<T, py::array::c_style> checked(const py::handle& obj, const char* name, py::ssize_t ndim) {
    if (!py::isinstance<py::array>(obj))
        throw py::value_error(std::string(name) + " must be a numpy array, got " +
                              std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<T>()))
        throw py::value_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                              std::string(py::str(arr.dtype())));
    if (arr.ndim() != ndim)
        throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                              shape_str(arr));
    return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(arr);
}

// A check of the arguments: ValueError with `message` when `ok` is false. A macro, so that the
// message (string concatenations, to_string) is only built when the check fails: the checks run
// on every call, and building their messages took about 4 % of a small network's forward pass.
#define SEGK_REQUIRE(ok, message)                                 \
    do {                                                          \
        if (!(ok)) throw py::value_error(message);                \
    } while (0)

// Bounds on window geometry and output sizes, far above any real network or image, low enough that
// every size computed from them (in + 2 * padding, dilation * (kernel - 1), k * k * channels, an
// output's element count) stays far inside int64: no check below can overflow and pass.
constexpr int64_t kMaxKernel = 4096;
constexpr int64_t kMaxStride = 4096;
constexpr int64_t kMaxPadding = int64_t{1} << 20;
constexpr int64_t kMaxDilation = int64_t{1} << 16;
constexpr int64_t kMaxChannels = int64_t{1} << 24;
constexpr int64_t kMaxSide = int64_t{1} << 24;  // an output side (resize, upsample)

void require_range(int64_t value, int64_t low, int64_t high, const char* name) {
    SEGK_REQUIRE(value >= low,
                 std::string(name) + " must be >= " + std::to_string(low) + ", got " + std::to_string(value));
    SEGK_REQUIRE(value <= high,
                 std::string(name) + " must be at most " + std::to_string(high) + ", got " + std::to_string(value));
}

void require_geometry(int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
    require_range(kernel, 1, kMaxKernel, "kernel");
    require_range(stride, 1, kMaxStride, "stride");
    require_range(padding, 0, kMaxPadding, "padding");
    require_range(dilation, 1, kMaxDilation, "dilation");
}

void require_out_size(int64_t out_h, int64_t out_w) {
    SEGK_REQUIRE(out_h >= 1 && out_w >= 1 && out_h <= kMaxSide && out_w <= kMaxSide,
                 "output size must be positive and at most " + std::to_string(kMaxSide) + " per side, got " +
                     std::to_string(out_h) + "x" + std::to_string(out_w));
}

// Validates the convolution arguments shared by every conv entry point and returns the shape.
segk::ConvShape conv_shape(int64_t in_h, int64_t in_w, int64_t in_words, const py::array& w,
                           int64_t in_channels, int64_t stride, int64_t padding, int64_t dilation) {
    SEGK_REQUIRE(in_h >= 1 && in_w >= 1, "input must have a non-empty spatial size");
    require_range(in_channels, 1, kMaxChannels, "in_channels");
    const int64_t words = segk::words_for(in_channels);
    SEGK_REQUIRE(in_words == words, "input has " + std::to_string(in_words) + " words per pixel but in_channels=" +
                                        std::to_string(in_channels) + " needs " + std::to_string(words));
    SEGK_REQUIRE(w.shape(0) >= 1, "weights must have at least one output channel");
    SEGK_REQUIRE(w.shape(1) == w.shape(2) && w.shape(1) >= 1,
                 "weights must be [out_channels, k, k, words] with a square kernel, got " + shape_str(w));
    SEGK_REQUIRE(w.shape(3) == words, "weights have " + std::to_string(w.shape(3)) +
                                          " words per tap but in_channels=" + std::to_string(in_channels) + " needs " +
                                          std::to_string(words));
    const int64_t k = w.shape(1);
    require_geometry(k, stride, padding, dilation);
    SEGK_REQUIRE(k * k * in_channels <= std::numeric_limits<int32_t>::max() / 2, "kernel too large for int32 dots");
    segk::ConvShape s;
    s.in_h = in_h;
    s.in_w = in_w;
    s.words = words;
    s.out_c = w.shape(0);
    s.kernel = k;
    s.in_channels = in_channels;
    s.stride = stride;
    s.padding = padding;
    s.dilation = dilation;
    s.out_h = segk::conv_out_size(in_h, k, stride, padding, dilation);
    s.out_w = segk::conv_out_size(in_w, k, stride, padding, dilation);
    SEGK_REQUIRE(s.out_h >= 1 && s.out_w >= 1,
                 "kernel " + std::to_string(k) + " (dilation " + std::to_string(dilation) + ") does not fit input " +
                     std::to_string(in_h) + "x" + std::to_string(in_w) + " with padding " + std::to_string(padding));
    return s;
}

// Bits past in_channels in the last word of every pixel / tap must be 0 (pack_bits guarantees it);
// otherwise the caller's in_channels does not match how the data was packed and the dots would be
// silently wrong. Scanning one word per pixel costs far less than the convolution.
void require_clean_tail(const uint64_t* data, int64_t vectors, int64_t words, int64_t in_channels, const char* name) {
    const int64_t used = in_channels % 64;
    if (used == 0) return;
    const uint64_t unused_mask = ~((uint64_t{1} << used) - 1);
    uint64_t stray = 0;
    for (int64_t i = 0; i < vectors; ++i) stray |= data[i * words + words - 1] & unused_mask;
    SEGK_REQUIRE(stray == 0, std::string(name) + " has bits set past in_channels=" + std::to_string(in_channels) +
                                 " in its last word (packed with a different channel count?)");
}

// Weights once arranged for the kernels (kernels.prepare_weights); calls reuse the arrangement.
struct PyPreparedWeights {
    py::array_t<uint64_t, py::array::c_style> array;  // [out_c, k, k, words], owned copy
    int64_t in_channels = 0;
    std::shared_ptr<segk::PreparedWeights> prepared;
};

// Weights of a conv call: a PyPreparedWeights, or a uint64 array arranged just for this call.
struct WeightsArg {
    py::array_t<uint64_t, py::array::c_style> array;
    std::shared_ptr<segk::PreparedWeights> prepared;
};

WeightsArg weights_arg(const py::handle& w_obj, int64_t in_channels) {
    WeightsArg out;
    if (py::isinstance<PyPreparedWeights>(w_obj)) {
        const auto& pw = w_obj.cast<const PyPreparedWeights&>();
        SEGK_REQUIRE(pw.in_channels == in_channels, "prepared weights are for in_channels=" +
                                                        std::to_string(pw.in_channels) + ", got in_channels=" +
                                                        std::to_string(in_channels));
        out.array = pw.array;
        out.prepared = pw.prepared;
        return out;
    }
    out.array = checked<uint64_t>(w_obj, "w", 4);
    return out;
}

// Validates the tail bits of array weights and wraps them without a copy (prepared ones are checked once).
void finish_weights(WeightsArg& w, const segk::ConvShape& s, int64_t in_channels) {
    if (w.prepared) return;
    require_clean_tail(w.array.data(), s.out_c * s.kernel * s.kernel, s.words, in_channels, "w");
    w.prepared = std::make_shared<segk::PreparedWeights>(w.array.data(), s.out_c, s.kernel, s.words, false);
}

PyPreparedWeights prepare_weights(const py::handle& w_obj, int64_t in_channels) {
    auto w = checked<uint64_t>(w_obj, "w", 4);
    require_range(in_channels, 1, kMaxChannels, "in_channels");
    const int64_t words = segk::words_for(in_channels);
    SEGK_REQUIRE(w.shape(0) >= 1, "weights must have at least one output channel");
    SEGK_REQUIRE(w.shape(1) == w.shape(2) && w.shape(1) >= 1 && w.shape(1) <= kMaxKernel,
                 "weights must be [out_channels, k, k, words] with a square kernel of at most " +
                     std::to_string(kMaxKernel) + ", got " + shape_str(w));
    SEGK_REQUIRE(w.shape(3) == words, "weights have " + std::to_string(w.shape(3)) + " words per tap but in_channels=" +
                                          std::to_string(in_channels) + " needs " + std::to_string(words));
    SEGK_REQUIRE(w.shape(1) * w.shape(1) * in_channels <= std::numeric_limits<int32_t>::max() / 2,
                 "kernel too large for int32 dots");
    require_clean_tail(w.data(), w.shape(0) * w.shape(1) * w.shape(1), words, in_channels, "w");
    PyPreparedWeights out;
    out.array = py::array_t<uint64_t, py::array::c_style>(std::vector<py::ssize_t>(w.shape(), w.shape() + 4));
    std::copy(w.data(), w.data() + w.size(), out.array.mutable_data());
    out.array.attr("setflags")(py::arg("write") = false);
    out.in_channels = in_channels;
    out.prepared = std::make_shared<segk::PreparedWeights>(out.array.data(), w.shape(0), w.shape(1), words, false);
    return out;
}

// Epilogue arrays: mul/bias [O] float32, residual [Ho, Wo, O] float32 or None. Keeps the arrays alive.
struct EpilogueArgs {
    py::array_t<float, py::array::c_style> mul, bias, residual;
    segk::Epilogue ep;
};

EpilogueArgs epilogue_args(const segk::ConvShape& s, const py::handle& mul, const py::handle& bias,
                           bool relu_before, bool relu_after, const py::handle& residual) {
    EpilogueArgs e;
    e.mul = checked<float>(mul, "mul", 1);
    e.bias = checked<float>(bias, "bias", 1);
    const std::string per_channel = " entries (one per output channel), got ";
    SEGK_REQUIRE(e.mul.shape(0) == s.out_c,
                 "mul must have " + std::to_string(s.out_c) + per_channel + std::to_string(e.mul.shape(0)));
    SEGK_REQUIRE(e.bias.shape(0) == s.out_c,
                 "bias must have " + std::to_string(s.out_c) + per_channel + std::to_string(e.bias.shape(0)));
    e.ep.mul = e.mul.data();
    e.ep.bias = e.bias.data();
    e.ep.relu_before = relu_before;
    e.ep.relu_after = relu_after;
    if (!residual.is_none()) {
        e.residual = checked<float>(residual, "residual", 3);
        SEGK_REQUIRE(e.residual.shape(0) == s.out_h && e.residual.shape(1) == s.out_w && e.residual.shape(2) == s.out_c,
                     "residual must have shape (" + std::to_string(s.out_h) + ", " + std::to_string(s.out_w) + ", " +
                         std::to_string(s.out_c) + "), got " + shape_str(e.residual));
        e.ep.residual = e.residual.data();
    }
    return e;
}

py::array_t<uint64_t> pack_bits(const py::handle& x_obj) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(c >= 1, "x must have at least one channel");
    const int64_t words = segk::words_for(c);
    py::array_t<uint64_t> out({h, w, words});
    const float* src = x.data();
    uint64_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::pack_bits(src, h * w, c, dst);
    }
    return out;
}

py::array_t<int32_t> bconv2d_int(const py::handle& a_obj, const py::handle& w_obj, int64_t in_channels,
                                 int64_t stride, int64_t padding, int64_t dilation) {
    auto a = checked<uint64_t>(a_obj, "a", 3);
    WeightsArg w = weights_arg(w_obj, in_channels);
    const segk::ConvShape s =
        conv_shape(a.shape(0), a.shape(1), a.shape(2), w.array, in_channels, stride, padding, dilation);
    require_clean_tail(a.data(), s.in_h * s.in_w, s.words, in_channels, "a");
    finish_weights(w, s, in_channels);
    py::array_t<int32_t> out({s.out_h, s.out_w, s.out_c});
    const uint64_t* ap = a.data();
    const segk::PreparedWeights& wp = *w.prepared;
    int32_t* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::bconv_int(ap, wp, s, op);
    }
    return out;
}

// The float output, or (output, its sign bits) when pack_output.
py::object conv_result(py::array_t<float>& out, py::array_t<uint64_t>& bits, bool pack_output) {
    if (!pack_output) return std::move(out);
    return py::make_tuple(out, bits);
}

// Zeroed [h, w, ceil(c / 64)] words for an output's sign bits (an empty array when not wanted).
py::array_t<uint64_t> sign_bits_buffer(bool wanted, int64_t h, int64_t w, int64_t c) {
    if (!wanted) return py::array_t<uint64_t>(std::vector<py::ssize_t>{0});
    py::array_t<uint64_t> bits({h, w, segk::words_for(c)});
    std::fill(bits.mutable_data(), bits.mutable_data() + bits.size(), uint64_t{0});
    return bits;
}

py::object bconv2d(const py::handle& a_obj, const py::handle& w_obj, int64_t in_channels, int64_t stride,
                   int64_t padding, int64_t dilation, const py::handle& mul, const py::handle& bias,
                   bool relu_before, bool relu_after, const py::handle& residual, bool pack_output) {
    auto a = checked<uint64_t>(a_obj, "a", 3);
    WeightsArg w = weights_arg(w_obj, in_channels);
    const segk::ConvShape s =
        conv_shape(a.shape(0), a.shape(1), a.shape(2), w.array, in_channels, stride, padding, dilation);
    require_clean_tail(a.data(), s.in_h * s.in_w, s.words, in_channels, "a");
    finish_weights(w, s, in_channels);
    EpilogueArgs e = epilogue_args(s, mul, bias, relu_before, relu_after, residual);
    py::array_t<float> out({s.out_h, s.out_w, s.out_c});
    py::array_t<uint64_t> bits = sign_bits_buffer(pack_output, s.out_h, s.out_w, s.out_c);
    if (pack_output) e.ep.out_bits = bits.mutable_data();
    const uint64_t* ap = a.data();
    const segk::PreparedWeights& wp = *w.prepared;
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::bconv(ap, wp, s, e.ep, op);
    }
    return conv_result(out, bits, pack_output);
}

py::object bconv2d_float(const py::handle& x_obj, const py::handle& w_obj, int64_t stride, int64_t padding,
                         int64_t dilation, const py::handle& mul, const py::handle& bias, bool relu_before,
                         bool relu_after, const py::handle& residual, bool pack_output) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t in_channels = x.shape(2);
    SEGK_REQUIRE(in_channels >= 1, "x must have at least one channel");
    WeightsArg w = weights_arg(w_obj, in_channels);
    const segk::ConvShape s = conv_shape(x.shape(0), x.shape(1), segk::words_for(in_channels), w.array, in_channels,
                                         stride, padding, dilation);
    finish_weights(w, s, in_channels);
    EpilogueArgs e = epilogue_args(s, mul, bias, relu_before, relu_after, residual);
    py::array_t<float> out({s.out_h, s.out_w, s.out_c});
    py::array_t<uint64_t> bits = sign_bits_buffer(pack_output, s.out_h, s.out_w, s.out_c);
    if (pack_output) e.ep.out_bits = bits.mutable_data();
    const float* xp = x.data();
    const segk::PreparedWeights& wp = *w.prepared;
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::bconv_float(xp, wp, s, e.ep, op);
    }
    return conv_result(out, bits, pack_output);
}

// bases: [(w, mul, bias, relu_before, relu_after), ...], all of one shape and in_channels.
py::object bconv2d_chain(const py::handle& a_obj, const py::sequence& bases, int64_t in_channels, int64_t stride,
                         int64_t padding, int64_t dilation, const py::handle& residual, bool pack_output) {
    auto a = checked<uint64_t>(a_obj, "a", 3);
    SEGK_REQUIRE(py::len(bases) >= 1, "bconv2d_chain needs at least one base");
    std::vector<WeightsArg> weights;
    std::vector<EpilogueArgs> epilogues;
    segk::ConvShape s;
    for (const auto& item : bases) {
        const auto base = item.cast<py::tuple>();
        SEGK_REQUIRE(base.size() == 5, "each base is (w, mul, bias, relu_before, relu_after)");
        weights.push_back(weights_arg(base[0], in_channels));
        const segk::ConvShape sj = conv_shape(a.shape(0), a.shape(1), a.shape(2), weights.back().array, in_channels,
                                              stride, padding, dilation);
        SEGK_REQUIRE(weights.size() == 1 || (sj.out_c == s.out_c && sj.kernel == s.kernel),
                     "every base of a chain needs the same output channels and kernel size");
        s = sj;
        finish_weights(weights.back(), s, in_channels);
        epilogues.push_back(epilogue_args(s, base[1], base[2], base[3].cast<bool>(), base[4].cast<bool>(),
                                          epilogues.empty() ? residual : py::none()));
    }
    require_clean_tail(a.data(), s.in_h * s.in_w, s.words, in_channels, "a");
    py::array_t<float> out({s.out_h, s.out_w, s.out_c});
    py::array_t<uint64_t> bits = sign_bits_buffer(pack_output, s.out_h, s.out_w, s.out_c);
    if (pack_output) epilogues.back().ep.out_bits = bits.mutable_data();
    std::vector<const segk::PreparedWeights*> ws;
    std::vector<segk::Epilogue> eps;
    for (size_t j = 0; j < weights.size(); ++j) {
        ws.push_back(weights[j].prepared.get());
        eps.push_back(epilogues[j].ep);
    }
    const uint64_t* ap = a.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::bconv_chain(ap, ws.data(), eps.data(), static_cast<int64_t>(ws.size()), s, op);
    }
    return conv_result(out, bits, pack_output);
}

// Inputs: float32 arrays of one shape; program[m] = [(source, coeff), ...] for output m, where
// sources [0, len(inputs)) are the inputs and len(inputs) + j is output j < m of the group.
// Returns (outputs, bits): bits[m] = pack_bits(outputs[m]) for m in pack_outputs, else None;
// outputs[m] is None for m in drop_outputs (computed for the group and the bits only).
py::tuple lincomb_group(const py::sequence& inputs_obj,
                        const std::vector<std::vector<std::pair<int64_t, float>>>& program,
                        const std::vector<int64_t>& pack_outputs, const std::vector<int64_t>& drop_outputs) {
    SEGK_REQUIRE(py::len(inputs_obj) >= 1, "lincomb_group needs at least one input");
    SEGK_REQUIRE(!program.empty(), "lincomb_group needs at least one output");
    std::vector<py::array_t<float, py::array::c_style>> inputs;
    for (const auto& item : inputs_obj) {
        const std::string name = "inputs[" + std::to_string(inputs.size()) + "]";
        SEGK_REQUIRE(py::isinstance<py::array>(item), name + " must be a numpy array");
        const auto ndim = py::reinterpret_borrow<py::array>(item).ndim();
        inputs.push_back(checked<float>(item, name.c_str(), ndim));
        const auto& first = inputs.front();
        const auto& last = inputs.back();
        bool same = last.ndim() == first.ndim();
        for (py::ssize_t d = 0; same && d < first.ndim(); ++d) same = last.shape(d) == first.shape(d);
        SEGK_REQUIRE(same, name + " has shape " + shape_str(last) + " but inputs[0] has " + shape_str(first));
    }
    const auto n_inputs = static_cast<int64_t>(inputs.size());
    std::vector<int64_t> term_begin{0};
    std::vector<segk::LincombTerm> terms;
    for (size_t m = 0; m < program.size(); ++m) {
        SEGK_REQUIRE(!program[m].empty(), "output " + std::to_string(m) + " of lincomb_group has no terms");
        for (const auto& [source, coeff] : program[m]) {
            SEGK_REQUIRE(source >= 0 && source < n_inputs + static_cast<int64_t>(m),
                         "output " + std::to_string(m) + " reads source " + std::to_string(source) +
                             ": sources are the " + std::to_string(n_inputs) + " inputs, then earlier outputs only");
            terms.push_back({source, coeff});
        }
        term_begin.push_back(static_cast<int64_t>(terms.size()));
    }
    const auto& first = inputs.front();
    const std::vector<py::ssize_t> shape(first.shape(), first.shape() + first.ndim());
    int64_t channels = first.size() > 0 ? 1 : 0, pixels = first.size();
    if (!pack_outputs.empty()) {
        SEGK_REQUIRE(first.ndim() == 3 && first.shape(2) >= 1,
                     "pack_outputs needs [H, W, C] maps, got shape " + shape_str(first));
        channels = first.shape(2);
        pixels = first.shape(0) * first.shape(1);
    }
    std::vector<py::array_t<float>> outputs;
    std::vector<py::array_t<uint64_t>> bits(program.size(), py::array_t<uint64_t>(std::vector<py::ssize_t>{0}));
    std::vector<const float*> in_ptrs;
    std::vector<float*> out_ptrs;
    std::vector<uint64_t*> bit_ptrs(program.size(), nullptr);
    for (const auto& x : inputs) in_ptrs.push_back(x.data());
    std::vector<bool> dropped(program.size(), false);
    for (const int64_t m : drop_outputs) {
        SEGK_REQUIRE(m >= 0 && m < static_cast<int64_t>(program.size()),
                     "drop_outputs names output " + std::to_string(m) + " of " + std::to_string(program.size()));
        dropped[static_cast<size_t>(m)] = true;
    }
    for (size_t m = 0; m < program.size(); ++m) {
        outputs.emplace_back(dropped[m] ? std::vector<py::ssize_t>{0} : shape);
        out_ptrs.push_back(dropped[m] ? nullptr : outputs.back().mutable_data());
    }
    for (const int64_t m : pack_outputs) {
        SEGK_REQUIRE(m >= 0 && m < static_cast<int64_t>(program.size()),
                     "pack_outputs names output " + std::to_string(m) + " of " + std::to_string(program.size()));
        bits[m] = py::array_t<uint64_t>({first.shape(0), first.shape(1), segk::words_for(channels)});
        bit_ptrs[m] = bits[m].mutable_data();
    }
    if (pixels > 0) {
        py::gil_scoped_release release;
        segk::lincomb_group(in_ptrs.data(), n_inputs, out_ptrs.data(), static_cast<int64_t>(out_ptrs.size()),
                            term_begin.data(), terms.data(), pixels, channels, bit_ptrs.data());
    }
    py::list out_list, bit_list;
    for (size_t m = 0; m < program.size(); ++m) {
        if (dropped[m])
            out_list.append(py::none());
        else
            out_list.append(outputs[m]);
    }
    for (size_t m = 0; m < program.size(); ++m) {
        if (bit_ptrs[m] != nullptr)
            bit_list.append(bits[m]);
        else
            bit_list.append(py::none());
    }
    return py::make_tuple(out_list, bit_list);
}

// The parts of a channel concatenation: non-empty float32 [H, W, C_i] maps of one spatial size.
struct ConcatParts {
    std::vector<py::array_t<float, py::array::c_style>> arrays;
    std::vector<const float*> data;
    std::vector<int64_t> channels;
    int64_t h = 0, w = 0, total_channels = 0;
};

ConcatParts concat_parts(const py::sequence& parts_obj) {
    SEGK_REQUIRE(py::len(parts_obj) >= 1, "parts must hold at least one map");
    ConcatParts parts;
    for (const auto& item : parts_obj) {
        const std::string name = "parts[" + std::to_string(parts.arrays.size()) + "]";
        auto x = checked<float>(item, name.c_str(), 3);
        SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 1,
                     name + " must be a non-empty [H, W, C] map, got " + shape_str(x));
        if (parts.arrays.empty()) {
            parts.h = x.shape(0);
            parts.w = x.shape(1);
        }
        SEGK_REQUIRE(x.shape(0) == parts.h && x.shape(1) == parts.w,
                     name + " has shape " + shape_str(x) + " but parts[0] is " + std::to_string(parts.h) + "x" +
                         std::to_string(parts.w));
        parts.total_channels += x.shape(2);
        SEGK_REQUIRE(parts.total_channels <= kMaxChannels, "parts have more than " + std::to_string(kMaxChannels) +
                                                               " channels in all");
        parts.channels.push_back(x.shape(2));
        parts.data.push_back(x.data());
        parts.arrays.push_back(std::move(x));
    }
    return parts;
}

py::array_t<uint64_t> pack_bits_concat(const py::sequence& parts_obj) {
    const ConcatParts parts = concat_parts(parts_obj);
    py::array_t<uint64_t> out({parts.h, parts.w, segk::words_for(parts.total_channels)});
    uint64_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::pack_bits_concat(parts.data.data(), parts.channels.data(), static_cast<int64_t>(parts.data.size()),
                               parts.h * parts.w, dst);
    }
    return out;
}

// A caller's uint64 [H, W, words] array that a kernel writes into: no copy is made, so it must be
// C-contiguous and writeable; `part_words` words from `word_offset` must fit in its last axis.
py::array_t<uint64_t, py::array::c_style> bits_target(const py::handle& obj, int64_t height, int64_t width,
                                                      int64_t word_offset, int64_t part_words) {
    auto out = checked<uint64_t>(obj, "out", 3);
    const auto arr = py::reinterpret_borrow<py::array>(obj);
    SEGK_REQUIRE(out.ptr() == arr.ptr() && arr.writeable(), "out must be a C-contiguous, writeable array");
    SEGK_REQUIRE(out.shape(0) == height && out.shape(1) == width,
                 "out must be [" + std::to_string(height) + ", " + std::to_string(width) + ", words], got " +
                     shape_str(out));
    SEGK_REQUIRE(word_offset >= 0 && word_offset + part_words <= out.shape(2),
                 "words " + std::to_string(word_offset) + " .. " + std::to_string(word_offset + part_words - 1) +
                     " do not fit in out's " + std::to_string(out.shape(2)) + " words per pixel");
    return out;
}

void pack_bits_into(const py::handle& x_obj, const py::handle& out_obj, int64_t word_offset) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(h >= 1 && w >= 1 && c >= 1, "x must be a non-empty [H, W, C] map, got " + shape_str(x));
    auto out = bits_target(out_obj, h, w, word_offset, segk::words_for(c));
    const float* src = x.data();
    const int64_t stride = out.shape(2);
    uint64_t* dst = out.mutable_data() + word_offset;
    {
        py::gil_scoped_release release;
        segk::pack_bits_strided(src, h * w, c, dst, stride);
    }
}

void upsample_bilinear_bits(const py::handle& x_obj, const py::handle& out_obj, int64_t word_offset) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(h >= 1 && w >= 1 && c >= 1, "x must be a non-empty [H, W, C] map, got " + shape_str(x));
    SEGK_REQUIRE(py::isinstance<py::array>(out_obj) && py::reinterpret_borrow<py::array>(out_obj).ndim() == 3,
                 "out must be a [H, W, words] uint64 array");
    const auto out_arr = py::reinterpret_borrow<py::array>(out_obj);
    const int64_t out_h = out_arr.shape(0), out_w = out_arr.shape(1);
    require_out_size(out_h, out_w);
    auto out = bits_target(out_obj, out_h, out_w, word_offset, segk::words_for(c));
    const float* src = x.data();
    const int64_t stride = out.shape(2);
    uint64_t* dst = out.mutable_data() + word_offset;
    {
        py::gil_scoped_release release;
        segk::upsample_bilinear_bits(src, h, w, c, out_h, out_w, dst, stride);
    }
}

py::array_t<float> conv1x1(const py::sequence& parts_obj, const py::handle& w_obj, const py::handle& bias_obj,
                           bool relu) {
    const ConcatParts parts = concat_parts(parts_obj);
    auto w = checked<float>(w_obj, "weight_t", 2);
    const int64_t out_c = w.shape(1);
    SEGK_REQUIRE(w.shape(0) == parts.total_channels && out_c >= 1,
                 "weight_t must be [" + std::to_string(parts.total_channels) +
                     " (the parts' channels), out_channels >= 1], got " + shape_str(w));
    py::array_t<float, py::array::c_style> bias;
    if (!bias_obj.is_none()) {
        bias = checked<float>(bias_obj, "bias", 1);
        SEGK_REQUIRE(bias.shape(0) == out_c, "bias must have " + std::to_string(out_c) + " entries, got " +
                                                 std::to_string(bias.shape(0)));
    }
    py::array_t<float> out({parts.h, parts.w, out_c});
    const float* wp = w.data();
    const float* bp = bias_obj.is_none() ? nullptr : bias.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::conv1x1(parts.data.data(), parts.channels.data(), static_cast<int64_t>(parts.data.size()),
                      parts.h * parts.w, wp, out_c, bp, relu, op);
    }
    return out;
}

py::array_t<float> upsample_bilinear(const py::handle& x_obj, int64_t out_h, int64_t out_w) {
    auto x = checked<float>(x_obj, "x", 3);
    SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 1, "x must be a non-empty [H, W, C] map, got " +
                                                                            shape_str(x));
    require_out_size(out_h, out_w);
    py::array_t<float> out({out_h, out_w, static_cast<int64_t>(x.shape(2))});
    const float* xp = x.data();
    float* op = out.mutable_data();
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    {
        py::gil_scoped_release release;
        segk::upsample_bilinear(xp, h, w, c, op, out_h, out_w);
    }
    return out;
}

// run(image) with obj, a numpy array [H, W, C], as C-contiguous uint8 when its dtype is uint8, else
// as float32 (any other dtype: checked's error naming float32). For the kernels that take either.
template <typename Run>
auto run_u8_or_float(const py::handle& obj, const char* name, Run&& run) {
    if (py::reinterpret_borrow<py::array>(obj).dtype().is(py::dtype::of<uint8_t>()))
        return run(checked<uint8_t>(obj, name, 3));
    return run(checked<float>(obj, name, 3));
}

py::array_t<float> resize_area(const py::handle& x_obj, int64_t out_h, int64_t out_w) {
    SEGK_REQUIRE(py::isinstance<py::array>(x_obj), "x must be a numpy array");
    require_out_size(out_h, out_w);
    auto run = [&](auto x) {
        SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 1,
                     "x must be a non-empty [H, W, C] image, got " + shape_str(x));
        const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
        SEGK_REQUIRE(w * c <= std::numeric_limits<int32_t>::max(),
                     "x rows must hold fewer than 2^31 values, got " + shape_str(x));
        py::array_t<float> out({out_h, out_w, c});
        const auto* xp = x.data();
        float* op = out.mutable_data();
        {
            py::gil_scoped_release release;
            segk::resize_area(xp, h, w, c, op, out_h, out_w);
        }
        return out;
    };
    return run_u8_or_float(x_obj, "x", run);
}

// x: float32 [h, w, C]; pixel_scale, pixel_zero: float32 [C]. Returns uint8 [h, w, C].
py::array_t<uint8_t> image_pixels(const py::handle& x_obj, const py::handle& scale_obj, const py::handle& zero_obj) {
    auto x = checked<float>(x_obj, "x", 3);
    auto scale = checked<float>(scale_obj, "pixel_scale", 1);
    auto zero = checked<float>(zero_obj, "pixel_zero", 1);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(c >= 1 && scale.shape(0) == c && zero.shape(0) == c,
                 "pixel_scale and pixel_zero need one entry per channel of x " + shape_str(x));
    py::array_t<uint8_t> out({h, w, c});
    const float* xp = x.data();
    const float* sp = scale.data();
    const float* zp = zero.data();
    uint8_t* op = out.mutable_data();
    if (h * w * c > 0) {
        py::gil_scoped_release release;
        segk::image_pixels(xp, h, w, c, sp, zp, op);
    }
    return out;
}

// image: uint8 or float32 [h, w, C]; scale, offset: float32 [C]. Returns x [padded_h, padded_w, C], or
// (x, guide [h, w, C]) with with_guide.
py::object normalize_image(const py::handle& image_obj, const py::handle& scale_obj, const py::handle& offset_obj,
                           int64_t padded_h, int64_t padded_w, bool with_guide) {
    SEGK_REQUIRE(py::isinstance<py::array>(image_obj), "image must be a numpy array");
    auto scale = checked<float>(scale_obj, "scale", 1);
    auto offset = checked<float>(offset_obj, "offset", 1);
    auto run = [&](auto image) -> py::object {
        const int64_t h = image.shape(0), w = image.shape(1), c = image.shape(2);
        SEGK_REQUIRE(h >= 1 && w >= 1 && c >= 1, "image must be a non-empty [H, W, C] image, got " + shape_str(image));
        SEGK_REQUIRE(scale.shape(0) == c && offset.shape(0) == c,
                     "scale and offset need one entry per image channel (" + std::to_string(c) + "), got " +
                         std::to_string(scale.shape(0)) + " and " + std::to_string(offset.shape(0)));
        SEGK_REQUIRE(padded_h >= h && padded_w >= w && padded_h <= kMaxSide && padded_w <= kMaxSide,
                     "padded size must hold the image and be at most " + std::to_string(kMaxSide) + " per side, got " +
                         std::to_string(padded_h) + "x" + std::to_string(padded_w) + " for an image of " +
                         std::to_string(h) + "x" + std::to_string(w));
        py::array_t<float> x({padded_h, padded_w, c});
        py::array_t<float> guide(with_guide ? std::vector<py::ssize_t>{h, w, c} : std::vector<py::ssize_t>{0});
        const auto* ip = image.data();
        const float* sp = scale.data();
        const float* op = offset.data();
        float* xp = x.mutable_data();
        float* gp = with_guide ? guide.mutable_data() : nullptr;
        {
            py::gil_scoped_release release;
            segk::normalize_image(ip, h, w, c, sp, op, padded_h, padded_w, xp, gp);
        }
        if (!with_guide) return std::move(x);
        return py::make_tuple(x, guide);
    };
    return run_u8_or_float(image_obj, "image", run);
}

// image: uint8 or float32 [h, w, C]. Returns the guide [h, w, C] alone.
py::array_t<float> image_guide(const py::handle& image_obj) {
    SEGK_REQUIRE(py::isinstance<py::array>(image_obj), "image must be a numpy array");
    auto run = [&](auto image) -> py::array_t<float> {
        const int64_t h = image.shape(0), w = image.shape(1), c = image.shape(2);
        SEGK_REQUIRE(h >= 1 && w >= 1 && c >= 1, "image must be a non-empty [H, W, C] image, got " + shape_str(image));
        py::array_t<float> guide({h, w, c});
        const auto* ip = image.data();
        float* gp = guide.mutable_data();
        {
            py::gil_scoped_release release;
            segk::image_guide(ip, h, w, c, gp);
        }
        return guide;
    };
    return run_u8_or_float(image_obj, "image", run);
}

py::tuple guided_coefficients(const py::handle& guide_obj, const py::handle& src_obj, int64_t radius, double eps) {
    auto guide = checked<float>(guide_obj, "guide", 3);
    auto src = checked<float>(src_obj, "src", 3);
    const int64_t h = guide.shape(0), w = guide.shape(1), k = src.shape(2);
    SEGK_REQUIRE(h >= 1 && w >= 1 && guide.shape(2) == 3, "guide must be a non-empty [H, W, 3] image, got " +
                                                              shape_str(guide));
    SEGK_REQUIRE(src.shape(0) == h && src.shape(1) == w && k >= 1,
                 "src must be [H, W, K] with the guide's H and W, got " + shape_str(src) + " for guide " +
                     shape_str(guide));
    SEGK_REQUIRE(radius >= 1, "radius must be >= 1, got " + std::to_string(radius));
    SEGK_REQUIRE(radius <= kMaxPadding, "radius must be at most " + std::to_string(kMaxPadding) + ", got " +
                                            std::to_string(radius));
    SEGK_REQUIRE(eps > 0, "eps must be positive");
    py::array_t<float> a({h, w, k, int64_t{3}});
    py::array_t<float> b({h, w, k});
    const float* gp = guide.data();
    const float* sp = src.data();
    float* ap = a.mutable_data();
    float* bp = b.mutable_data();
    {
        py::gil_scoped_release release;
        segk::guided_coefficients(gp, sp, h, w, k, radius, eps, ap, bp);
    }
    return py::make_tuple(a, b);
}

py::array_t<float> guided_apply(const py::handle& a_obj, const py::handle& b_obj, const py::handle& guide_obj,
                                const std::vector<int64_t>& sources, const std::vector<float>& signs,
                                const std::vector<float>& bias) {
    auto a = checked<float>(a_obj, "a", 4);
    auto b = checked<float>(b_obj, "b", 3);
    auto guide = checked<float>(guide_obj, "guide", 3);
    const int64_t hl = a.shape(0), wl = a.shape(1), k = a.shape(2), h = guide.shape(0), w = guide.shape(1);
    SEGK_REQUIRE(hl >= 1 && wl >= 1 && k >= 1 && a.shape(3) == 3, "a must be [h, w, K, 3], got " + shape_str(a));
    SEGK_REQUIRE(b.shape(0) == hl && b.shape(1) == wl && b.shape(2) == k, "b must be [h, w, K] like a, got " +
                                                                               shape_str(b));
    SEGK_REQUIRE(h >= 1 && w >= 1 && guide.shape(2) == 3, "guide must be a non-empty [H, W, 3] image, got " +
                                                              shape_str(guide));
    const int64_t channels = static_cast<int64_t>(sources.size());
    SEGK_REQUIRE(channels >= 1 && signs.size() == sources.size() && bias.size() == sources.size(),
                 "sources, signs and bias must have one entry per output channel");
    for (int64_t s : sources) SEGK_REQUIRE(s >= 0 && s < k, "sources must index the K filtered channels");
    py::array_t<float> out({h, w, channels});
    const float* ap = a.data();
    const float* bp = b.data();
    const float* gp = guide.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::guided_apply(ap, bp, hl, wl, k, gp, h, w, sources.data(), signs.data(), bias.data(), channels, op);
    }
    return out;
}

py::array_t<float> half_logit_difference(const py::handle& scores_obj, double clip) {
    auto scores = checked<float>(scores_obj, "scores", 3);
    const int64_t h = scores.shape(0), w = scores.shape(1);
    SEGK_REQUIRE(scores.shape(2) == 2, "scores must be [H, W, 2] (two classes), got " + shape_str(scores));
    SEGK_REQUIRE(clip > 0, "clip must be positive, got " + std::to_string(clip));
    py::array_t<float> out({h, w, int64_t{1}});
    const float* sp = scores.data();
    float* op = out.mutable_data();
    const auto clip32 = static_cast<float>(clip);  // numpy compares a float32 array with float32 bounds
    {
        py::gil_scoped_release release;
        segk::half_logit_difference(sp, h * w, clip32, op);
    }
    return out;
}

py::array_t<uint8_t> argmax_channels(const py::handle& x_obj, const py::handle& bias_obj) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(c >= 1 && c <= 256, "argmax_channels needs 1 to 256 channels, got " + std::to_string(c));
    py::array_t<float, py::array::c_style> bias;
    if (!bias_obj.is_none()) {
        bias = checked<float>(bias_obj, "bias", 1);
        SEGK_REQUIRE(bias.shape(0) == c, "bias must have " + std::to_string(c) + " entries, got " +
                                             std::to_string(bias.shape(0)));
    }
    py::array_t<uint8_t> out({h, w});
    const float* xp = x.data();
    const float* bp = bias_obj.is_none() ? nullptr : bias.data();
    uint8_t* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::argmax_channels(xp, h * w, c, bp, op);
    }
    return out;
}

py::array_t<float> affine(const py::handle& x_obj, const py::handle& mul_obj, const py::handle& bias_obj,
                          bool relu_before, bool relu_after, const py::handle& residual_obj) {
    auto x = checked<float>(x_obj, "x", 3);
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    SEGK_REQUIRE(c >= 1, "x must have at least one channel, got shape " + shape_str(x));
    auto mul = checked<float>(mul_obj, "mul", 1);
    auto bias = checked<float>(bias_obj, "bias", 1);
    SEGK_REQUIRE(mul.shape(0) == c && bias.shape(0) == c,
                 "mul and bias must have " + std::to_string(c) + " entries, got " + shape_str(mul) + " and " +
                     shape_str(bias));
    py::array_t<float, py::array::c_style> residual;
    if (!residual_obj.is_none()) {
        residual = checked<float>(residual_obj, "residual", 3);
        SEGK_REQUIRE(residual.shape(0) == h && residual.shape(1) == w && residual.shape(2) == c,
                     "residual must have x's shape " + shape_str(x) + ", got " + shape_str(residual));
    }
    py::array_t<float> out({h, w, c});
    const float* xp = x.data();
    const float* mp = mul.data();
    const float* bp = bias.data();
    const float* rp = residual_obj.is_none() ? nullptr : residual.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::affine(xp, h * w, c, mp, bp, relu_before, relu_after, rp, op);
    }
    return out;
}

py::array_t<float> add_mirrored(const py::handle& a_obj, const py::handle& b_obj, int64_t h, int64_t w) {
    auto a = checked<float>(a_obj, "a", 3);
    auto b = checked<float>(b_obj, "b", 3);
    const int64_t c = a.shape(2);
    SEGK_REQUIRE(b.shape(2) == c, "a and b need the same channel count, got " + shape_str(a) + " and " + shape_str(b));
    SEGK_REQUIRE(h >= 1 && w >= 1 && c >= 1 && h <= a.shape(0) && h <= b.shape(0) && w <= a.shape(1) &&
                     w <= b.shape(1),
                 "h x w must be a non-empty top-left part of both maps, got " + std::to_string(h) + "x" +
                     std::to_string(w) + " for " + shape_str(a) + " and " + shape_str(b));
    py::array_t<float> out({h, w, c});
    const float* ap = a.data();
    const float* bp = b.data();
    float* op = out.mutable_data();
    const int64_t wa = a.shape(1), wb = b.shape(1);
    {
        py::gil_scoped_release release;
        segk::add_mirrored(ap, wa, bp, wb, h, w, c, op);
    }
    return out;
}

py::array_t<float> global_avgpool(const py::handle& x_obj) {
    auto x = checked<float>(x_obj, "x", 3);
    SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 1,
                      "x must be a non-empty [H, W, C] map, got " + shape_str(x));
    py::array_t<float> out({py::ssize_t{1}, py::ssize_t{1}, static_cast<py::ssize_t>(x.shape(2))});
    segk::global_avgpool(x.data(), x.shape(0) * x.shape(1), x.shape(2), out.mutable_data());
    return out;
}

py::array_t<float> maxpool2d(const py::handle& x_obj, int64_t kernel, int64_t stride, int64_t padding) {
    auto x = checked<float>(x_obj, "x", 3);
    SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 1, "x must be a non-empty [H, W, C] map, got " +
                                                                            shape_str(x));
    // Bounded first, so that 2 * padding cannot overflow (kernel 2^63-1 with padding 2^62 passed before).
    require_geometry(kernel, stride, padding, 1);
    SEGK_REQUIRE(2 * padding <= kernel, "maxpool needs 0 <= padding <= kernel / 2, got padding " +
                                            std::to_string(padding) + " for kernel " + std::to_string(kernel));
    const int64_t out_h = segk::conv_out_size(x.shape(0), kernel, stride, padding, 1);
    const int64_t out_w = segk::conv_out_size(x.shape(1), kernel, stride, padding, 1);
    SEGK_REQUIRE(out_h >= 1 && out_w >= 1,
                 "pooling window " + std::to_string(kernel) + " does not fit input " + shape_str(x));
    py::array_t<float> out({out_h, out_w, static_cast<int64_t>(x.shape(2))});
    const float* xp = x.data();
    float* op = out.mutable_data();
    const int64_t h = x.shape(0), w = x.shape(1), c = x.shape(2);
    {
        py::gil_scoped_release release;
        segk::maxpool2d(xp, h, w, c, kernel, stride, padding, op, out_h, out_w);
    }
    return out;
}

py::array_t<float> conv2d_direct(const py::handle& x_obj, const py::handle& w_obj, const py::handle& bias_obj,
                                 int64_t stride, int64_t padding, int64_t dilation, bool relu) {
    auto x = checked<float>(x_obj, "x", 3);
    auto w = checked<float>(w_obj, "weight", 4);
    const int64_t c = x.shape(2), out_c = w.shape(0), k = w.shape(1);
    SEGK_REQUIRE(x.shape(0) >= 1 && x.shape(1) >= 1 && c >= 1,
                 "x must be a non-empty [H, W, C] map, got " + shape_str(x));
    SEGK_REQUIRE(out_c >= 1 && k >= 1 && w.shape(2) == k && w.shape(3) == c,
                 "weight must be [out_channels, k, k, " + std::to_string(c) + "], got " + shape_str(w));
    require_geometry(k, stride, padding, dilation);
    const int64_t out_h = segk::conv_out_size(x.shape(0), k, stride, padding, dilation);
    const int64_t out_w = segk::conv_out_size(x.shape(1), k, stride, padding, dilation);
    SEGK_REQUIRE(out_h >= 1 && out_w >= 1, "kernel " + std::to_string(k) + " does not fit input " + shape_str(x));
    py::array_t<float, py::array::c_style> bias;
    if (!bias_obj.is_none()) {
        bias = checked<float>(bias_obj, "bias", 1);
        SEGK_REQUIRE(bias.shape(0) == out_c, "bias must have " + std::to_string(out_c) + " entries, got " +
                                                 std::to_string(bias.shape(0)));
    }
    py::array_t<float> out({out_h, out_w, out_c});
    const float* xp = x.data();
    const float* wp = w.data();
    const float* bp = bias_obj.is_none() ? nullptr : bias.data();
    float* op = out.mutable_data();
    const int64_t h = x.shape(0), width = x.shape(1);
    {
        py::gil_scoped_release release;
        segk::conv2d_direct(xp, h, width, c, wp, out_c, k, bp, stride, padding, dilation, relu, op);
    }
    return out;
}

// Largest kernel side of conv2d_u8: bounds |acc| <= 11 * 11 * 4 * 255 * 64 < 2^24 (float(acc) exact).
constexpr int64_t kMaxU8Kernel = 11;

py::array_t<float> conv2d_u8(const py::handle& image_obj, const py::handle& w_obj, const py::handle& scale_obj,
                             const py::handle& row_class_obj, const py::handle& col_class_obj,
                             const py::handle& bias_obj, int64_t stride, int64_t padding, bool relu) {
    auto image = checked<uint8_t>(image_obj, "image", 3);
    auto w = checked<int8_t>(w_obj, "weight", 4);
    auto scale = checked<float>(scale_obj, "scale", 1);
    auto row_class = checked<int32_t>(row_class_obj, "row_class", 1);
    auto col_class = checked<int32_t>(col_class_obj, "col_class", 1);
    auto bias = checked<float>(bias_obj, "bias_table", 3);
    const int64_t h = image.shape(0), width = image.shape(1), c = image.shape(2);
    SEGK_REQUIRE(h >= 1 && width >= 1 && c >= 1 && c <= 4,
                 "image must be a non-empty [H, W, C] image with 1 to 4 channels, got " + shape_str(image));
    const int64_t out_c = w.shape(0), k = w.shape(1);
    SEGK_REQUIRE(out_c >= 1 && k >= 1 && w.shape(2) == k && w.shape(3) == c,
                 "weight must be [out_channels, k, k, " + std::to_string(c) + "] with a square kernel, got " +
                     shape_str(w));
    require_range(k, 1, kMaxU8Kernel, "kernel");
    require_range(stride, 1, kMaxStride, "stride");
    require_range(padding, 0, kMaxPadding, "padding");
    const int8_t* wp = w.data();
    const int64_t w_size = w.size();
    int8_t lo = 0, hi = 0;
    for (int64_t i = 0; i < w_size; ++i) {
        lo = std::min(lo, wp[i]);
        hi = std::max(hi, wp[i]);
    }
    SEGK_REQUIRE(lo >= -64 && hi <= 63, "weight values must lie in [-64, 63], got [" + std::to_string(lo) + ", " +
                                            std::to_string(hi) + "]");
    SEGK_REQUIRE(scale.shape(0) == out_c, "scale must have " + std::to_string(out_c) + " entries, got " +
                                              std::to_string(scale.shape(0)));
    const int64_t out_h = row_class.shape(0), out_w = col_class.shape(0);
    SEGK_REQUIRE(out_h >= 1 && out_w >= 1, "row_class and col_class must be non-empty (the output size), got " +
                                               std::to_string(out_h) + "x" + std::to_string(out_w));
    SEGK_REQUIRE(out_h <= std::numeric_limits<int64_t>::max() / 4 / out_w / out_c,
                 "output " + std::to_string(out_h) + "x" + std::to_string(out_w) + "x" + std::to_string(out_c) +
                     " is too large");
    const int64_t classes_r = bias.shape(0), classes_s = bias.shape(1);
    SEGK_REQUIRE(classes_r >= 1 && classes_s >= 1 && bias.shape(2) == out_c,
                 "bias_table must be [R, S, " + std::to_string(out_c) + "] with R, S >= 1, got " + shape_str(bias));
    const int32_t* rp = row_class.data();
    const int32_t* cp = col_class.data();
    for (int64_t y = 0; y < out_h; ++y)
        SEGK_REQUIRE(rp[y] >= 0 && rp[y] < classes_r, "row_class[" + std::to_string(y) + "] = " +
                                                          std::to_string(rp[y]) + " is not in [0, " +
                                                          std::to_string(classes_r) + ")");
    for (int64_t x = 0; x < out_w; ++x)
        SEGK_REQUIRE(cp[x] >= 0 && cp[x] < classes_s, "col_class[" + std::to_string(x) + "] = " +
                                                          std::to_string(cp[x]) + " is not in [0, " +
                                                          std::to_string(classes_s) + ")");
    py::array_t<float> out({out_h, out_w, out_c});
    const uint8_t* ip = image.data();
    const float* sp = scale.data();
    const float* bp = bias.data();
    float* op = out.mutable_data();
    {
        py::gil_scoped_release release;
        segk::conv2d_u8(ip, h, width, c, wp, out_c, k, sp, rp, out_h, cp, out_w, bp, classes_s, stride, padding,
                        relu, op);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "Packed-bit XNOR-popcount convolution kernels (see docs/architecture.md, Kernel API).";
    m.def("isa", &segk::isa, "The ISA path in use: 'avx512', 'avx2' or 'scalar'.");
    m.def("available_isas", &segk::available_isas, "ISA paths this CPU supports, best first.");
    m.def(
        "set_isa",
        [](const std::string& name) {
            if (!segk::set_isa(name)) {
                std::string avail;
                for (const auto& n : segk::available_isas()) avail += (avail.empty() ? "" : ", ") + n;
                throw py::value_error("ISA '" + name + "' is not supported here; available: " + avail);
            }
        },
        py::arg("name"), "Force an ISA path; ValueError if this CPU does not support it.");
    m.def("popcount", &segk::popcount_method,
          "How the path in use counts bits: 'vpopcntq' (avx512), 'lut' | 'mix1' | 'mix2' (avx2), 'popcnt' (scalar).");
    m.def("available_popcounts", &segk::available_popcounts,
          "The avx2 path's popcount methods on this CPU (empty without AVX2).");
    m.def(
        "set_popcount",
        [](const std::string& name) {
            if (!segk::set_popcount(name)) {
                std::string avail = "auto";
                for (const auto& n : segk::available_popcounts()) avail += ", " + n;
                throw py::value_error("popcount method '" + name + "' is not supported here; available: " + avail);
            }
        },
        py::arg("name"),
        "Force the avx2 path's popcount method ('lut', 'mix1', 'mix2'), or 'auto' for the calibrated choice; "
        "ValueError if unknown or this CPU has no AVX2.");
    m.def(
        "dispatch_info",
        []() {
            segk::DispatchInfo info;
            {
                py::gil_scoped_release release;  // may run the avx2 calibration (a few ms)
                info = segk::dispatch_info();
            }
            py::dict d;
            d["isa"] = info.isa;
            d["popcount"] = info.popcount;
            d["popcount_source"] = info.popcount_source;
            py::dict cal;
            for (const auto& [name, ns] : info.calibration_ns) cal[py::str(name)] = ns * 1e-3;
            d["calibration_us"] = cal;
            d["available_isas"] = segk::available_isas();
            d["available_popcounts"] = segk::available_popcounts();
            d["threads"] = info.threads;
            d["u8_dot"] = segk::u8_dot_method();
            return d;
        },
        "The kernel path and popcount method in use: {'isa', 'popcount', 'popcount_source' ('calibrated' | "
        "'forced' | 'fixed'), 'calibration_us' (avx2 variants' calibration times, once run), 'available_isas', "
        "'available_popcounts', 'threads', 'u8_dot' (the integer stem's dot products: 'vnni' | 'maddubs' | "
        "'scalar')}.");
    m.def(
        "set_num_threads",
        [](int n) {
            SEGK_REQUIRE(n >= 1, "number of threads must be >= 1, got " + std::to_string(n));
            segk::set_num_threads(n);
        },
        py::arg("n"));
    m.def("get_num_threads", &segk::get_num_threads);
    m.def(
        "popcount_ceilings",
        [](const std::vector<std::string>& methods, int repeats, double seconds) {
            SEGK_REQUIRE(repeats >= 1 && repeats <= 1000, "repeats must be in 1 .. 1000");
            SEGK_REQUIRE(seconds > 0.0 && seconds <= 10.0, "seconds must be in (0, 10]");
            std::vector<segk::PopcountCeiling> res;
            {
                py::gil_scoped_release release;
                res = segk::popcount_ceilings(methods, repeats, seconds);
            }
            py::list out;
            for (const auto& c : res) {
                py::dict d;
                d["method"] = c.method;
                d["isa"] = c.isa;
                d["detail"] = c.detail;
                d["gbmacs"] = c.gbmacs;
                out.append(d);
            }
            return out;
        },
        py::arg("methods") = std::vector<std::string>{}, py::arg("repeats") = 7, py::arg("seconds") = 0.05,
        "In-register ceilings of the ways to count bits on this core: [{'method', 'isa' (the kernel path it "
        "bounds: 'avx2' or 'avx512'), 'detail', 'gbmacs': [G binary MAC/s per repeat, by thread CPU time]}]; the "
        "avx2 methods need AVX2 + POPCNT, 'vpopcntq' AVX-512 VPOPCNTDQ (empty on a CPU with neither).");
    m.def(
        "cpu_round_trip_ns",
        [](int64_t rounds, int batches) {
            SEGK_REQUIRE(rounds >= 1 && rounds <= 10'000'000, "rounds must be in 1 .. 10000000");
            SEGK_REQUIRE(batches >= 1 && batches <= 1000, "batches must be in 1 .. 1000");
            py::gil_scoped_release release;
            return segk::cpu_round_trip_ns(rounds, batches);
        },
        py::arg("rounds") = 20000, py::arg("batches") = 5,
        "Nanoseconds for a cache line to go from this thread's CPU to another CPU this process may use and "
        "back (median of `batches` means of `rounds` round trips): the least a hand-off between two kernel "
        "threads costs. Low on two cores of one die, several times higher across dies or sockets (a VM's "
        "host may move its CPUs between them). Stops after about a second of batches; NaN with one CPU, when "
        "the other CPU cannot be reached, or off Linux.");
    py::class_<PyPreparedWeights>(
        m, "PreparedWeights",
        "Binary conv weights arranged once for the kernels (kernels.prepare_weights); pass it as `w` to the "
        "bconv2d functions in place of the uint64 array. The arrangement for each ISA path is made on first use "
        "and kept.")
        .def_property_readonly("array", [](const PyPreparedWeights& p) { return p.array; },
                               "The packed weights, uint64 [out_channels, k, k, words] (read-only).")
        .def_property_readonly("in_channels", [](const PyPreparedWeights& p) { return p.in_channels; })
        .def_property_readonly("shape", [](const PyPreparedWeights& p) { return p.array.attr("shape"); })
        .def("__repr__", [](const PyPreparedWeights& p) {
            return "PreparedWeights(shape=" + shape_str(p.array) + ", in_channels=" + std::to_string(p.in_channels) +
                   ")";
        });
    m.def("prepare_weights", &prepare_weights, py::arg("w"), py::arg("in_channels"),
          "Validate and copy packed weights uint64 [O, k, k, ceil(in_channels/64)] into a PreparedWeights, whose "
          "kernel layout is built once per ISA path instead of on every call.");
    m.def("pack_bits", &pack_bits, py::arg("x"),
          "Sign-pack float32 [H, W, C] along channels into uint64 [H, W, ceil(C/64)]; bit = 1 where x < 0.");
    m.def("bconv2d_int", &bconv2d_int, py::arg("a"), py::arg("w"), py::arg("in_channels"), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1,
          "Binary convolution with +1 padding: int32 [Ho, Wo, O] dot products n - 2 * popcount(a ^ w).");
    m.def("bconv2d", &bconv2d, py::arg("a"), py::arg("w"), py::arg("in_channels"), py::arg("stride"),
          py::arg("padding"), py::arg("dilation"), py::arg("mul"), py::arg("bias"), py::arg("relu_before"),
          py::arg("relu_after"), py::arg("residual") = py::none(), py::arg("pack_output") = false,
          "Binary convolution + fused epilogue mul * pre(dot) + bias (+ residual), optional ReLUs; float32. With "
          "pack_output, returns (output, pack_bits(output)), the bits written by the epilogue.");
    m.def("bconv2d_float", &bconv2d_float, py::arg("x"), py::arg("w"), py::arg("stride"), py::arg("padding"),
          py::arg("dilation"), py::arg("mul"), py::arg("bias"), py::arg("relu_before"), py::arg("relu_after"),
          py::arg("residual") = py::none(), py::arg("pack_output") = false,
          "bconv2d on a float32 [H, W, C] input, binarised (x < 0 -> -1) and packed inside the call.");
    m.def("bconv2d_chain", &bconv2d_chain, py::arg("a"), py::arg("bases"), py::arg("in_channels"), py::arg("stride"),
          py::arg("padding"), py::arg("dilation"), py::arg("residual") = py::none(), py::arg("pack_output") = false,
          "A chain of binary convs of one packed input whose outputs add up (a layer-wise decomposition's bases): "
          "bases = [(w, mul, bias, relu_before, relu_after), ...]; base j's epilogue takes base j - 1's output as "
          "its residual (base 0 takes `residual`). Returns the last output (and its sign bits with pack_output), "
          "equal bit for bit to running the bases one by one.");
    m.def("upsample_bilinear", &upsample_bilinear, py::arg("x"), py::arg("out_h"), py::arg("out_w"),
          "Bilinear resampling of float32 [H, W, C] to [out_h, out_w, C], as F.interpolate(mode='bilinear', "
          "align_corners=False): rows first, then columns.");
    m.def("resize_area", &resize_area, py::arg("x"), py::arg("out_h"), py::arg("out_w"),
          "Area (box) resampling of uint8 or float32 [H, W, C] to float32 [out_h, out_w, C], as OpenCV's "
          "INTER_AREA when downscaling: width pass, then height pass (equal bit for bit to "
          "kernels.reference.resize_area).");
    m.def("image_pixels", &image_pixels, py::arg("x"), py::arg("pixel_scale"), py::arg("pixel_zero"),
          "The u8 pixels of a normalised image float32 [H, W, C] that an integer stem reads: rint(x * "
          "pixel_scale + pixel_zero) clipped to [0, 255], the product and the sum each rounded to float32 "
          "(equal to kernels.reference.image_pixels).");
    m.def("normalize_image", &normalize_image, py::arg("image"), py::arg("scale"), py::arg("offset"),
          py::arg("padded_h"), py::arg("padded_w"), py::arg("with_guide") = false,
          "The network input of an image uint8 or float32 [H, W, C]: float32 [padded_h, padded_w, C] = image * "
          "scale + offset (two float32 roundings, per channel) with zeros past H and W; with with_guide, also the "
          "guided filter's guide clip(image * float32(1 / 255), 0, 1) [H, W, C], from the same pass: (x, guide).");
    m.def("image_guide", &image_guide, py::arg("image"),
          "The guided filter's guide of an image uint8 or float32 [H, W, C] alone: clip(image * float32(1 / 255), "
          "0, 1) [H, W, C], as normalize_image(..., with_guide=True) gives it, without the network input.");
    m.def("guided_coefficients", &guided_coefficients, py::arg("guide"), py::arg("src"), py::arg("radius"),
          py::arg("eps"),
          "Colour guided filter coefficients, window-averaged: guide float32 [H, W, 3], src [H, W, K] -> (a [H, W, "
          "K, 3], b [H, W, K]), the filtered src being a . guide + b; (2 radius + 1)^2 windows clipped at the "
          "border, eps on the colour covariance's diagonal (sums in double).");
    m.def("guided_apply", &guided_apply, py::arg("a"), py::arg("b"), py::arg("guide"), py::arg("sources"),
          py::arg("signs"), py::arg("bias"),
          "The fast guided filter's full-resolution step: coefficients a [h, w, K, 3] and b [h, w, K] upsampled "
          "bilinearly to the guide's [H, W] (as upsample_bilinear), filtered_j = a_j . guide + b_j, and out[..., "
          "c] = signs[c] * filtered[..., sources[c]] + bias[c] -> float32 [H, W, len(sources)].");
    m.def("half_logit_difference", &half_logit_difference, py::arg("scores"), py::arg("clip"),
          "The two-class guided filter's source: float32 [H, W, 1] = clip((scores[..., 1] - scores[..., 0]) * 0.5, "
          "-clip, clip) for scores float32 [H, W, 2] (the class-1 logit centred over both classes).");
    m.def("argmax_channels", &argmax_channels, py::arg("x"), py::arg("bias") = py::none(),
          "Label map uint8 [H, W] of float32 [H, W, C] (C <= 256): np.argmax(x, axis=2), split over the kernels' "
          "threads (first maximum wins, NaN counts as the maximum). With bias (float32 [C]): np.argmax(x + bias, "
          "axis=2), the sums in float32, without writing them.");
    m.def("affine", &affine, py::arg("x"), py::arg("mul"), py::arg("bias"), py::arg("relu_before"),
          py::arg("relu_after"), py::arg("residual"),
          "Per-channel pre(x) * mul + bias (+ residual), pre = ReLU if relu_before, ReLU after if relu_after: "
          "float32 [H, W, C], mul/bias [C], residual [H, W, C] or None; each step rounded to float32 as numpy.");
    m.def("add_mirrored", &add_mirrored, py::arg("a"), py::arg("b"), py::arg("h"), py::arg("w"),
          "a[:h, :w] + b[:h, :w][:, ::-1] for float32 [H, W, C] maps (a prediction's pass and its mirrored "
          "pass), as numpy computes it, in one pass over the threads.");
    m.def("global_avgpool", &global_avgpool, py::arg("x"),
          "Mean of float32 [H, W, C] over H and W -> [1, 1, C]: summed in float64 in pixel order, rounded to "
          "float32 once.");
    m.def("maxpool2d", &maxpool2d, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
          "Max pooling of float32 [H, W, C], as torch.nn.MaxPool2d (floor mode; padding never wins).");
    m.def("conv2d_direct", &conv2d_direct, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
          py::arg("padding"), py::arg("dilation"), py::arg("relu"),
          "Float convolution with zero padding, computed directly: x float32 [H, W, C], weight [O, k, k, C], bias "
          "[O] or None -> [Ho, Wo, O]. For few input channels (the RGB stem).");
    m.def("conv2d_u8", &conv2d_u8, py::arg("image"), py::arg("weight"), py::arg("scale"), py::arg("row_class"),
          py::arg("col_class"), py::arg("bias_table"), py::arg("stride"), py::arg("padding"), py::arg("relu"),
          "Integer direct convolution of a uint8 image [H, W, C] (C <= 4) with int8 weights [O, k, k, C] in "
          "[-64, 63] (k <= 11), zero padding -> float32 [len(row_class), len(col_class), O]: the output size is "
          "the caller's (input pixels past H and W read as 0). acc = int32 sum of weight * input over the window; "
          "out = fma(float(acc), scale[o], bias_table[row_class[y], col_class[x], o]) rounded once, max(out, 0) "
          "if relu. scale float32 [O], row_class / col_class int32, bias_table float32 [R, S, O]. Equal bit for "
          "bit on every ISA path (AVX-512 VNNI, AVX-VNNI, AVX-512 / AVX2 vpmaddubsw, scalar) and thread count.");
    m.def(
        "_set_u8_vnni", [](bool enabled) { return segk::set_u8_vnni(enabled); }, py::arg("enabled"),
        "Tests only: whether conv2d_u8 may use VNNI's vpdpbusd (AVX-512 VNNI on the avx512 path, AVX-VNNI on the "
        "avx2 path, each where the CPU has it) or must use its emulation; returns the previous setting.");
    m.def("pack_bits_concat", &pack_bits_concat, py::arg("parts"),
          "pack_bits(np.concatenate(parts, axis=2)) without building the concat: parts are float32 [H, W, C_i] "
          "maps of one size -> uint64 [H, W, ceil(sum C_i / 64)].");
    m.def("pack_bits_into", &pack_bits_into, py::arg("x"), py::arg("out"), py::arg("word_offset"),
          "Writes pack_bits(x) (float32 [H, W, C]) into out[:, :, word_offset : word_offset + ceil(C / 64)] "
          "(out: uint64 [H, W, words], C-contiguous, writeable): a part of a channel concat into its words of the "
          "concat's sign bits.");
    m.def("upsample_bilinear_bits", &upsample_bilinear_bits, py::arg("x"), py::arg("out"), py::arg("word_offset"),
          "pack_bits_into(upsample_bilinear(x, H, W), out, word_offset) for out [H, W, words], without writing "
          "the upsampled floats.");
    m.def("conv1x1", &conv1x1, py::arg("parts"), py::arg("weight_t"), py::arg("bias"), py::arg("relu"),
          "1x1 float convolution of np.concatenate(parts, axis=2) without building the concat: parts float32 "
          "[H, W, C_i] of one size, weight_t [sum C_i, O] (input-channel major), bias [O] or None, optional ReLU "
          "-> [H, W, O]. Sums each output's input channels in order, then adds the bias.");
    m.def("lincomb_group", &lincomb_group, py::arg("inputs"), py::arg("program"),
          py::arg("pack_outputs") = std::vector<int64_t>{}, py::arg("drop_outputs") = std::vector<int64_t>{},
          "Linear combinations of float32 maps of one shape, in one pass: program[m] lists output m's terms as "
          "(source, coeff); sources 0 .. len(inputs) - 1 are the inputs, len(inputs) + j is output j < m. Output "
          "m = coeff0 * src0, then += coeff * src per term, each step rounded to float32 (as numpy would). Returns "
          "(outputs, bits): bits[m] = pack_bits(outputs[m]) for the outputs named in pack_outputs ([H, W, C] maps "
          "only), None for the others; outputs[m] is None for those in drop_outputs (used by later outputs of the "
          "group or as bits only, never written to memory).");
}
