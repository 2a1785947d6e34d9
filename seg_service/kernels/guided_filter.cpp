// Colour guided filter (He, Sun and Tang, TPAMI 2013) for a model's stored post-processing
// (seg_service/runtime/refine.py): the coefficients, fitted on the fast guided filter's subsampled
// image (some ten thousand pixels: one thread; splitting the planes over two gained nothing), and
// the full-resolution step that upsamples and applies them (rows split over the threads).
//
// Window means are over (2r+1) x (2r+1) windows clipped at the border (fewer pixels there), summed
// in double with running sums, so the cost does not grow with the radius.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "linear_taps.h"
#include "threadpool.h"

namespace segk {
namespace {

// In place: each plane of `planes` (n_planes x [h, w], plane-major) becomes its clipped-window mean.
// Both passes walk rows (contiguous): along x with a running prefix of the row, along y with a
// prefix over rows kept for the whole plane.
void box_mean_planes(std::vector<double>& planes, int64_t n_planes, int64_t h, int64_t w, int64_t r) {
    std::vector<double> inv_count_x(static_cast<size_t>(w));
    for (int64_t x = 0; x < w; ++x)
        inv_count_x[x] = 1.0 / static_cast<double>(std::min(x + r, w - 1) - std::max<int64_t>(x - r, 0) + 1);
    std::vector<double> line(static_cast<size_t>(w + 1));
    std::vector<double> prefix(static_cast<size_t>((h + 1) * w));
    for (int64_t p = 0; p < n_planes; ++p) {
        double* plane = planes.data() + p * h * w;
        for (int64_t y = 0; y < h; ++y) {  // rows: window sums along x
            double* row = plane + y * w;
            line[0] = 0.0;
            for (int64_t x = 0; x < w; ++x) line[x + 1] = line[x] + row[x];
            for (int64_t x = 0; x < w; ++x) row[x] = line[std::min(x + r, w - 1) + 1] - line[std::max<int64_t>(x - r, 0)];
        }
        std::fill(prefix.begin(), prefix.begin() + w, 0.0);  // columns: prefix over rows, then the mean
        for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x) prefix[(y + 1) * w + x] = prefix[y * w + x] + plane[y * w + x];
        for (int64_t y = 0; y < h; ++y) {
            const int64_t y0 = std::max<int64_t>(y - r, 0), y1 = std::min(y + r, h - 1);
            const double inv_count_y = 1.0 / static_cast<double>(y1 - y0 + 1);
            const double* top = prefix.data() + y0 * w;
            const double* bottom = prefix.data() + (y1 + 1) * w;
            for (int64_t x = 0; x < w; ++x) plane[y * w + x] = (bottom[x] - top[x]) * inv_count_x[x] * inv_count_y;
        }
    }
}

}  // namespace

void guided_coefficients(const float* guide, const float* src, int64_t h, int64_t w, int64_t k, int64_t radius,
                         double eps, float* a_out, float* b_out) {
    const int64_t n = h * w;
    // Planes: guide (3), source (k), source x guide (3k), the 6 distinct guide products.
    const int64_t n_planes = 3 + k + 3 * k + 6;
    std::vector<double> m(static_cast<size_t>(n_planes * n));
    static constexpr int kPairs[6][2] = {{0, 0}, {0, 1}, {0, 2}, {1, 1}, {1, 2}, {2, 2}};
    for (int64_t i = 0; i < n; ++i) {
        const float* g = guide + i * 3;
        const float* s = src + i * k;
        for (int c = 0; c < 3; ++c) m[c * n + i] = g[c];
        for (int64_t j = 0; j < k; ++j) {
            m[(3 + j) * n + i] = s[j];
            for (int c = 0; c < 3; ++c) m[(3 + k + 3 * j + c) * n + i] = static_cast<double>(s[j]) * g[c];
        }
        for (int q = 0; q < 6; ++q)
            m[(3 + 4 * k + q) * n + i] = static_cast<double>(g[kPairs[q][0]]) * g[kPairs[q][1]];
    }
    box_mean_planes(m, n_planes, h, w, radius);

    // Per pixel: a = cov(I, p) (Sigma + eps I)^-1, b = mean(p) - a . mean(I); planes a (3k) then b (k).
    std::vector<double> ab(static_cast<size_t>(4 * k * n));
    for (int64_t i = 0; i < n; ++i) {
        const double mi[3] = {m[i], m[n + i], m[2 * n + i]};
        double v[6];
        for (int q = 0; q < 6; ++q) v[q] = m[(3 + 4 * k + q) * n + i] - mi[kPairs[q][0]] * mi[kPairs[q][1]];
        const double a00 = v[0] + eps, a01 = v[1], a02 = v[2], a11 = v[3] + eps, a12 = v[4], a22 = v[5] + eps;
        // inverse of the symmetric matrix by its adjugate
        const double c00 = a11 * a22 - a12 * a12, c01 = a02 * a12 - a01 * a22, c02 = a01 * a12 - a02 * a11;
        const double c11 = a00 * a22 - a02 * a02, c12 = a01 * a02 - a00 * a12, c22 = a00 * a11 - a01 * a01;
        const double inv_det = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02);
        const double inv[3][3] = {{c00 * inv_det, c01 * inv_det, c02 * inv_det},
                                  {c01 * inv_det, c11 * inv_det, c12 * inv_det},
                                  {c02 * inv_det, c12 * inv_det, c22 * inv_det}};
        for (int64_t j = 0; j < k; ++j) {
            const double mp = m[(3 + j) * n + i];
            double cov[3];
            for (int c = 0; c < 3; ++c) cov[c] = m[(3 + k + 3 * j + c) * n + i] - mp * mi[c];
            double b = mp;
            for (int c = 0; c < 3; ++c) {
                const double a = cov[0] * inv[0][c] + cov[1] * inv[1][c] + cov[2] * inv[2][c];
                ab[(3 * j + c) * n + i] = a;
                b -= a * mi[c];
            }
            ab[(3 * k + j) * n + i] = b;
        }
    }
    box_mean_planes(ab, 4 * k, h, w, radius);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) {
            for (int c = 0; c < 3; ++c) a_out[(i * k + j) * 3 + c] = static_cast<float>(ab[(3 * j + c) * n + i]);
            b_out[i * k + j] = static_cast<float>(ab[(3 * k + j) * n + i]);
        }
    }
}

void guided_apply(const float* coef, int64_t hl, int64_t wl, int64_t k, const float* guide, int64_t h, int64_t w,
                  const int64_t* sources, const float* signs, const float* bias, int64_t channels, float* out) {
    // coef [hl, wl, 4k]: a (3 per channel) then b (k); upsampled exactly as upsample_bilinear would
    // (rows mixed first, then columns), applied to the guide, then mapped to the output channels.
    const std::vector<Tap> row_taps = linear_taps(hl, h), col_taps = linear_taps(wl, w);
    const int64_t stride = 4 * k;
    const int threads = h * w * channels < (int64_t{1} << 16) ? 1 : get_num_threads();
    constexpr int64_t kRowsPerItem = 8;
    parallel_for(threads, (h + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item) {
        std::vector<float> row(static_cast<size_t>(wl * stride)), value(static_cast<size_t>(stride));
        std::vector<float> filtered(static_cast<size_t>(k));
        for (int64_t y = item * kRowsPerItem; y < std::min(h, (item + 1) * kRowsPerItem); ++y) {
            const Tap ty = row_taps[y];
            const float top_w = 1.0f - ty.frac, bottom_w = ty.frac;
            const float* top = coef + ty.i0 * wl * stride;
            const float* bottom = coef + ty.i1 * wl * stride;
            for (int64_t i = 0; i < wl * stride; ++i) row[i] = top[i] * top_w + bottom[i] * bottom_w;
            for (int64_t x = 0; x < w; ++x) {
                const Tap tx = col_taps[x];
                const float left_w = 1.0f - tx.frac, right_w = tx.frac;
                const float* left = row.data() + tx.i0 * stride;
                const float* right = row.data() + tx.i1 * stride;
                for (int64_t i = 0; i < stride; ++i) value[i] = left[i] * left_w + right[i] * right_w;
                const float* g = guide + (y * w + x) * 3;
                for (int64_t j = 0; j < k; ++j)
                    filtered[j] = value[3 * j] * g[0] + value[3 * j + 1] * g[1] + value[3 * j + 2] * g[2] + value[3 * k + j];
                float* o = out + (y * w + x) * channels;
                for (int64_t c = 0; c < channels; ++c) o[c] = signs[c] * filtered[sources[c]] + bias[c];
            }
        }
    });
}

}  // namespace segk
