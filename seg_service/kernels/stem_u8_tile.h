// The SIMD tiles of conv2d_u8 (stem_u8.cpp), included once per ISA path inside a namespace that
// defines `I` and SEGK_FN (the function attributes with the path's target). No include guard on purpose.
//
// `I` holds the integer accumulator type V (kLanes int32 lanes), the weight operand W (4 int8 taps of
// kLanes channels), the input operand X (4 uint8 taps, broadcast), the float type F and their
// operations: zero, load_w, bcast, dot (acc + the 4-tap u8 x s8 dot product per lane, exact), loadf,
// loadf_first, epilogue (fma(float(acc), scale, bias), rounded once), relu, store, store_first;
// kVectors vectors per channel block, kPixels pixels at most per tile.

// Output pixels x0 .. x0 + P - 1 of one row, channel block ob: P x kVectors int32 accumulators.
// `src` is the input byte under pixel x0's first tap of kernel row ky0 (kx = 0, channel 0), in a map
// whose rows are `row_step` bytes apart (the image itself, or a zero-padded patch of it); only the
// kernel rows ky0 .. ky0 + rows - 1 are summed (the others lie outside the image: their taps are 0).
// With dilation 1 one kernel row's k * C taps are contiguous bytes of an input row, so its groups of
// 4 taps are 32-bit broadcasts (the last group reads up to 3 bytes past the row's taps, under zero
// weights); each pixel's window is stride * C bytes further. G fixes C, stride and k at compile time
// (G::kC == 0: taken from d at run time). `bias_row` is the bias table's [S, O] slice of this output
// row's class, `cols` the column classes of pixels x0 ..; `out` is pixel x0's output, channel 0.
template <int P, typename G>
SEGK_FN void tile(const U8Conv& d, const uint8_t* src, int64_t row_step, int64_t ky0, int64_t rows,
                  const float* bias_row, const int32_t* cols, float* out, int64_t ob) {
    using V = typename I::V;
    using F = typename I::F;
    using W = typename I::W;
    using X = typename I::X;
    constexpr int L = I::kLanes, NV = I::kVectors, NB = L * NV;
    V acc[P][NV];
    for (int p = 0; p < P; ++p)
        for (int v = 0; v < NV; ++v) acc[p][v] = I::zero();
    if constexpr (G::kC > 0) {
        constexpr int GR = (G::kK * G::kC + 3) / 4, PS = G::kC * G::kS;  // PS: bytes between neighbouring windows
        const int8_t* w = d.wt + (ob * G::kK + ky0) * GR * NB * 4;
        const uint8_t* row = src;
        for (int64_t r = 0; r < rows; ++r, row += row_step) {
            // One group per iteration (as in float_conv_tile.h: more in view and GCC spills).
#pragma GCC unroll 1
            for (int g = 0; g < GR; ++g, w += NB * 4) {
                W wv[NV];
                for (int v = 0; v < NV; ++v) wv[v] = I::load_w(w + v * L * 4);
#pragma GCC unroll 16
                for (int p = 0; p < P; ++p) {
                    const X xv = I::bcast(row + 4 * g + p * PS);
                    for (int v = 0; v < NV; ++v) acc[p][v] = I::dot(acc[p][v], xv, wv[v]);
                }
            }
        }
    } else {
        const int64_t gr = d.groups_row, pixel_step = d.stride * d.c;
        const int8_t* w = d.wt + (ob * d.kernel + ky0) * gr * NB * 4;
        const uint8_t* row = src;
        for (int64_t r = 0; r < rows; ++r, row += row_step) {
            for (int64_t g = 0; g < gr; ++g, w += NB * 4) {
                W wv[NV];
                for (int v = 0; v < NV; ++v) wv[v] = I::load_w(w + v * L * 4);
#pragma GCC unroll 16
                for (int p = 0; p < P; ++p) {
                    const X xv = I::bcast(row + 4 * g + p * pixel_step);
                    for (int v = 0; v < NV; ++v) acc[p][v] = I::dot(acc[p][v], xv, wv[v]);
                }
            }
        }
    }
    const int64_t c0 = ob * NB, count = std::min<int64_t>(NB, d.out_c - c0);
    F scale[NV];
    for (int v = 0; v < NV; ++v) scale[v] = I::loadf(d.scale + c0 + v * L);  // zero-padded to whole blocks
    // Unrolled: a loop over p would index acc at run time and keep it in memory, also in the tap loops.
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
        const float* b = bias_row + cols[p] * d.out_c + c0;
        float* o = out + p * d.out_c + c0;
        for (int v = 0; v < NV; ++v) {
            if (count == NB) {
                F r = I::epilogue(acc[p][v], scale[v], I::loadf(b + v * L));
                if (d.relu) r = I::relu(r);
                I::store(o + v * L, r);
            } else if (count > v * L) {
                // A partial block: the bias table has only out_c channels per class.
                const int64_t n = std::min<int64_t>(L, count - v * L);
                F r = I::epilogue(acc[p][v], scale[v], I::loadf_first(b + v * L, n));
                if (d.relu) r = I::relu(r);
                I::store_first(o + v * L, r, n);
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
