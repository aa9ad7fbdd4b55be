// llama.cpp's 3-bit i-quants, IQ3_XXS (3.06 bits per weight) and IQ3_S (3.44): scalar references
// of the quantizers (byte-identical to llama-quantize's, with and without an importance matrix),
// dequantizers and dots. The AVX2 dots are in vec_dot_avx2.cpp beside the other types'.
//
// A group of 32 weights is stored as signs plus 8 points of a grid on the D4 lattice (4 weights
// each, iq_grids.hpp) under one scale, found by the search of iq_search.hpp; the super-block
// stores the groups' scales as 4-bit odd multiples of one fp16 scale.
#include "core/quant/blocks.hpp"
#include "core/quant/iq_grids.hpp"
#include "core/quant/type_table.hpp"
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
using Search3 = GridSearch<4, 3>;

const Search3& search_256() {  // IQ3_XXS: 2 shells of neighbours
  static const Search3 g = build_search<4, 3>(kIQ3Grid256, 256, 2, 7);
  return g;
}
const Search3& search_512() {  // IQ3_S: 3 shells
  static const Search3 g = build_search<4, 3>(kIQ3Grid512, 512, 3, 7);
  return g;
}

// ---- IQ3_XXS ------------------------------------------------------------------------------------

constexpr float kIQ3XXSGroupMaxEps = 1e-8f;  // ggml's GROUP_MAX_EPS_IQ3_XXS

void quantize_iq3_xxs(const float* x, BlockIQ3_XXS* y, int64_t nb, const float* importance) {
  const Search3& g = search_256();
  const Search how{15, 0.2f, 7, Resnap::OffGrid};
  GroupState<32, 4> s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 2);
    float scales[8], max_scale = 0;
    uint32_t signs_scales[8] = {};
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      group_weights(s, xb, importance ? importance + i * kQK_K + 32 * ib : nullptr, sigma2, [](float v) { return v * v; });
      uint32_t signs7[4];
      for (int k = 0; k < 4; ++k) signs7[k] = signs_of_8(xb + 8 * k, s.weight + 8 * k, s.xval + 8 * k, true);
      const float max = max_of(s.xval, 32);
      if (max < kIQ3XXSGroupMaxEps) {
        scales[ib] = 0;
        std::fill_n(s.L, 32, int8_t{0});
        continue;
      }
      float scale = quantize_group(g, s, max, max / 15, how);
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
  const Search3& g = search_512();
  const Search how{9, 0.2f, 7, Resnap::AllIfAnyOff};
  GroupState<32, 4> s;
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    std::memset(&y[i], 0, sizeof(y[i]));
    const float sigma2 = super_block_sigma2(x, 2);
    float scales[8], max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const float* xb = x + 32 * ib;
      group_weights(s, xb, importance ? importance + i * kQK_K + 32 * ib : nullptr, sigma2, [](float v) { return v * v; });
      uint8_t signs[4];
      for (int k = 0; k < 4; ++k) signs[k] = signs_of_8(xb + 8 * k, s.weight + 8 * k, s.xval + 8 * k, false);
      const float max = max_of(s.xval, 32);
      scales[ib] = 0;
      if (!max) continue;
      std::fill_n(s.on_grid, 8, false);
      float scale = quantize_group(g, s, max, max / 15, how);
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
  set_reference_kernels<quantize_iq3_xxs, dequantize_iq3_xxs, dot_iq3_xxs>(rows, GGMLType::IQ3_XXS);
  set_reference_kernels<quantize_iq3_s, dequantize_iq3_s, dot_iq3_s>(rows, GGMLType::IQ3_S);
}

}  // namespace squish
