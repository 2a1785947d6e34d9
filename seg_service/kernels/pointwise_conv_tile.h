// The SIMD tiles of conv1x1 (pointwise_conv.cpp), included once per ISA path inside a namespace
// that defines `I` (the vector type V and its operations: zero, load, load_first (the first n < kLanes
// floats, the rest zero), set1, fma, add, relu, store, sum (of the lanes); kLanes floats per vector) and SEGK_FN (the function attributes with the path's target). No include
// guard on purpose.

// Pixels p0 .. p0 + P - 1, channel block ob (NV vectors): P x NV accumulators over every input
// channel of every part. C > 0: every part has C channels, known at compile time, so each pixel's
// input is at a fixed offset from one pointer (with a run-time stride, the P pixel addresses take
// more general registers than there are and the loop spills).
template <int NV, int P, int C>
SEGK_FN void tile(const Pointwise& d, int64_t p0, int64_t ob) {
    using V = typename I::V;
    constexpr int L = I::kLanes, NB = L * NV;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = I::zero();
    const float* w = d.wt + ob * NB;
    for (int64_t part = 0; part < d.n_parts; ++part) {
        const int64_t c_part = C > 0 ? C : d.channels[part];
        const float* x = d.parts[part] + p0 * c_part;
        for (int64_t c = 0; c < c_part; ++c, w += d.ldw) {
            V wv[NV];
            for (int v = 0; v < NV; ++v) wv[v] = I::load(w + v * L);
#pragma GCC unroll 16
            for (int p = 0; p < P; ++p) {
                const V xv = I::set1(x[p * c_part + c]);
                for (int v = 0; v < NV; ++v) acc[p][v] = I::fma(xv, wv[v], acc[p][v]);
            }
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    V bias[NV];
    for (int v = 0; v < NV; ++v) bias[v] = I::load(d.bias + c0 + v * L);
    for (int p = 0; p < P; ++p) {
        float* o = d.out + (p0 + p) * d.out_c + c0;
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

// Pixels [p0, p1) of channel block ob: full tiles, then the rest as one tile shifted back to end at
// p1 (it recomputes a few pixels of this range, writing the same values again), or single pixels
// when the range is shorter than a tile.
template <int NV, int P, int C>
SEGK_FN void tile_range(const Pointwise& d, int64_t p0, int64_t p1, int64_t ob) {
    int64_t p = p0;
    for (; p + P <= p1; p += P) tile<NV, P, C>(d, p, ob);
    if (p == p1) return;
    if (p1 - p0 >= P) {
        tile<NV, P, C>(d, p1 - P, ob);
        return;
    }
    for (; p < p1; ++p) tile<NV, 1, C>(d, p, ob);
}

// The range functions of one tile shape, by compile-time channel count (0: read per part).
template <int NV, int P>
struct Tiles {
    template <int C>
    SEGK_FN static void range(const Pointwise& d, int64_t p0, int64_t p1, int64_t ob) {
        tile_range<NV, P, C>(d, p0, p1, ob);
    }
};

// Few output channels (kFewOutputs at most): the vectors run along the input channels instead, so
// no lane is wasted on missing outputs. Pixels p0 .. p0 + P - 1: P x O accumulators, each a vector
// of partial sums over every kLanes-th input channel, added up across lanes at the end.
template <int O, int P>
SEGK_FN void few_tile(const Pointwise& d, int64_t p0) {
    using V = typename I::V;
    constexpr int L = I::kLanes;
    V acc[P][O];
    for (int p = 0; p < P; ++p)
        for (int o = 0; o < O; ++o) acc[p][o] = I::zero();
    int64_t first = 0;  // the part's first channel in the concat
    for (int64_t part = 0; part < d.n_parts; first += d.channels[part], ++part) {
        const int64_t c_part = d.channels[part];
        const float* x = d.parts[part] + p0 * c_part;
        const float* w = d.wo + first;
        int64_t c = 0;
        for (; c + L <= c_part; c += L) {
            V wv[O];
            for (int o = 0; o < O; ++o) wv[o] = I::load(w + o * d.in_c + c);
            for (int p = 0; p < P; ++p) {
                const V xv = I::load(x + p * c_part + c);
                for (int o = 0; o < O; ++o) acc[p][o] = I::fma(xv, wv[o], acc[p][o]);
            }
        }
        if (c < c_part) {
            const int n = static_cast<int>(c_part - c);
            V wv[O];
            for (int o = 0; o < O; ++o) wv[o] = I::load_first(w + o * d.in_c + c, n);
            for (int p = 0; p < P; ++p) {
                const V xv = I::load_first(x + p * c_part + c, n);
                for (int o = 0; o < O; ++o) acc[p][o] = I::fma(xv, wv[o], acc[p][o]);
            }
        }
    }
    for (int p = 0; p < P; ++p) {
        float* out = d.out + (p0 + p) * d.out_c;
        for (int o = 0; o < O; ++o) {
            const float v = I::sum(acc[p][o]) + d.bias[o];
            out[o] = d.relu ? std::max(v, 0.0f) : v;
        }
    }
}

template <int O, int P>
SEGK_FN void few_range(const Pointwise& d, int64_t p0, int64_t p1, int64_t) {
    int64_t p = p0;
    for (; p + P <= p1; p += P) few_tile<O, P>(d, p);
    for (; p < p1; ++p) few_tile<O, 1>(d, p);
}
