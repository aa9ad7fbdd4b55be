// llama.cpp's 3-bit i-quants, IQ3_XXS (3.06 bits per weight) and IQ3_S (3.44): scalar references
// of the quantizers (byte-identical to llama-quantize's, with and without an importance matrix),
// dequantizers and dots. The AVX2 dots are in vec_dot_avx2.cpp beside the other types'.
//
// A group of 32 weights is stored as signs plus 8 points of a grid on the D4 lattice (4 weights
// each, coordinates 2l + 1 for l in 0..7, iq_grids.hpp), under one scale. The quantizer
// (ggml-quants.c, quantize_row_iq3_xxs_impl / quantize_row_iq3_s_impl) works on |x|: for each
// of a range of trial scales it rounds every 4 magnitudes to levels, keeps the tuple when it is a
// grid point and otherwise takes the best of the grid points nearest that tuple, fits the
// least-squares scale, and keeps the trial with the lowest weighted error. The super-block then
// stores the groups' scales as 4-bit odd multiples of one fp16 scale.
#include "core/quant/blocks.hpp"
#include "core/quant/iq_grids.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <bit>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

// Byte exactness needs every a*b+c rounded twice, as written (see quantize_ref.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace squish {
namespace {
using namespace quant;

// ---- the quantizer's view of a grid -------------------------------------------------------------

// Every tuple of 4 levels (12 bits, as the grid packs them) maps to its grid index, or, when it is
// not on the grid, to the list of grid points at the `shells` smallest squared distances from it
// (ties in index order), as ggml's iq3xs_init_impl builds them: 2 shells for the 256-point grid,
// 3 for the 512-point one.
struct GridSearch {
  std::vector<std::array<int8_t, 4>> points;  // coordinates 2l + 1
  std::array<int32_t, 4096> index{};          // >= 0: on the grid; else -1 - (offset of its list)
  std::vector<uint16_t> lists;                // per list: its length, then the grid indexes
};

GridSearch build_search(const uint16_t* packed, int n, int shells) {
  GridSearch g;
  g.points.resize(n);
  for (int k = 0; k < n; ++k)
    for (int i = 0; i < 4; ++i) g.points[k][i] = static_cast<int8_t>(2 * ((packed[k] >> (3 * i)) & 7) + 1);
  g.index.fill(-1);
  for (int k = 0; k < n; ++k) g.index[packed[k]] = k;
  std::vector<std::pair<int, int>> by_distance(n);
  for (int u = 0; u < 4096; ++u) {
    if (g.index[u] >= 0) continue;
    for (int k = 0; k < n; ++k) {
      int d2 = 0;
      for (int i = 0; i < 4; ++i) {
        const int diff = g.points[k][i] - (2 * ((u >> (3 * i)) & 7) + 1);
        d2 += diff * diff;
      }
      by_distance[k] = {d2, k};
    }
    std::sort(by_distance.begin(), by_distance.end());
    g.index[u] = -1 - static_cast<int32_t>(g.lists.size());
    const size_t head = g.lists.size();
    g.lists.push_back(0);
    int seen = 1;
    for (int j = 0; j < n; ++j) {
      if (by_distance[j].first > by_distance[j > 0 ? j - 1 : 0].first && ++seen > shells) break;
      g.lists.push_back(static_cast<uint16_t>(by_distance[j].second));
    }
    g.lists[head] = static_cast<uint16_t>(g.lists.size() - head - 1);
  }
  return g;
}

const GridSearch& search_256() {
  static const GridSearch g = build_search(kIQ3Grid256, 256, 2);
  return g;
}
const GridSearch& search_512() {
  static const GridSearch g = build_search(kIQ3Grid512, 512, 3);
  return g;
}

// The grid index of 4 levels, taking the best neighbour (lowest sum w (scale q - x)², first on
// ties) when they are off the grid; L gets the chosen point's levels. Sets on_grid.
int snap_to_grid(const GridSearch& g, const float* x, const float* w, float scale, int8_t* L, bool& on_grid) {
  const int u = L[0] | (L[1] << 3) | (L[2] << 6) | (L[3] << 9);
  on_grid = g.index[u] >= 0;
  if (on_grid) return g.index[u];
  const uint16_t* list = g.lists.data() + (-1 - g.index[u]);
  float best = FLT_MAX;
  int best_k = list[1];
  for (int j = 1; j <= list[0]; ++j) {
    float d2 = 0;
    for (int i = 0; i < 4; ++i) {
      const float diff = scale * static_cast<float>(g.points[list[j]][i]) - x[i];
      d2 += w[i] * diff * diff;
    }
    if (d2 < best) best = d2, best_k = list[j];
  }
  for (int i = 0; i < 4; ++i) L[i] = static_cast<int8_t>((g.points[best_k][i] - 1) / 2);
  return best_k;
}

// ---- one group of 32 ----------------------------------------------------------------------------

constexpr int kMaxLevel = 7;  // levels 0..7, magnitudes 1..15

// The quantizer's state for one row. `L` and `on_grid` outlive a group as in ggml (a group whose
// trials all fail keeps the previous group's), which only matters for degenerate weights.
struct GroupState {
  float weight[32], xval[32], waux[32];
  int8_t L[32] = {}, trial[32];
  bool on_grid[8] = {}, trial_on_grid[8];
  uint16_t grid_index[8];
};

void round_levels(const float* xval, float inv_scale, int8_t* L) {
  for (int i = 0; i < 4; ++i) L[i] = static_cast<int8_t>(std::clamp(nearest_int(0.5f * (inv_scale * xval[i] - 1)), 0, kMaxLevel));
}

// sum w x q and sum w q² with q = 2l + 1.
void fit_sums(const GroupState& s, const int8_t* L, float& sumqx, float& sumq2) {
  sumqx = 0, sumq2 = 0;
  for (int i = 0; i < 32; ++i) {
    const float q = static_cast<float>(2 * L[i] + 1);
    sumqx += s.weight[i] * s.xval[i] * q;
    sumq2 += s.weight[i] * q * q;
  }
}

// The group's scale (magnitudes in s.xval, largest `max` > 0) and its 8 grid indexes in
// s.grid_index. Trials is/5 around 15/max for is in -trials..trials; then the points that were off
// the grid are re-snapped at the chosen scale (all of them with `resnap_all`, as IQ3_S does) and the
// scale refitted.
float quantize_group(const GridSearch& g, GroupState& s, float max, int trials, bool resnap_all) {
  float best = 0, scale = max / (2 * kMaxLevel + 1);
  for (int is = -trials; is <= trials; ++is) {
    const float id = (static_cast<float>(2 * kMaxLevel + 1) + static_cast<float>(is) * 0.2f) / max;
    const float trial_scale = 1 / id;
    for (int k = 0; k < 8; ++k) {
      round_levels(s.xval + 4 * k, id, s.trial + 4 * k);
      snap_to_grid(g, s.xval + 4 * k, s.waux + 4 * k, trial_scale, s.trial + 4 * k, s.trial_on_grid[k]);
    }
    float sumqx, sumq2;
    fit_sums(s, s.trial, sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2, best = scale * sumqx;
      std::copy_n(s.trial, 32, s.L);
      std::copy_n(s.trial_on_grid, 8, s.on_grid);
    }
  }
  if (std::count(s.on_grid, s.on_grid + 8, false) > 0 && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < 8; ++k) {
      if (s.on_grid[k] && !resnap_all) continue;
      bool unused;
      round_levels(s.xval + 4 * k, id, s.L + 4 * k);
      snap_to_grid(g, s.xval + 4 * k, s.waux + 4 * k, scale, s.L + 4 * k, unused);
    }
    float sumqx, sumq2;
    fit_sums(s, s.L, sumqx, sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  for (int k = 0; k < 8; ++k) {
    const int8_t* l = s.L + 4 * k;
    s.grid_index[k] = static_cast<uint16_t>(g.index[l[0] | (l[1] << 3) | (l[2] << 6) | (l[3] << 9)]);
  }
  return scale;
}

// The weights of the error in a group: qw_j * sqrt(sigma² + x_j²), or x_j² without an importance
// row; and their square roots for the neighbour search.
void group_weights(GroupState& s, const float* x, const float* qw, float sigma2) {
  for (int i = 0; i < 32; ++i) s.weight[i] = qw ? qw[i] * std::sqrt(sigma2 + x[i] * x[i]) : x[i] * x[i];
  for (int i = 0; i < 32; ++i) s.waux[i] = std::sqrt(s.weight[i]);
}

float super_block_sigma2(const float* x) {
  float sumx2 = 0;
  for (int i = 0; i < kQK_K; ++i) sumx2 += x[i] * x[i];
  return 2 * sumx2 / kQK_K;
}

// The 4-bit odd multiple of d nearest a group scale: s with scale ~ d (2s + 1).
uint32_t scale_code(float scale, float inv_d) {
  return static_cast<uint32_t>(std::clamp(nearest_int(0.5f * (inv_d * scale - 1)), 0, 15));
}

// ---- IQ3_XXS ------------------------------------------------------------------------------------

constexpr float kIQ3XXSGroupMaxEps = 1e-8f;  // ggml's GROUP_MAX_EPS_IQ3_XXS

void quantize_iq3_xxs(const float* x, BlockIQ3_XXS* y, int64_t nb, const float* importance) {
  const GridSearch& g = search_256();
  GroupState s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x);
    float scales[8], max_scale = 0;
    uint32_t signs_scales[8] = {};
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      group_weights(s, xb, importance ? importance + i * kQK_K + 32 * ib : nullptr, sigma2);
      // 7 sign bits per 8 weights: an odd count of negatives flips the least important one.
      uint32_t signs7[4];
      for (int k = 0; k < 4; ++k) {
        uint32_t bits = 0;
        for (int j = 0; j < 8; ++j) {
          const float v = xb[8 * k + j];
          s.xval[8 * k + j] = v >= 0 ? v : -v;
          if (!(v >= 0)) bits |= 1u << j;
        }
        if (std::popcount(bits) % 2) {
          int imin = 0;
          float min = s.weight[8 * k] * xb[8 * k] * xb[8 * k];
          for (int j = 1; j < 8; ++j) {
            const float e = s.weight[8 * k + j] * xb[8 * k + j] * xb[8 * k + j];
            if (e < min) min = e, imin = j;
          }
          s.xval[8 * k + imin] = -s.xval[8 * k + imin];
          bits ^= 1u << imin;
        }
        signs7[k] = bits & 127;
      }
      float max = s.xval[0];
      for (int j = 1; j < 32; ++j) max = max > s.xval[j] ? max : s.xval[j];
      if (max < kIQ3XXSGroupMaxEps) {
        scales[ib] = 0;
        std::fill_n(s.L, 32, int8_t{0});
        continue;
      }
      float scale = quantize_group(g, s, max, 15, false);
      if (scale < 0) {  // cannot happen with non-negative weights; kept as in ggml
        scale = -scale;
        for (uint32_t& b : signs7) b = ~b & 127;
      }
      for (int k = 0; k < 8; ++k) y[i].qs[8 * ib + k] = static_cast<uint8_t>(s.grid_index[k]);
      signs_scales[ib] = signs7[0] | (signs7[1] << 7) | (signs7[2] << 14) | (signs7[3] << 21);
      scales[ib] = scale;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) {
      std::memset(&y[i], 0, sizeof(y[i]));
      continue;
    }
    const float d = max_scale / 31;
    y[i].d = f32_to_f16(d * 1.0125f);  // ggml's fudge factor
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) signs_scales[ib] |= scale_code(scales[ib], id) << 28;
    std::memcpy(y[i].signs_scales, signs_scales, sizeof(signs_scales));
  }
}

void dequantize_iq3_xxs(const BlockIQ3_XXS* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux;
      std::memcpy(&aux, x[i].signs_scales + 4 * ib, 4);
      const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
      for (int k = 0; k < 8; ++k, y += 4) {
        const uint32_t p = kIQ3XXSPoints[x[i].qs[8 * ib + k]];
        const uint8_t signs = kIQEvenSigns[(aux >> (7 * (k / 2))) & 127];
        for (int j = 0; j < 4; ++j) {
          const float q = static_cast<float>((p >> (8 * j)) & 0xFF);
          y[j] = db * q * (signs & (1u << (4 * (k % 2) + j)) ? -1.f : 1.f);
        }
      }
    }
  }
}

// The dots: exact integer sums per block (|sum| < 2^26), then the block's float scale.
float dot_iq3_xxs(int64_t nb, const BlockIQ3_XXS* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t bsum = 0;
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux;
      std::memcpy(&aux, x[i].signs_scales + 4 * ib, 4);
      const int8_t* q8 = y[i].qs + 32 * ib;
      int32_t sumi = 0;
      for (int k = 0; k < 8; ++k) {
        const uint32_t p = kIQ3XXSPoints[x[i].qs[8 * ib + k]];
        const uint8_t signs = kIQEvenSigns[(aux >> (7 * (k / 2))) & 127];
        for (int j = 0; j < 4; ++j) {
          const int v = static_cast<int>((p >> (8 * j)) & 0xFF) * q8[4 * k + j];
          sumi += signs & (1u << (4 * (k % 2) + j)) ? -v : v;
        }
      }
      bsum += sumi * static_cast<int32_t>(2 * (aux >> 28) + 1);
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(bsum);
  }
  return 0.25f * sumf;
}

// ---- IQ3_S --------------------------------------------------------------------------------------

// Unlike ggml, a group whose weights are all zero still advances the output: ggml's `continue`
// skips the index and sign pointers' advance, so every later group of that super-block lands in
// the wrong slots (its file decodes to other weights). Such groups store index 0, no signs and
// scale code 0. Files without an all-zero group of 32 are byte-identical.
void quantize_iq3_s(const float* x, BlockIQ3_S* y, int64_t nb, const float* importance) {
  const GridSearch& g = search_512();
  GroupState s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x);
    float scales[8], max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      group_weights(s, xb, importance ? importance + i * kQK_K + 32 * ib : nullptr, sigma2);
      uint8_t signs[4];
      for (int k = 0; k < 4; ++k) {
        uint32_t bits = 0;
        for (int j = 0; j < 8; ++j) {
          const float v = xb[8 * k + j];
          s.xval[8 * k + j] = v >= 0 ? v : -v;
          if (!(v >= 0)) bits |= 1u << j;
        }
        signs[k] = static_cast<uint8_t>(bits);
      }
      float max = s.xval[0];
      for (int j = 1; j < 32; ++j) max = max > s.xval[j] ? max : s.xval[j];
      scales[ib] = 0;
      if (!max) continue;
      std::fill_n(s.on_grid, 8, false);
      float scale = quantize_group(g, s, max, 9, true);
      if (scale < 0) {  // cannot happen with non-negative weights; kept as in ggml
        scale = -scale;
        for (uint8_t& b : signs) b = static_cast<uint8_t>(~b);
      }
      for (int k = 0; k < 8; ++k) {
        y[i].qs[8 * ib + k] = static_cast<uint8_t>(s.grid_index[k] & 255);
        y[i].qh[ib] = static_cast<uint8_t>(y[i].qh[ib] | ((s.grid_index[k] >> 8) << k));
      }
      std::memcpy(y[i].signs + 4 * ib, signs, 4);
      scales[ib] = scale;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) continue;
    const float d = max_scale / 31;
    y[i].d = f32_to_f16(d * 1.033f);  // ggml's fudge factor
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib += 2)
      y[i].scales[ib / 2] = static_cast<uint8_t>(scale_code(scales[ib], id) | (scale_code(scales[ib + 1], id) << 4));
  }
}

int iq3_s_index(const BlockIQ3_S& b, int ib, int k) { return b.qs[8 * ib + k] | (((b.qh[ib] >> k) & 1) << 8); }
int iq3_s_scale(const BlockIQ3_S& b, int ib) { return 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF) + 1; }

void dequantize_iq3_s(const BlockIQ3_S* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      const float db = d * static_cast<float>(iq3_s_scale(x[i], ib));
      for (int k = 0; k < 8; ++k, y += 4) {
        const uint32_t p = kIQ3SPoints[iq3_s_index(x[i], ib, k)];
        const uint8_t signs = x[i].signs[4 * ib + k / 2];
        for (int j = 0; j < 4; ++j) {
          const float q = static_cast<float>((p >> (8 * j)) & 0xFF);
          y[j] = db * q * (signs & (1u << (4 * (k % 2) + j)) ? -1.f : 1.f);
        }
      }
    }
  }
}

float dot_iq3_s(int64_t nb, const BlockIQ3_S* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t bsum = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const int8_t* q8 = y[i].qs + 32 * ib;
      int32_t sumi = 0;
      for (int k = 0; k < 8; ++k) {
        const uint32_t p = kIQ3SPoints[iq3_s_index(x[i], ib, k)];
        const uint8_t signs = x[i].signs[4 * ib + k / 2];
        for (int j = 0; j < 4; ++j) {
          const int v = static_cast<int>((p >> (8 * j)) & 0xFF) * q8[4 * k + j];
          sumi += signs & (1u << (4 * (k % 2) + j)) ? -v : v;
        }
      }
      bsum += sumi * iq3_s_scale(x[i], ib);
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(bsum);
  }
  return sumf;
}

}  // namespace

void quant::table::install_reference_iq3(Rows& rows) {
  auto set = [&](GGMLType t, auto quantize, auto dequantize, auto dot) {
    row(rows, t).quantize_rows = quantize;
    row(rows, t).dequantize_row = dequantize;
    row(rows, t).vec_dot = dot;
  };
  set(GGMLType::IQ3_XXS, quantize_rows<quantize_iq3_xxs>, dequantize_row<dequantize_iq3_xxs>, vec_dot<dot_iq3_xxs>);
  set(GGMLType::IQ3_S, quantize_rows<quantize_iq3_s>, dequantize_row<dequantize_iq3_s>, vec_dot<dot_iq3_s>);
}

}  // namespace squish
