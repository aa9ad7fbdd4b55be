// llama.cpp's 1-bit i-quants, IQ1_S (1.56 bits per weight) and IQ1_M (1.75): scalar references of
// the quantizers (byte-identical to llama-quantize's), dequantizers and dots. The AVX2 dots are in
// vec_dot_avx2.cpp beside the other types'.
//
// Each weight is one of -1, 0, 1 plus a shift of +-1/8 (per 32 weights in IQ1_S, per 8 in IQ1_M),
// times the group's scale; 8 weights form a point of a 2048-point grid. With 3 values the weighted
// least-squares fit can be searched exhaustively (ggml-quants.c, quantize_row_iq1_s_impl): sort
// the group, and every split of the sorted weights into a low, middle and high run gives the
// optimal scale and error in O(1) from prefix sums. Tuples off the grid then take the grid point
// nearest them at that scale, and the scale is refitted.
#include "core/quant/blocks.hpp"
#include "core/quant/iq_grids.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <numeric>

// Byte exactness needs every a*b+c rounded twice, as written (see quantize_ref.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "core/quant/iq_search.hpp"

namespace squish {
namespace {
using namespace quant;
using namespace quant::iq;
using Search1 = GridSearch<8, 2>;

const Search1& search_2048() {  // 3 shells of neighbours, as ggml's iq2xs_init_impl for IQ1
  static const Search1 g = build_search<8, 2>(kIQ1Grid2048, 2048, 3, 2);
  return g;
}

// The values a level stands for under a shift of +1/8 (p) or -1/8 (m).
constexpr float kPlus[3] = {-1 + kIQ1Delta, kIQ1Delta, 1 + kIQ1Delta};
constexpr float kMinus[3] = {-1 - kIQ1Delta, -kIQ1Delta, 1 - kIQ1Delta};

// The grid index for the 8 levels in L; off the grid, the listed neighbour of least
// sum w (scale v[l] - x)² (the first on ties), whose levels L then gets.
int snap_iq1(const Search1& g, const float* x, const float* w, float scale, const float* v, int8_t* L, bool& on_grid) {
  return snap_to_grid(g, x, w, scale, L, on_grid, [v](int8_t c) { return v[(c - 1) / 2]; });
}

// The group's weights in ascending order (stable, as glibc's qsort merge sort keeps ties).
template <int G>
void sorted_order(const float* x, int* order) {
  std::iota(order, order + G, 0);
  std::stable_sort(order, order + G, [&](int a, int b) { return x[a] < x[b]; });
}

void error_weights(const float* x, const float* qw, float sigma2, int n, float* w) {
  for (int i = 0; i < n; ++i) w[i] = qw ? qw[i] * std::sqrt(sigma2 + x[i] * x[i]) : x[i] * x[i];
}

float abs_max(const float* x, int n) {
  float max = std::fabs(x[0]);
  for (int i = 1; i < n; ++i) max = max > std::fabs(x[i]) ? max : std::fabs(x[i]);
  return max;
}

// Snaps the group's 8-weight points (their shifted values from `values(k)`) and refits the scale
// over the grid points when any was off the grid.
template <int G, class Values>
float snap_group(const Search1& g, const float* xb, const float* weight, float scale, int8_t* L, uint16_t* index, Values values) {
  bool all_on_grid = true;
  for (int k = 0; k < G / 8; ++k) {
    bool on;
    index[k] = static_cast<uint16_t>(snap_iq1(g, xb + 8 * k, weight + 8 * k, scale, values(k), L + 8 * k, on));
    all_on_grid &= on;
  }
  if (!all_on_grid) {
    float sumqx = 0, sumq2 = 0;
    for (int k = 0; k < G / 8; ++k)
      for (int j = 0; j < 8; ++j) {
        const float w = weight[8 * k + j], q = values(k)[(g.points[index[k]][j] - 1) / 2];
        sumqx += w * q * xb[8 * k + j];
        sumq2 += w * q * q;
      }
    if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
  }
  return scale;
}

// ---- IQ1_S --------------------------------------------------------------------------------------

constexpr float kIQ1SGroupMaxEps = 1e-12f, kIQ1MGroupMaxEps = 1e-7f;  // ggml's GROUP_MAX_EPS_IQ1_S / _M

void quantize_iq1_s(const float* x, BlockIQ1_S* y, int64_t nb, const float* importance) {
  if (!importance) fail(ExitCode::Usage, "IQ1_S needs an importance matrix (imatrix): without one its grid loses the model, as llama-quantize says");
  const Search1& g = search_2048();
  float weight[32], sumx[33], sumw[33];
  int order[32];
  int8_t L[32];
  uint16_t index[4];
  int shifts[8] = {1, 1, 1, 1, 1, 1, 1, 1};  // a group of zeros keeps the previous shift, as in ggml
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 2);
    float scales[8], max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      error_weights(xb, importance + i * kQK_K + 32 * ib, sigma2, 32, weight);
      if (abs_max(xb, 32) < kIQ1SGroupMaxEps || weightless(weight, 32)) {
        scales[ib] = 0;
        continue;
      }
      sorted_order<32>(xb, order);
      sumx[0] = sumw[0] = 0;
      for (int j = 0; j < 32; ++j) {
        sumx[j + 1] = sumx[j] + weight[order[j]] * xb[order[j]];
        sumw[j + 1] = sumw[j] + weight[order[j]];
      }
      // The sorted weights [0, i1) at level 0, [i1, i2) at 1, [i2, 32) at 2, under either shift.
      float best = -FLT_MIN, scale = abs_max(xb, 32);
      int best_i1 = 0, best_i2 = 0, shift = 1;
      for (int i1 = 0; i1 <= 32; ++i1)
        for (int i2 = i1; i2 <= 32; ++i2)
          for (int s : {1, -1}) {
            const float* v = s == 1 ? kPlus : kMinus;
            const float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] + (sumx[32] - sumx[i2]) * v[2];
            const float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1] + (sumw[32] - sumw[i2]) * v[2] * v[2];
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) scale = sumqx / sumq2, best = scale * sumqx, best_i1 = i1, best_i2 = i2, shift = s;
          }
      for (int j = 0; j < 32; ++j) L[order[j]] = static_cast<int8_t>(j < best_i1 ? 0 : j < best_i2 ? 1 : 2);
      if (scale < 0) {
        for (int8_t& l : L) l = static_cast<int8_t>(2 - l);
        scale = -scale, shift = -shift;
      }
      const float* v = shift == 1 ? kPlus : kMinus;
      scale = snap_group<32>(g, xb, weight, scale, L, index, [&](int) { return v; });
      uint16_t h = 0;
      for (int k = 0; k < 4; ++k) {
        y[i].qs[4 * ib + k] = static_cast<uint8_t>(index[k] & 255);
        h = static_cast<uint16_t>(h | ((index[k] >> 8) << (3 * k)));
      }
      y[i].qh[ib] = h;
      scales[ib] = scale;
      shifts[ib] = shift;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) continue;
    const float d = max_scale / 15;
    y[i].d = f32_to_f16(d * 1.125f);  // ggml's fudge factor
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) {
      int l = std::clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
      if (shifts[ib] == -1) l |= 8;
      y[i].qh[ib] = static_cast<uint16_t>(y[i].qh[ib] | (l << 12));
    }
  }
}

int iq1_s_index(const BlockIQ1_S& b, int p) { return b.qs[p] | (((b.qh[p / 4] >> (3 * (p % 4))) & 7) << 8); }

void dequantize_iq1_s(const BlockIQ1_S* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      const float dl = d * static_cast<float>(2 * ((x[i].qh[ib] >> 12) & 7) + 1);
      const float delta = x[i].qh[ib] & 0x8000 ? -kIQ1Delta : kIQ1Delta;
      for (int k = 0; k < 4; ++k, y += 8) {
        const uint64_t p = kIQ1Points[iq1_s_index(x[i], 4 * ib + k)];
        for (int j = 0; j < 8; ++j) y[j] = dl * (static_cast<float>(static_cast<int8_t>(p >> (8 * j))) + delta);
      }
    }
  }
}

// sum over 8 weights of grid value * activation.
int32_t dot8(uint64_t p, const int8_t* q8) {
  int32_t s = 0;
  for (int j = 0; j < 8; ++j) s += static_cast<int8_t>(p >> (8 * j)) * q8[j];
  return s;
}
int32_t sum8(const int8_t* q8) {
  int32_t s = 0;
  for (int j = 0; j < 8; ++j) s += q8[j];
  return s;
}

// The dots: sum ls (sum grid q8 + shift sum q8) per block, the shifts' +-1/8 as integers +-1
// scaled once at the end (exact integer sums, |sum| < 2^22).
float dot_iq1_s(int64_t nb, const BlockIQ1_S* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t sumi = 0, sumi_shift = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = 2 * ((x[i].qh[ib] >> 12) & 7) + 1, sign = x[i].qh[ib] & 0x8000 ? -1 : 1;
      int32_t s = 0, q = 0;
      for (int k = 0; k < 4; ++k) {
        const int8_t* q8 = y[i].qs + 32 * ib + 8 * k;
        s += dot8(kIQ1Points[iq1_s_index(x[i], 4 * ib + k)], q8);
        q += sum8(q8);
      }
      sumi += ls * s;
      sumi_shift += ls * sign * q;
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * (static_cast<float>(sumi) + kIQ1Delta * static_cast<float>(sumi_shift));
  }
  return sumf;
}

// ---- IQ1_M --------------------------------------------------------------------------------------

// Shift pattern k of a group of 16 (0: +,+  1: +,-  2: -,+  3: -,-): the values of its half h.
const float* iq1_m_values(int k, int h) { return (h == 0 ? k < 2 : k % 2 == 0) ? kPlus : kMinus; }

void quantize_iq1_m(const float* x, BlockIQ1_M* y, int64_t nb, const float* importance) {
  const Search1& g = search_2048();
  float weight[16];
  int order[16];
  int8_t L[16];
  uint16_t index[2];
  int shifts[16] = {};  // a group of zeros keeps the previous pattern, as in ggml
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 2);
    float scales[16], max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float* xb = x + 16 * ib;
      error_weights(xb, importance ? importance + i * kQK_K + 16 * ib : nullptr, sigma2, 16, weight);
      if (abs_max(xb, 16) < kIQ1MGroupMaxEps || weightless(weight, 16)) {
        scales[ib] = 0;
        continue;
      }
      sorted_order<16>(xb, order);
      // Every split of the sorted weights, under the 4 shift patterns; the sums run in ggml's order.
      float best = -FLT_MIN, scale = abs_max(xb, 16);
      int best_i1 = 0, best_i2 = 0, best_k = 0;
      for (int i1 = 0; i1 <= 16; ++i1)
        for (int i2 = i1; i2 <= 16; ++i2) {
          float sumqx[4] = {}, sumq2[4] = {};
          for (int j = 0; j < 16; ++j) {
            const int e = order[j], l = j < i1 ? 0 : j < i2 ? 1 : 2;
            const float w = weight[e];
            for (int k = 0; k < 4; ++k) {
              const float v = iq1_m_values(k, e < 8 ? 0 : 1)[l];
              sumqx[k] += w * v * xb[e];
              sumq2[k] += w * v * v;
            }
          }
          for (int k = 0; k < 4; ++k)
            if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best * sumq2[k])
              scale = sumqx[k] / sumq2[k], best = scale * sumqx[k], best_i1 = i1, best_i2 = i2, best_k = k;
        }
      for (int j = 0; j < 16; ++j) L[order[j]] = static_cast<int8_t>(j < best_i1 ? 0 : j < best_i2 ? 1 : 2);
      if (scale < 0) {
        for (int8_t& l : L) l = static_cast<int8_t>(2 - l);
        scale = -scale, best_k = 3 - best_k;
      }
      scale = snap_group<16>(g, xb, weight, scale, L, index, [&](int h) { return iq1_m_values(best_k, h); });
      y[i].qs[2 * ib] = static_cast<uint8_t>(index[0] & 255);
      y[i].qs[2 * ib + 1] = static_cast<uint8_t>(index[1] & 255);
      y[i].qh[ib] = static_cast<uint8_t>((index[0] >> 8) | ((index[1] >> 8) << 4));
      scales[ib] = scale;
      shifts[ib] = best_k;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) continue;
    // The 3-bit scales of max_scale / 15, then d refitted over the whole block with them.
    uint16_t sc[4] = {};
    float d = max_scale / 15;
    const float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    constexpr uint8_t kShiftBits[4] = {0x00, 0x80, 0x08, 0x88};
    for (int ib = 0; ib < 16; ++ib) {
      const int l = std::clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
      sc[ib / 4] = static_cast<uint16_t>(sc[ib / 4] | (l << (3 * (ib % 4))));
      y[i].qh[ib] = static_cast<uint8_t>(y[i].qh[ib] | kShiftBits[shifts[ib]]);
      const float* xb = x + 16 * ib;
      error_weights(xb, importance ? importance + i * kQK_K + 16 * ib : nullptr, sigma2, 16, weight);
      for (int h = 0; h < 2; ++h) {
        const int gi = y[i].qs[2 * ib + h] | (((y[i].qh[ib] >> (4 * h)) & 7) << 8);
        for (int j = 0; j < 8; ++j) {
          const float w = weight[8 * h + j];
          const float q = iq1_m_values(shifts[ib], h)[(g.points[gi][j] - 1) / 2] * static_cast<float>(2 * l + 1);
          sumqx += w * q * xb[8 * h + j];
          sumq2 += w * q * q;
        }
      }
    }
    if (sumq2 > 0) d = sumqx / sumq2;
    const uint16_t dh = f32_to_f16(d * 1.1125f);  // ggml's fudge factor
    sc[0] = static_cast<uint16_t>(sc[0] | ((dh & 0x000f) << 12));
    sc[1] = static_cast<uint16_t>(sc[1] | ((dh & 0x00f0) << 8));
    sc[2] = static_cast<uint16_t>(sc[2] | ((dh & 0x0f00) << 4));
    sc[3] = static_cast<uint16_t>(sc[3] | (dh & 0xf000));
    std::memcpy(y[i].scales, sc, sizeof(sc));
  }
}

// Point h (0, 1) of group g of 16: its grid index, and its shift sign.
int iq1_m_index(const BlockIQ1_M& b, int g, int h) { return b.qs[2 * g + h] | (((b.qh[g] >> (4 * h)) & 7) << 8); }
int iq1_m_sign(const BlockIQ1_M& b, int g, int h) { return b.qh[g] & (0x08 << (4 * h)) ? -1 : 1; }
int iq1_m_scale(const BlockIQ1_M& b, int g) {
  uint16_t sc;
  std::memcpy(&sc, b.scales + 2 * (g / 4), 2);
  return 2 * ((sc >> (3 * (g % 4))) & 7) + 1;
}

void dequantize_iq1_m(const BlockIQ1_M* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(iq1_m_d(x[i]));
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(iq1_m_scale(x[i], g));
      for (int h = 0; h < 2; ++h, y += 8) {
        const uint64_t p = kIQ1Points[iq1_m_index(x[i], g, h)];
        const float delta = iq1_m_sign(x[i], g, h) < 0 ? -kIQ1Delta : kIQ1Delta;
        for (int j = 0; j < 8; ++j) y[j] = dl * (static_cast<float>(static_cast<int8_t>(p >> (8 * j))) + delta);
      }
    }
  }
}

float dot_iq1_m(int64_t nb, const BlockIQ1_M* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t sumi = 0, sumi_shift = 0;
    for (int g = 0; g < 16; ++g) {
      const int ls = iq1_m_scale(x[i], g);
      for (int h = 0; h < 2; ++h) {
        const int8_t* q8 = y[i].qs + 16 * g + 8 * h;
        sumi += ls * dot8(kIQ1Points[iq1_m_index(x[i], g, h)], q8);
        sumi_shift += ls * iq1_m_sign(x[i], g, h) * sum8(q8);
      }
    }
    sumf += f16_to_f32(iq1_m_d(x[i])) * y[i].d * (static_cast<float>(sumi) + kIQ1Delta * static_cast<float>(sumi_shift));
  }
  return sumf;
}

}  // namespace

void quant::table::install_reference_iq1(Rows& rows) {
  set_reference_kernels<quantize_iq1_s, dequantize_iq1_s, dot_iq1_s>(rows, GGMLType::IQ1_S);
  set_reference_kernels<quantize_iq1_m, dequantize_iq1_m, dot_iq1_m>(rows, GGMLType::IQ1_M);
}

}  // namespace squish
