// The SIMD tiles of conv2d_direct (float_conv.cpp), included once per ISA path inside a namespace
// that defines `I` (the vector type V and its operations: zero, load, set1, fma, add, relu, store;
// kLanes floats per vector, kVectors vectors per channel block, kPixels pixels per tile) and
// SEGK_FN (the function attributes with the path's target). No include guard on purpose.

// Output pixels x0 .. x0 + P - 1 of row y, channel block ob: P x kVectors accumulators. G fixes
// the channel count and stride at compile time (dilation 1) or, with kC == 0, reads the taps'
// offsets from the table.
template <int P, typename G>
SEGK_FN void tile(const DirectConv& d, int64_t y, int64_t x0, int64_t ob) {
    using V = typename I::V;
    constexpr int L = I::kLanes, NV = I::kVectors, NB = L * NV;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = I::zero();
    const float* w = d.wt + ob * d.taps * NB;
    if constexpr (G::kC > 0) {
        constexpr int C = G::kC, PS = G::kC * G::kS;  // floats between neighbouring pixels' windows
        const int64_t row_step = d.wp * C;
        const float* row = d.xp + (y * G::kS * d.wp + x0 * G::kS) * C;
        for (int64_t ky = 0; ky < d.kernel; ++ky, row += row_step) {
            const float* src = row;
            for (int64_t kx = 0; kx < d.kernel; ++kx, src += C) {
#pragma GCC unroll 4
                for (int c = 0; c < C; ++c, w += NB) {
                    V wv[NV];
                    for (int v = 0; v < NV; ++v) wv[v] = I::load(w + v * L);
#pragma GCC unroll 16
                    for (int p = 0; p < P; ++p) {
                        const V xv = I::set1(src[c + p * PS]);
                        for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(xv, wv[v], acc[p][v]);
                    }
                }
            }
        }
    } else {
        const int64_t pixel_step = d.stride * d.c;
        const float* base = d.xp + (y * d.stride * d.wp + x0 * d.stride) * d.c;
        for (int64_t t = 0; t < d.taps; ++t, w += NB) {
            V wv[NV];
            for (int v = 0; v < NV; ++v) wv[v] = I::load(w + v * L);
            const float* src = base + d.tap_offset[t];
#pragma GCC unroll 16
            for (int p = 0; p < P; ++p) {
                const V xv = I::set1(src[p * pixel_step]);
                for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(xv, wv[v], acc[p][v]);
            }
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    V bias[NV];
    for (int v = 0; v < NV; ++v) bias[v] = I::load(d.bias + c0 + v * L);
    for (int p = 0; p < P; ++p) {
        float* o = d.out + (y * d.out_w + x0 + p) * d.out_c + c0;
        V r[NV];
        for (int v = 0; v < NV; ++v) {
            r[v] = I::add(acc[p][v], bias[v]);
            if (d.relu) r[v] = I::relu(r[v]);
        }
        if (count == NB) {
            for (int v = 0; v < NV; ++v) I::store(o + v * L, r[v]);
        } else {
            float tmp[NB];
            for (int v = 0; v < NV; ++v) I::store(tmp + v * L, r[v]);
            std::memcpy(o, tmp, static_cast<size_t>(count) * sizeof(float));
        }
    }
}

// One output row of one channel block: full tiles, then the rest as one tile shifted to end at the
// row's end (or single pixels when the row is narrower than a tile).
template <typename G>
SEGK_FN void row(const DirectConv& d, int64_t y, int64_t ob) {
    constexpr int P = I::kPixels;
    int64_t x = 0;
    for (; x + P <= d.out_w; x += P) tile<P, G>(d, y, x, ob);
    if (x == d.out_w) return;
    if (d.out_w >= P) {
        tile<P, G>(d, y, d.out_w - P, ob);
        return;
    }
    for (; x < d.out_w; ++x) tile<1, G>(d, y, x, ob);
}
