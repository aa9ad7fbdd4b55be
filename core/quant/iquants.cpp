// llama.cpp's i-quants: scalar references of the quantizers (byte-identical to llama-quantize's,
// with and without an importance matrix), dequantizers and dots. The SIMD dots are in
// vec_dot_avx2.cpp beside the other types' (the AVX-512 rows keep them: no AVX-512 form yet).
//
// IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256 in 8 groups of 32) store each weight as a
// 4-bit index into 16 fixed non-uniform levels (kIQ4NLValues) times a scale. The quantizer
// (ggml-quants.c, quantize_row_iq4_nl_impl) searches, per group of 32, 15 trial scales around
// the one that maps the largest weight to the extreme level, keeping the one that minimises the
// weighted squared error, where the weight of x_j is qw_j * sqrt(sigma² + x_j²) with an
// importance row qw, else x_j². IQ4_XS then rounds the groups' scales to 6 bits under one fp16
// super-block scale and re-picks every index under its rounded scale.
#include "core/quant/blocks.hpp"
#include "core/quant/quant_internal.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

// Byte exactness needs every a*b+c rounded twice, as written (see quantize_ref.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace squish {
namespace {
using namespace quant;
using quant::detail::kGroupMaxEps;

// The index of the level nearest x (ties to the upper level, as ggml's best_index_int8).
int nearest_iq4_level(float x) {
  const int8_t* v = kIQ4NLValues;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < v[mid]) hi = mid;
    else lo = mid;
  }
  return x - v[hi - 1] < v[hi] - x ? hi - 1 : hi;
}

// sum w q x and sum w q² over a group with the levels nearest inv_scale * x.
struct Fit {
  float sumqx = 0, sumq2 = 0;
};
Fit fit_at(const float* x, const float* w, int n, float inv_scale, uint8_t* L) {
  Fit f;
  for (int j = 0; j < n; ++j) {
    const int l = nearest_iq4_level(inv_scale * x[j]);
    if (L) L[j] = static_cast<uint8_t>(l);
    const float q = kIQ4NLValues[l];
    f.sumqx += w[j] * q * x[j];
    f.sumq2 += w[j] * q * q;
  }
  return f;
}

// The best scale of one group of 32 (0 for an all-zero group): the least-squares scale for the
// levels of the extreme-mapping scale, then 15 trial scales, each refitted, the best kept. L gets
// the first trial's levels (callers re-pick them under the final scale).
float iq4_group_scale(const float* x, const float* w, int n, uint8_t* L) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) amax = ax, max = x[j];
  }
  if (amax < kGroupMaxEps) return 0;
  constexpr int kTries = 7;
  const float v0 = kIQ4NLValues[0];
  Fit f = fit_at(x, w, n, 1 / (-max / v0), L);
  float d = f.sumqx / f.sumq2, best = d * f.sumqx;
  for (int t = -kTries; t <= kTries; ++t) {
    f = fit_at(x, w, n, static_cast<float>(t + kIQ4NLValues[0]) / max, nullptr);
    if (f.sumq2 > 0 && f.sumqx * f.sumqx > best * f.sumq2) d = f.sumqx / f.sumq2, best = d * f.sumqx;
  }
  return d;
}

// The weights of the error in one super-block of `n` values: qw_j * sqrt(sigma² + x_j²) with
// sigma² = 2 * mean(x²), or x_j² without an importance row.
void error_weights(const float* x, const float* qw, int n, float* w) {
  float sigma2 = 0;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / static_cast<float>(n);
  for (int j = 0; j < n; ++j) w[j] = qw ? qw[j] * std::sqrt(sigma2 + x[j] * x[j]) : x[j] * x[j];
}

// 32 levels to 16 bytes: weight j in the low nibble of byte j, weight 16 + j in the high.
void pack_nibbles(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(L[j] | (L[16 + j] << 4));
}

void quantize_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t nb, const float* importance) {
  float w[kQK];
  uint8_t L[kQK];
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    error_weights(x, importance ? importance + i * kQK : nullptr, kQK, w);
    const float d = iq4_group_scale(x, w, kQK, L);
    y[i].d = f32_to_f16(d);
    const float id = d ? 1 / d : 0.f;
    for (int j = 0; j < kQK; ++j) L[j] = static_cast<uint8_t>(nearest_iq4_level(id * x[j]));
    pack_nibbles(L, y[i].qs);
  }
}

void quantize_iq4_xs(const float* x, BlockIQ4_XS* y, int64_t nb, const float* importance) {
  constexpr int kGroups = kQK_K / 32;
  float w[kQK_K], scales[kGroups];
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    error_weights(x, importance ? importance + i * kQK_K : nullptr, kQK_K, w);
    float max_scale = 0, amax_scale = 0;  // the group scale of largest magnitude, with its sign
    for (int g = 0; g < kGroups; ++g) {
      scales[g] = iq4_group_scale(x + 32 * g, w + 32 * g, 32, L + 32 * g);
      if (std::fabs(scales[g]) > amax_scale) amax_scale = std::fabs(scales[g]), max_scale = scales[g];
    }
    // Group scales as d * (ls - 32), ls in 0..63; the largest maps to -32.
    const float d = -max_scale / 32;
    y[i].d = f32_to_f16(d);
    y[i].scales_h = 0;
    const float id = d ? 1 / d : 0.f;
    for (int g = 0; g < kGroups; ++g) {
      const int l = std::clamp(nearest_int(id * scales[g]), -32, 31);
      const float dl = d * static_cast<float>(l);
      const float idl = dl ? 1 / dl : 0.f;
      for (int j = 0; j < 32; ++j) L[32 * g + j] = static_cast<uint8_t>(nearest_iq4_level(idl * x[32 * g + j]));
      const int ls = l + 32;
      if (g % 2 == 0) y[i].scales_l[g / 2] = static_cast<uint8_t>(ls & 0xF);
      else y[i].scales_l[g / 2] |= static_cast<uint8_t>((ls & 0xF) << 4);
      y[i].scales_h = static_cast<uint16_t>(y[i].scales_h | ((ls >> 4) << (2 * g)));
    }
    for (int g = 0; g < kGroups; ++g) pack_nibbles(L + 32 * g, y[i].qs + 16 * g);
  }
}

void dequantize_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * kIQ4NLValues[x[i].qs[j] & 0xF];
      y[j + 16] = d * kIQ4NLValues[x[i].qs[j] >> 4];
    }
  }
}

void dequantize_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int g = 0; g < kQK_K / 32; ++g, y += 32) {
      const float dl = d * static_cast<float>(iq4_xs_scale(x[i], g) - 32);
      const uint8_t* qs = x[i].qs + 16 * g;
      for (int j = 0; j < 16; ++j) {
        y[j] = dl * kIQ4NLValues[qs[j] & 0xF];
        y[j + 16] = dl * kIQ4NLValues[qs[j] >> 4];
      }
    }
  }
}

// The dots: exact integer sums per block, then the block's float scale (the SIMD kernels compute
// the same integers).
float dot_iq4_nl(int64_t nb, const BlockIQ4_NL* x, const BlockQ8_0* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j)
      isum += kIQ4NLValues[x[i].qs[j] & 0xF] * y[i].qs[j] + kIQ4NLValues[x[i].qs[j] >> 4] * y[i].qs[j + 16];
    sumf += static_cast<float>(isum) * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
  }
  return sumf;
}

float dot_iq4_xs(int64_t nb, const BlockIQ4_XS* x, const BlockQ8_K* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t isum = 0;  // |sum| <= 8 groups x 32 x 127 x 127 x 32: fits
    for (int g = 0; g < kQK_K / 32; ++g) {
      const uint8_t* qs = x[i].qs + 16 * g;
      const int8_t* q8 = y[i].qs + 32 * g;
      int32_t s = 0;
      for (int j = 0; j < 16; ++j) s += kIQ4NLValues[qs[j] & 0xF] * q8[j] + kIQ4NLValues[qs[j] >> 4] * q8[j + 16];
      isum += (iq4_xs_scale(x[i], g) - 32) * s;
    }
    sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(isum);
  }
  return sumf;
}

}  // namespace

void quant::table::install_reference_iquants(Rows& rows) {
  auto set = [&](GGMLType t, auto quantize, auto dequantize, auto dot) {
    row(rows, t).quantize_rows = quantize;
    row(rows, t).dequantize_row = dequantize;
    row(rows, t).vec_dot = dot;
  };
  set(GGMLType::IQ4_NL, quantize_rows<quantize_iq4_nl>, dequantize_row<dequantize_iq4_nl>, vec_dot<dot_iq4_nl>);
  set(GGMLType::IQ4_XS, quantize_rows<quantize_iq4_xs>, dequantize_row<dequantize_iq4_xs>, vec_dot<dot_iq4_xs>);
}

}  // namespace squish
