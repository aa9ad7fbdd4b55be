// llama.cpp's 2-bit i-quants, IQ2_XXS (2.06 bits per weight), IQ2_XS (2.31) and IQ2_S (2.56):
// scalar references of the quantizers (byte-identical to llama-quantize's), dequantizers and dots.
// The AVX2 dots are in vec_dot_avx2.cpp beside the other types'.
//
// Groups of 32 (IQ2_XXS) or 16 weights are stored as signs plus points of 8 weights on an
// E8-lattice grid (iq_grids.hpp) under one scale, found by the search of iq_search.hpp; the
// super-block stores the groups' scales as 4-bit odd multiples of one fp16 scale. IQ2_XXS and
// IQ2_XS keep 7 sign bits per 8 weights (an even count of negatives) and, as in llama.cpp, need
// an importance matrix; IQ2_S keeps all 8 and has a rule without one.
#include "core/quant/blocks.hpp"
#include "core/quant/iq_grids.hpp"
#include "core/quant/quant_internal.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cstring>

// Byte exactness needs every a*b+c rounded twice, as written (see quantize_ref.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "core/quant/iq_search.hpp"

namespace squish {
namespace {
using namespace quant;
using namespace quant::iq;
using Search2 = GridSearch<8, 2>;

// Levels 0..2 only (the grids have no other); neighbour shells as ggml's iq2xs_init_impl.
const Search2& search_256() {
  static const Search2 g = build_search<8, 2>(kIQ2Grid256, 256, 2, 2);
  return g;
}
const Search2& search_512() {
  static const Search2 g = build_search<8, 2>(kIQ2Grid512, 512, 2, 2);
  return g;
}
const Search2& search_1024() {
  static const Search2 g = build_search<8, 2>(kIQ2Grid1024, 1024, 1, 2);
  return g;
}

void require_importance(const float* importance, const char* type) {
  if (!importance)
    fail(ExitCode::Usage, "{} needs an importance matrix (imatrix): without one its grid loses the model, as llama-quantize says", type);
}

constexpr float kIQ2SGroupMaxEps = 1e-8f;  // ggml's GROUP_MAX_EPS_IQ2_S

// ---- IQ2_XXS ------------------------------------------------------------------------------------

void quantize_iq2_xxs(const float* x, BlockIQ2_XXS* y, int64_t nb, const float* importance) {
  require_importance(importance, "IQ2_XXS");
  const Search2& g = search_256();
  const Search how{6, 0.1f, 2, Resnap::All};
  GroupState<32, 8> s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 1);
    float scales[8], max_scale = 0;
    uint32_t q2[16] = {};
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      group_weights(s, xb, importance + i * kQK_K + 32 * ib, sigma2, [](float v) { return v; });
      uint32_t signs7[4];
      for (int k = 0; k < 4; ++k) signs7[k] = signs_of_8(xb + 8 * k, s.weight + 8 * k, s.xval + 8 * k, true);
      const float max = max_of(s.xval, 32);
      if (max < detail::kGroupMaxEps || weightless(s.weight, 32)) {
        scales[ib] = 0;
        std::fill_n(s.L, 32, int8_t{0});
        continue;
      }
      // The trials are centred on the scale of a plain 0..4 fit of the magnitudes.
      uint8_t Lqp[32];
      const float qp_scale = detail::make_qp_quants(32, 4, s.xval, Lqp, s.weight);
      const float eff_max = qp_scale * 3;
      float scale = quantize_group(g, s, eff_max, qp_scale, how);
      if (scale < 0) {  // cannot happen with non-negative weights; kept as in ggml
        scale = -scale;
        for (uint32_t& b : signs7) b = ~b & 127;
      }
      for (int k = 0; k < 4; ++k) {
        q2[2 * ib] |= uint32_t{s.grid_index[k]} << (8 * k);
        q2[2 * ib + 1] |= signs7[k] << (7 * k);
      }
      scales[ib] = scale;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) continue;
    const float d = max_scale / 31;
    y[i].d = f32_to_f16(d);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) q2[2 * ib + 1] |= scale_code(scales[ib], id) << 28;
    std::memcpy(y[i].qs, q2, sizeof(q2));
  }
}

void dequantize_iq2_xxs(const BlockIQ2_XXS* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux[2];
      std::memcpy(aux, x[i].qs + 8 * ib, 8);
      const float db = d * (0.5f + static_cast<float>(aux[1] >> 28)) * 0.25f;
      for (int k = 0; k < 4; ++k, y += 8) {
        const uint64_t p = kIQ2XXSPoints[(aux[0] >> (8 * k)) & 0xFF];
        const uint8_t signs = kIQEvenSigns[(aux[1] >> (7 * k)) & 127];
        for (int j = 0; j < 8; ++j) y[j] = db * static_cast<float>((p >> (8 * j)) & 0xFF) * (signs & (1u << j) ? -1.f : 1.f);
      }
    }
  }
}

// sum over 8 weights of grid byte * activation * sign.
int32_t dot8(uint64_t p, uint8_t signs, const int8_t* q8) {
  int32_t s = 0;
  for (int j = 0; j < 8; ++j) {
    const int v = static_cast<int>((p >> (8 * j)) & 0xFF) * q8[j];
    s += signs & (1u << j) ? -v : v;
  }
  return s;
}

// The dots: exact integer sums per block (|sum| < 2^25), then the block's float scale.
float dot_iq2_xxs(int64_t nb, const BlockIQ2_XXS* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t bsum = 0;
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux[2];
      std::memcpy(aux, x[i].qs + 8 * ib, 8);
      int32_t sumi = 0;
      for (int k = 0; k < 4; ++k)
        sumi += dot8(kIQ2XXSPoints[(aux[0] >> (8 * k)) & 0xFF], kIQEvenSigns[(aux[1] >> (7 * k)) & 127], y[i].qs + 32 * ib + 8 * k);
      bsum += sumi * static_cast<int32_t>(2 * (aux[1] >> 28) + 1);
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(bsum);
  }
  return 0.125f * sumf;
}

// ---- IQ2_XS and IQ2_S: groups of 16 -------------------------------------------------------------

void quantize_iq2_xs(const float* x, BlockIQ2_XS* y, int64_t nb, const float* importance) {
  require_importance(importance, "IQ2_XS");
  const Search2& g = search_512();
  const Search how{9, 0.1f, 2, Resnap::OffGrid};
  GroupState<16, 8> s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 1);
    float scales[16], max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float* xb = x + 16 * ib;
      group_weights(s, xb, importance + i * kQK_K + 16 * ib, sigma2, [](float v) { return v; });
      uint16_t signs7[2];
      for (int k = 0; k < 2; ++k) signs7[k] = signs_of_8(xb + 8 * k, s.weight + 8 * k, s.xval + 8 * k, true);
      const float max = max_of(s.xval, 16);
      if (max < detail::kGroupMaxEps) {
        scales[ib] = 0;
        std::fill_n(s.L, 16, int8_t{0});
        continue;
      }
      std::fill_n(s.on_grid, 2, true);
      float scale = quantize_group(g, s, max, max / 5, how);
      if (scale < 0) {  // cannot happen with non-negative weights; kept as in ggml
        scale = -scale;
        for (uint16_t& b : signs7) b = static_cast<uint16_t>(~b & 127);
      }
      for (int k = 0; k < 2; ++k) y[i].qs[2 * ib + k] = static_cast<uint16_t>(s.grid_index[k] | (signs7[k] << 9));
      scales[ib] = scale;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) {
      std::memset(&y[i], 0, sizeof(y[i]));
      continue;
    }
    const float d = max_scale / 31;
    y[i].d = f32_to_f16(d);
    const float id = 1 / d;
    for (int ib = 0; ib < 16; ib += 2)
      y[i].scales[ib / 2] = static_cast<uint8_t>(scale_code(scales[ib], id) | (scale_code(scales[ib + 1], id) << 4));
  }
}

void quantize_iq2_s(const float* x, BlockIQ2_S* y, int64_t nb, const float* importance) {
  const Search2& g = search_1024();
  const Search how{9, 0.1f, 2, Resnap::OffGrid};
  GroupState<16, 8> s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 2);
    float scales[16], max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float* xb = x + 16 * ib;
      group_weights(s, xb, importance ? importance + i * kQK_K + 16 * ib : nullptr, sigma2,
                    [&](float v) { return 0.25f * sigma2 + v * v; });
      uint8_t signs[2];
      for (int k = 0; k < 2; ++k) signs[k] = signs_of_8(xb + 8 * k, s.weight + 8 * k, s.xval + 8 * k, false);
      const float max = max_of(s.xval, 16);
      scales[ib] = 0;
      if (max < kIQ2SGroupMaxEps) continue;
      std::fill_n(s.on_grid, 2, true);
      float scale = quantize_group(g, s, max, max / 5, how);
      if (scale < 0) {  // cannot happen with non-negative weights; kept as in ggml
        scale = -scale;
        for (uint8_t& b : signs) b = static_cast<uint8_t>(~b);
      }
      for (int k = 0; k < 2; ++k) {
        const int p = 2 * ib + k;
        y[i].qs[p] = static_cast<uint8_t>(s.grid_index[k] & 255);
        y[i].qh[p / 4] = static_cast<uint8_t>(y[i].qh[p / 4] | ((s.grid_index[k] >> 8) << (2 * (p % 4))));
        y[i].qs[kQK_K / 8 + p] = signs[k];
      }
      scales[ib] = scale;
      max_scale = std::max(max_scale, scale);
    }
    if (!max_scale) continue;
    const float d = max_scale / 31;
    y[i].d = f32_to_f16(d * 0.9875f);  // ggml's fudge factor
    const float id = 1 / d;
    for (int ib = 0; ib < 16; ib += 2)
      y[i].scales[ib / 2] = static_cast<uint8_t>(scale_code(scales[ib], id) | (scale_code(scales[ib + 1], id) << 4));
  }
}

// The point and signs of 8 weights p (0..31) of a block, and the odd scale of group p / 2.
uint64_t iq2_xs_point(const BlockIQ2_XS& b, int p) { return kIQ2XSPoints[b.qs[p] & 511]; }
uint8_t iq2_xs_signs(const BlockIQ2_XS& b, int p) { return kIQEvenSigns[b.qs[p] >> 9]; }
uint64_t iq2_s_point(const BlockIQ2_S& b, int p) { return kIQ2SPoints[b.qs[p] | (((b.qh[p / 4] >> (2 * (p % 4))) & 3) << 8)]; }
uint8_t iq2_s_signs(const BlockIQ2_S& b, int p) { return b.qs[kQK_K / 8 + p]; }
template <class B>
int group16_scale(const B& b, int g) { return 2 * ((b.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1; }

template <class B, uint64_t (*Point)(const B&, int), uint8_t (*Signs)(const B&, int)>
void dequantize_group16(const B* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int p = 0; p < 32; ++p, y += 8) {
      const float db = d * (0.5f + static_cast<float>((x[i].scales[p / 4] >> (4 * ((p / 2) % 2))) & 0xF)) * 0.25f;
      const uint64_t pt = Point(x[i], p);
      const uint8_t signs = Signs(x[i], p);
      for (int j = 0; j < 8; ++j) y[j] = db * static_cast<float>((pt >> (8 * j)) & 0xFF) * (signs & (1u << j) ? -1.f : 1.f);
    }
  }
}

template <class B, uint64_t (*Point)(const B&, int), uint8_t (*Signs)(const B&, int)>
float dot_group16(int64_t nb, const B* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t bsum = 0;
    for (int g = 0; g < 16; ++g) {
      const int32_t s = dot8(Point(x[i], 2 * g), Signs(x[i], 2 * g), y[i].qs + 16 * g) +
                        dot8(Point(x[i], 2 * g + 1), Signs(x[i], 2 * g + 1), y[i].qs + 16 * g + 8);
      bsum += s * group16_scale(x[i], g);
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(bsum);
  }
  return 0.125f * sumf;
}

}  // namespace

void quant::table::install_reference_iq2(Rows& rows) {
  set_reference_kernels<quantize_iq2_xxs, dequantize_iq2_xxs, dot_iq2_xxs>(rows, GGMLType::IQ2_XXS);
  set_reference_kernels<quantize_iq2_xs, dequantize_group16<BlockIQ2_XS, iq2_xs_point, iq2_xs_signs>,
                        dot_group16<BlockIQ2_XS, iq2_xs_point, iq2_xs_signs>>(rows, GGMLType::IQ2_XS);
  set_reference_kernels<quantize_iq2_s, dequantize_group16<BlockIQ2_S, iq2_s_point, iq2_s_signs>,
                        dot_group16<BlockIQ2_S, iq2_s_point, iq2_s_signs>>(rows, GGMLType::IQ2_S);
}

}  // namespace squish
