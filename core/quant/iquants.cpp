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
#include "core/quant/unpack_avx2.hpp"
#include "core/base/tensor.hpp"

#include <immintrin.h>

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

// The index of the level nearest x, as ggml's best_index_int8: mu is the first level above x, the
// lower one wins when strictly nearer (the same float comparison). ggml finds mu by a binary
// search; counting the levels not above x finds the same mu without unpredictable branches (the
// quantizer calls this 16 times per weight). A NaN counts every level, as the search ends there.
int nearest_iq4_level(float x) {
  const int8_t* v = kIQ4NLValues;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  int mu = 1;
  for (int k = 1; k < 15; ++k) mu += !(x < static_cast<float>(v[k]));
  return x - v[mu - 1] < v[mu] - x ? mu - 1 : mu;
}

// sum w q x and sum w q² over a group with the levels nearest inv_scale * x.
struct Fit {
  float sumqx = 0, sumq2 = 0;
};
Fit fit_at(const float* x, const float* w, int n, float inv_scale) {
  Fit f;
  for (int j = 0; j < n; ++j) {
    const int l = nearest_iq4_level(inv_scale * x[j]);
    const float q = kIQ4NLValues[l];
    f.sumqx += w[j] * q * x[j];
    f.sumq2 += w[j] * q * q;
  }
  return f;
}

// The group's weight of largest magnitude, with its sign (0 for an all-zero group).
float signed_max(const float* x) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) amax = ax, max = x[j];
  }
  return amax < kGroupMaxEps ? 0.f : max;
}

// The 16 fits' inverse scales: fit 0 maps the largest weight to the extreme level, fit 8 + t is
// trial t in -7..7.
constexpr int kTries = 7;
void trial_scales(float max, float* inv) {
  inv[0] = 1 / (-max / static_cast<float>(kIQ4NLValues[0]));
  for (int t = -kTries; t <= kTries; ++t) inv[8 + t] = static_cast<float>(t + kIQ4NLValues[0]) / max;
}

// The least-squares scale of fit 0, replaced by a trial's when that has the lower weighted error.
float best_of_fits(const Fit* f) {
  float d = f[0].sumqx / f[0].sumq2, best = d * f[0].sumqx;
  for (int t = -kTries; t <= kTries; ++t) {
    const Fit& g = f[8 + t];
    if (g.sumq2 > 0 && g.sumqx * g.sumqx > best * g.sumq2) d = g.sumqx / g.sumq2, best = d * g.sumqx;
  }
  return d;
}

// The best scale of one group of 32 (0 for an all-zero group): the least-squares scale for the
// levels of the extreme-mapping scale, then 15 trial scales, each refitted, the best kept.
float iq4_group_scale(const float* x, const float* w) {
  const float max = signed_max(x);
  if (max == 0) return 0;
  float inv[16];
  trial_scales(max, inv);
  Fit f[16];
  f[0] = fit_at(x, w, 32, inv[0]);
  for (int t = -kTries; t <= kTries; ++t) f[8 + t] = fit_at(x, w, 32, inv[8 + t]);
  return best_of_fits(f);
}

// The same with the 16 fits side by side in two vectors of 8 lanes (lane k: fit k): each lane
// does the scalar fit's float operations in the scalar order, so the bytes are the same; only the
// fits run in parallel instead of one after another.
SQUISH_AVX2 float iq4_group_scale_avx2(const float* x, const float* w) {
  const float max = signed_max(x);
  if (max == 0) return 0;
  alignas(32) float inv[16], levels[16];
  for (int k = 0; k < 16; ++k) levels[k] = kIQ4NLValues[k];
  trial_scales(max, inv);
  const __m256 lv_lo = _mm256_load_ps(levels), lv_hi = _mm256_load_ps(levels + 8);
  const auto level_at = [&](__m256i i) SQUISH_AVX2 {  // levels[i], i in 0..15
    const __m256 lo = _mm256_permutevar8x32_ps(lv_lo, i), hi = _mm256_permutevar8x32_ps(lv_hi, i);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7))));
  };
  __m256 inv_v[2] = {_mm256_load_ps(inv), _mm256_load_ps(inv + 8)};
  __m256 sumqx[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, sumq2[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int j = 0; j < 32; ++j) {
    const __m256 xj = _mm256_set1_ps(x[j]), wj = _mm256_set1_ps(w[j]);
    for (int h = 0; h < 2; ++h) {
      const __m256 al = _mm256_mul_ps(inv_v[h], xj);
      // The first level above al (a NaN counts them all), then the nearer of it and the one below.
      __m256i mu = _mm256_set1_epi32(1);
      for (int k = 1; k < 15; ++k)
        mu = _mm256_sub_epi32(mu, _mm256_castps_si256(_mm256_cmp_ps(al, _mm256_set1_ps(levels[k]), _CMP_NLT_UQ)));
      const __m256i below = _mm256_sub_epi32(mu, _mm256_set1_epi32(1));
      const __m256 lower_nearer = _mm256_cmp_ps(_mm256_sub_ps(al, level_at(below)), _mm256_sub_ps(level_at(mu), al), _CMP_LT_OQ);
      const __m256 q = level_at(_mm256_add_epi32(mu, _mm256_castps_si256(lower_nearer)));
      const __m256 wq = _mm256_mul_ps(wj, q);
      sumqx[h] = _mm256_add_ps(sumqx[h], _mm256_mul_ps(wq, xj));
      sumq2[h] = _mm256_add_ps(sumq2[h], _mm256_mul_ps(wq, q));
    }
  }
  alignas(32) float qx[16], q2[16];
  _mm256_store_ps(qx, sumqx[0]), _mm256_store_ps(qx + 8, sumqx[1]), _mm256_store_ps(q2, sumq2[0]), _mm256_store_ps(q2 + 8, sumq2[1]);
  Fit f[16];
  for (int k = 0; k < 16; ++k) f[k] = {qx[k], q2[k]};
  return best_of_fits(f);
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

// The quantizers, over the group scale search of a SIMD level.
using GroupScale = float (*)(const float* x, const float* w);

template <GroupScale Scale>
void quantize_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t nb, const float* importance) {
  float w[kQK];
  uint8_t L[kQK];
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    error_weights(x, importance ? importance + i * kQK : nullptr, kQK, w);
    const float d = Scale(x, w);
    y[i].d = f32_to_f16(d);
    const float id = d ? 1 / d : 0.f;
    for (int j = 0; j < kQK; ++j) L[j] = static_cast<uint8_t>(nearest_iq4_level(id * x[j]));
    pack_nibbles(L, y[i].qs);
  }
}

template <GroupScale Scale>
void quantize_iq4_xs(const float* x, BlockIQ4_XS* y, int64_t nb, const float* importance) {
  constexpr int kGroups = kQK_K / 32;
  float w[kQK_K], scales[kGroups];
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    error_weights(x, importance ? importance + i * kQK_K : nullptr, kQK_K, w);
    float max_scale = 0, amax_scale = 0;  // the group scale of largest magnitude, with its sign
    for (int g = 0; g < kGroups; ++g) {
      scales[g] = Scale(x + 32 * g, w + 32 * g);
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
  set_reference_kernels<quantize_iq4_nl<iq4_group_scale>, dequantize_iq4_nl, dot_iq4_nl>(rows, GGMLType::IQ4_NL);
  set_reference_kernels<quantize_iq4_xs<iq4_group_scale>, dequantize_iq4_xs, dot_iq4_xs>(rows, GGMLType::IQ4_XS);
}

void quant::table::install_avx2_iquants(Rows& rows) {
  row(rows, GGMLType::IQ4_NL).quantize_rows = quantize_rows<quantize_iq4_nl<iq4_group_scale_avx2>>;
  row(rows, GGMLType::IQ4_XS).quantize_rows = quantize_rows<quantize_iq4_xs<iq4_group_scale_avx2>>;
}

}  // namespace squish
