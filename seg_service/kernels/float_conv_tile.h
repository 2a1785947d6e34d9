// The SIMD tiles of conv2d_direct (float_conv.cpp), included once per ISA path inside a namespace
// that defines `I` (the vector type V and its operations: zero, load, set1, fma, add, relu, store,
// store_first; kLanes floats per vector, kVectors vectors per channel block, kPixels pixels at most
// per tile) and SEGK_FN (the function attributes with the path's target). No include guard on purpose.

// Output pixels x0 .. x0 + P - 1 of one row, channel block ob: P x kVectors accumulators.
// `src` is the input value under pixel x0's first tap (top-left of its window, channel 0), in a map
// whose rows are `row_step` floats apart (the input itself, or a zero-padded patch of it); `out` is
// pixel x0's output, channel 0. G fixes the channel count, stride and kernel size at compile time
// (dilation 1): one kernel row's k * C taps are then contiguous floats of an input row, and each
// pixel's window is a fixed displacement further. With G::kC == 0 the taps' offsets come from
// `tap_offset` (computed for this row_step). Taps are summed in the order tap = (ky * k + kx) * C + c, one FMA
// each, from zero; the bias is added after the last tap.
template <int P, typename G>
SEGK_FN void tile(const DirectConv& d, const float* src, int64_t row_step, const int64_t* tap_offset, float* out,
                  int64_t ob) {
    using V = typename I::V;
    constexpr int L = I::kLanes, NV = I::kVectors, NB = L * NV;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = I::zero();
    const float* w = d.wt + ob * d.taps * NB;
    if constexpr (G::kC > 0) {
        constexpr int C = G::kC, K = G::kK, PS = G::kC * G::kS;  // PS: floats between neighbouring windows
        const float* row = src;
        for (int ky = 0; ky < K; ++ky, row += row_step) {
            // One tap per iteration: with more taps in view GCC hoists their loads into the
            // accumulators' registers (spills) or copies accumulators between registers.
#pragma GCC unroll 1
            for (int t = 0; t < K * C; ++t, w += NB) {
                V wv[NV];
                for (int v = 0; v < NV; ++v) wv[v] = I::load(w + v * L);
#pragma GCC unroll 16
                for (int p = 0; p < P; ++p) {
                    const V xv = I::set1(row[t + p * PS]);
                    for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(xv, wv[v], acc[p][v]);
                }
            }
        }
    } else {
        const int64_t pixel_step = d.stride * d.c;
        for (int64_t t = 0; t < d.taps; ++t, w += NB) {
            V wv[NV];
            for (int v = 0; v < NV; ++v) wv[v] = I::load(w + v * L);
            const float* s = src + tap_offset[t];
#pragma GCC unroll 16
            for (int p = 0; p < P; ++p) {
                const V xv = I::set1(s[p * pixel_step]);
                for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(xv, wv[v], acc[p][v]);
            }
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    V bias[NV];
    for (int v = 0; v < NV; ++v) bias[v] = I::load(d.bias + c0 + v * L);
    for (int p = 0; p < P; ++p) {
        float* o = out + p * d.out_c + c0;
        for (int v = 0; v < NV; ++v) {
            V r = I::add(acc[p][v], bias[v]);
            if (d.relu) r = I::relu(r);
            if (count == NB) {
                I::store(o + v * L, r);
            } else if (count > v * L) {
                I::store_first(o + v * L, r, std::min<int64_t>(L, count - v * L));
            }
        }
    }
}

// The tiles of geometry G for every width P in 1 .. I::kPixels (entry P - 1).
template <typename G, size_t... Is>
const TileFn* tile_fns(std::index_sequence<Is...>) {
    static const TileFn fns[] = {&tile<static_cast<int>(Is) + 1, G>...};
    return fns;
}

template <typename G>
TileSet tile_set() {
    return {tile_fns<G>(std::make_index_sequence<I::kPixels>{}), I::kPixels, I::kLanes * I::kVectors};
}
