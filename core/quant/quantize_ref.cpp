// Scalar reference quantizers and dequantizers: the definition of Squish's bytes.
//
// The unweighted quantizers reproduce ggml's *_ref functions bit for bit, which pins down more
// than the algorithm: every float expression below keeps ggml's evaluation order (a*b*c is
// (a*b)*c, sums run left to right), integers are converted to float where ggml converts them,
// rounding uses nearest_int, and fp16 fields are rounded to nearest even. Do not "simplify" the
// arithmetic, and do not build this file with -ffast-math or FMA contraction.
#include "core/quant/quant_internal.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

// Byte/bit exactness needs every a*b+c rounded twice, as written: forbid FMA contraction here
// (GCC contracts by default whenever FMA is available, e.g. in the AVX2 target functions). The
// quant area is also built with -ffp-contract=off (core/CMakeLists.txt), which is what clang,
// without this pragma, goes by.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace squish {
namespace quant::detail {

float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax < kGroupMaxEps) {
    std::memset(L, 0, n);
    return 0.f;
  }
  // First guess: the largest magnitude maps to -nmax; then the least-squares scale for its levels.
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = qw ? qw[i] : x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;  // = sumlx^2/suml2: the error reduction achieved; larger is better
  // Try 18 nearby starting scales; keep whichever levels give the largest reduction.
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = qw ? qw[i] : x[i] * x[i];
      sumlx += w * x[i] * static_cast<float>(l);
      suml2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax < kGroupMaxEps) {
    std::memset(L, 0, n);
    return 0.f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  // Coordinate descent: move one level at a time to its optimum given the others, keeping the
  // move only if it raises sumlx^2/suml2.
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * static_cast<float>(L[i]);
      if (slx > 0) {
        float sl2 = suml2 - w * static_cast<float>(L[i]) * static_cast<float>(L[i]);
        int new_l = nearest_int(x[i] * sl2 / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          slx += w * x[i] * static_cast<float>(new_l);
          sl2 += w * static_cast<float>(new_l) * static_cast<float>(new_l);
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return sumlx / suml2;
}

float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                      uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;  // the offset only ever shifts down: zero must stay representable
  if (max == min) {
    std::memset(L, 0, n);
    *the_min = -min;
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_mad = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_mad += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  // For each trial scale, round, then solve the 2x2 weighted least-squares for (scale, min).
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const float fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float mad = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        mad += weights[i] * diff;
      }
      if (mad < best_mad) {
        std::memcpy(L, Laux, n);
        best_mad = mad;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* qw) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
  if (!max) {
    std::memset(L, 0, n);
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * static_cast<float>(L[i]);
    best_mse += qw[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * static_cast<float>(is) + static_cast<float>(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * static_cast<float>(l);
      mse += qw[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = static_cast<uint8_t>(l);
    const float w = qw[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = qw[i];
      const float li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      float sl2 = suml2 - w * li * li;
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          slx += w * x[i] * static_cast<float>(new_l);
          sl2 += w * static_cast<float>(new_l) * static_cast<float>(new_l);
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return sumlx / suml2;
}

// ---- bit packing -------------------------------------------------------------------------------

// Q2_K/Q3_K low bits: byte l of each 32-byte half holds levels l, l+32, l+64, l+96 of its 128.
void pack_q2_K_levels(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// Q3_K: the third bit of level j goes to bit j/32 of hmask[j%32]; the low two bits as Q2_K.
void pack_q3_K_levels(uint8_t* L, uint8_t* hmask, uint8_t* qs) {
  std::memset(hmask, 0, kQK_K / 8);
  for (int j = 0; j < kQK_K; ++j) {
    if (L[j] > 3) {
      hmask[j % 32] |= static_cast<uint8_t>(1u << (j / 32));
      L[j] -= 4;
    }
  }
  pack_q2_K_levels(L, qs);
}

void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* scales) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] = ls[j];
      scales[j + 4] = lm[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

void pack_q3_K_scales(const int8_t* ls, uint8_t* scales) {
  std::memset(scales, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = ls[j];
    if (j < 8)
      scales[j] = static_cast<uint8_t>(l & 0xF);
    else
      scales[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
    scales[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
}

// Q4_K/Q5_K: re-quantize every group with its rounded scale and min (as stored).
static void requantize_k4(const float* x, const uint16_t d16, const uint16_t dmin16, const uint8_t* scales, int nmax,
                          uint8_t* L) {
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    get_scale_min_k4(j, scales, sc, m);
    const float d = f16_to_f32(d16) * static_cast<float>(sc);
    if (!d) continue;
    const float dm = f16_to_f32(dmin16) * static_cast<float>(m);
    for (int ii = 0; ii < 32; ++ii) {
      const int l = nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

// ---- finish steps (unweighted reference) -------------------------------------------------------

void finish_q2_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ2_K* y) {
  const float q4scale = 15.f;
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0) {
    const float iscale = q4scale / max_scale;
    for (int j = 0; j < 16; ++j) y->scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
    y->d = f32_to_f16(max_scale / q4scale);
  } else {
    std::memset(y->scales, 0, 16);
    y->d = f32_to_f16(0.f);
  }
  if (max_min > 0) {
    const float iscale = q4scale / max_min;
    for (int j = 0; j < 16; ++j) y->scales[j] |= static_cast<uint8_t>(nearest_int(iscale * mins[j]) << 4);
    y->dmin = f32_to_f16(max_min / q4scale);
  } else {
    y->dmin = f32_to_f16(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = f16_to_f32(y->d) * static_cast<float>(y->scales[j] & 0xF);
    if (!d) continue;
    const float dm = f16_to_f32(y->dmin) * static_cast<float>(y->scales[j] >> 4);
    for (int ii = 0; ii < 16; ++ii) {
      const int l = nearest_int((x[16 * j + ii] + dm) / d);
      L[16 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  pack_q2_K_levels(L, y->qs);
}

// Shared tail of Q3_K (reference and weighted): re-quantize with the stored scales, then pack.
static void requantize_pack_q3_K(const float* x, int8_t* L, BlockQ3_K* y) {
  int8_t sc[16];
  unpack_q3_k_scales(y->scales, sc);
  for (int j = 0; j < 16; ++j) {
    const float d = f16_to_f32(y->d) * static_cast<float>(sc[j]);
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = nearest_int(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>(std::max(-4, std::min(3, l)) + 4);
    }
  }
  pack_q3_K_levels(reinterpret_cast<uint8_t*>(L), y->hmask, y->qs);
}

void finish_q3_K(const float* x, const float* scales, int8_t* L, BlockQ3_K* y) {
  float max_scale = 0, amax = 0;  // the signed scale of largest magnitude
  for (int j = 0; j < 16; ++j) {
    const float a = std::fabs(scales[j]);
    if (a > amax) { amax = a; max_scale = scales[j]; }
  }
  if (max_scale) {
    const float iscale = -32.f / max_scale;
    int8_t ls[16];
    for (int j = 0; j < 16; ++j) {
      const int l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
      ls[j] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
    }
    pack_q3_K_scales(ls, y->scales);
    y->d = f32_to_f16(1 / iscale);
  } else {
    std::memset(y->scales, 0, 12);
    y->d = f32_to_f16(0.f);
  }
  requantize_pack_q3_K(x, L, y);
}

// Q4_K/Q5_K: 6-bit scales and mins relative to the largest of each.
static void k4_scales(const float* scales, const float* mins, uint8_t* packed, uint16_t& d, uint16_t& dmin) {
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
  }
  pack_k4_scales(ls, lm, packed);
  d = f32_to_f16(max_scale / 63.f);
  dmin = f32_to_f16(max_min / 63.f);
}

static void pack_q4_K_levels(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kQK_K; j += 64) {
    for (int l = 0; l < 32; ++l) qs[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    qs += 32;
  }
}

// Q5_K: low nibbles as Q4_K; the 5th bit of the two 32-groups of chunk c goes to bits 2c, 2c+1 of qh.
static void pack_q5_K_levels(const uint8_t* L, uint8_t* qh, uint8_t* ql) {
  std::memset(qh, 0, kQK_K / 8);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < kQK_K; n += 64) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j], l2 = L[n + j + 32];
      if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
      if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    m1 <<= 2;
    m2 <<= 2;
    ql += 32;
  }
}

void finish_q4_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ4_K* y) {
  k4_scales(scales, mins, y->scales, y->d, y->dmin);
  requantize_k4(x, y->d, y->dmin, y->scales, 15, L);
  pack_q4_K_levels(L, y->qs);
}

void finish_q5_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ5_K* y) {
  k4_scales(scales, mins, y->scales, y->d, y->dmin);
  requantize_k4(x, y->d, y->dmin, y->scales, 31, L);
  pack_q5_K_levels(L, y->qh, y->qs);
}

void finish_q6_K(const float* x, const float* scales, int8_t* L, BlockQ6_K* y) {
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    const float a = std::fabs(scales[ib]);
    if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[ib]; }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(y, 0, sizeof(*y));
    return;
  }
  const float iscale = -128.f / max_scale;
  y->d = f32_to_f16(1 / iscale);
  for (int ib = 0; ib < 16; ++ib) y->scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  for (int j = 0; j < 16; ++j) {
    const float d = f16_to_f32(y->d) * static_cast<float>(y->scales[j]);
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = nearest_int(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
    }
  }
  // ql: low nibbles of levels l and l+64 (bytes 0..31) and l+32, l+96 (32..63) per 128;
  // qh: the top two bits of l, l+32, l+64, l+96 in one byte.
  uint8_t* ql = y->ql;
  uint8_t* qh = y->qh;
  for (int j = 0; j < kQK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* q = reinterpret_cast<const uint8_t*>(L) + j + l;
      ql[l] = static_cast<uint8_t>((q[0] & 0xF) | ((q[64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((q[32] & 0xF) | ((q[96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

float block_sigma2(const float* x, float mult) {
  float sum_x2 = 0;
  for (int l = 0; l < kQK_K; ++l) sum_x2 += x[l] * x[l];
  return mult * sum_x2 / kQK_K;
}

// ---- finish steps (importance-weighted) ----------------------------------------------------------
// The group scales/mins are themselves quantized with make_qp_quants, weighted by each group's
// total importance sw, instead of simply relative to the largest.

void finish_q2_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ2_K* y) {
  uint8_t Ls[16], Lm[16];
  const float dm0 = make_qp_quants(16, 15, scales, Ls, sw);
  const float mm0 = make_qp_quants(16, 15, mins, Lm, sw);
  y->d = f32_to_f16(dm0);
  y->dmin = f32_to_f16(mm0);
  const float dm = f16_to_f32(y->d), mm = f16_to_f32(y->dmin);
  for (int j = 0; j < 16; ++j) y->scales[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
  for (int j = 0; j < 16; ++j) {
    const float d = dm * static_cast<float>(y->scales[j] & 0xF);
    if (!d) continue;
    const float m = mm * static_cast<float>(y->scales[j] >> 4);
    for (int ii = 0; ii < 16; ++ii) {
      const int l = nearest_int((x[16 * j + ii] + m) / d);
      L[16 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  pack_q2_K_levels(L, y->qs);
}

void finish_q3_K_weighted(const float* x, const float* scales, const float* sw, int8_t* L, BlockQ3_K* y) {
  int8_t Ls[16];
  const float d_block = make_qx_quants(16, 32, scales, Ls, sw);
  pack_q3_K_scales(Ls, y->scales);
  y->d = f32_to_f16(d_block);
  requantize_pack_q3_K(x, L, y);
}

static void k4_scales_weighted(const float* scales, const float* mins, const float* sw, uint8_t* packed,
                               uint16_t& d, uint16_t& dmin) {
  uint8_t Ls[8], Lm[8];
  const float d_block = make_qp_quants(8, 63, scales, Ls, sw);
  const float m_block = make_qp_quants(8, 63, mins, Lm, sw);
  for (int j = 0; j < 8; ++j) {
    Ls[j] = std::min<uint8_t>(63, Ls[j]);
    Lm[j] = std::min<uint8_t>(63, Lm[j]);
  }
  pack_k4_scales(Ls, Lm, packed);
  d = f32_to_f16(d_block);
  dmin = f32_to_f16(m_block);
}

void finish_q4_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ4_K* y) {
  k4_scales_weighted(scales, mins, sw, y->scales, y->d, y->dmin);
  requantize_k4(x, y->d, y->dmin, y->scales, 15, L);
  pack_q4_K_levels(L, y->qs);
}

void finish_q5_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ5_K* y) {
  k4_scales_weighted(scales, mins, sw, y->scales, y->d, y->dmin);
  requantize_k4(x, y->d, y->dmin, y->scales, 31, L);
  pack_q5_K_levels(L, y->qh, y->qs);
}

}  // namespace quant::detail

namespace {
using namespace quant;
using namespace quant::detail;

// ---- legacy 32-element blocks --------------------------------------------------------------------

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));  // half away from 0
  }
}

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0, max = 0;  // the signed value of largest magnitude maps to -8
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      // ggml truncates x*id + 8.5 (i.e. rounds half up) and clamps the one value that hits 16.
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j] * id + 8.5f))));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(static_cast<int>(x[j + 16] * id + 8.5f))));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

}  // namespace

// Importance-weighted Q4_0 (ggml's quantize_row_q4_0_impl): weights qw * sqrt(sigma2 + x^2) with
// sigma2 the row's mean square.
void quant::detail::quantize_q4_0_weighted(const float* x, BlockQ4_0* y, int64_t n, const float* qw) {
  float sum_x2 = 0;
  for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  const float sigma2 = sum_x2 / static_cast<float>(n);
  float weight[kQK];
  int8_t L[kQK];
  for (int64_t ib = 0; ib < n / kQK; ++ib) {
    const float* xb = x + kQK * ib;
    const float* w = qw + kQK * ib;
    for (int j = 0; j < kQK; ++j) weight[j] = w[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    const float d = make_qx_quants(kQK, 8, xb, L, weight);
    y[ib].d = f32_to_f16(d);
    for (int j = 0; j < 16; ++j) y[ib].qs[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
  }
}

namespace {

// ---- K-quants, unweighted (byte-matched to ggml's *_ref) ----------------------------------------

void quantize_q2_K(const float* x, BlockQ2_K* y, int64_t nb) {
  uint8_t L[kQK_K], Laux[16];
  float weights[16], mins[16], scales[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
    }
    finish_q2_K(x, scales, mins, L, &y[i]);
  }
}

void quantize_q3_K(const float* x, BlockQ3_K* y, int64_t nb) {
  int8_t L[kQK_K];
  float scales[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    for (int j = 0; j < 16; ++j) scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
    finish_q3_K(x, scales, L, &y[i]);
  }
}

// Q4_K/Q5_K search: weights |x| + rms of the group, favouring large weights.
template <int kNmax>
void search_k4(const float* x, float* scales, float* mins, uint8_t* L, float rmin, float rdelta, int nstep) {
  uint8_t Laux[32];
  float weights[32];
  for (int j = 0; j < 8; ++j) {
    const float* xg = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xg[l] * xg[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xg[l]);
    scales[j] = make_qkx_quants(32, kNmax, xg, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
  }
}

void quantize_q4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  uint8_t L[kQK_K];
  float mins[8], scales[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    search_k4<15>(x, scales, mins, L, -1.f, 0.1f, 20);
    finish_q4_K(x, scales, mins, L, &y[i]);
  }
}

void quantize_q5_K(const float* x, BlockQ5_K* y, int64_t nb) {
  uint8_t L[kQK_K];
  float mins[8], scales[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    search_k4<31>(x, scales, mins, L, -0.5f, 0.1f, 15);
    finish_q5_K(x, scales, mins, L, &y[i]);
  }
}

void quantize_q6_K(const float* x, BlockQ6_K* y, int64_t nb, const float* qw) {
  int8_t L[kQK_K];
  float scales[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    // Weighted Q6_K (ggml's quantize_row_q6_K_impl) differs only in using the importance directly.
    for (int ib = 0; ib < 16; ++ib)
      scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + kQK_K * i + 16 * ib : nullptr);
    finish_q6_K(x, scales, L, &y[i]);
  }
}

// ---- K-quants, importance-weighted (ggml's quantize_row_*_impl with quant_weights) ---------------
// The group weights are qw * sqrt(sigma2 + x^2): importance times a floor so small weights still
// count; the group scales/mins are then themselves quantized with make_qp_quants, weighted by the
// group's total weight, instead of simply relative to the largest.


void quantize_q2_K_weighted(const float* x, BlockQ2_K* y, int64_t nb, const float* qw) {
  uint8_t L[kQK_K], Laux[16];
  float mins[16], scales[16], sw[16], weight[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float sigma2 = block_sigma2(x, 1.f);
    for (int j = 0; j < 16; ++j) {
      const float* w = qw + kQK_K * i + 16 * j;
      for (int l = 0; l < 16; ++l) weight[l] = w[l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      sw[j] = 0;
      for (int l = 0; l < 16; ++l) sw[j] += weight[l];
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }
    finish_q2_K_weighted(x, scales, mins, sw, L, &y[i]);
  }
}

void quantize_q3_K_weighted(const float* x, BlockQ3_K* y, int64_t nb, const float* qw) {
  int8_t L[kQK_K];
  float scales[16], weight[16], sw[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float sigma2 = block_sigma2(x, 2.f);
    for (int j = 0; j < 16; ++j) {
      const float* w = qw + kQK_K * i + 16 * j;
      for (int l = 0; l < 16; ++l) weight[l] = w[l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 16; ++l) sumw += weight[l];
      sw[j] = sumw;
      scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
    }
    finish_q3_K_weighted(x, scales, sw, L, &y[i]);
  }
}

template <int kNmax>
void search_k4_weighted(const float* x, float* scales, float* mins, float* sw, uint8_t* L, const float* qw) {
  uint8_t Laux[32];
  float weights[32];
  const float sigma2 = block_sigma2(x, 2.f);
  for (int j = 0; j < 8; ++j) {
    const float* w = qw + 32 * j;
    for (int l = 0; l < 32; ++l) weights[l] = w[l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
    float sumw = 0;
    for (int l = 0; l < 32; ++l) sumw += weights[l];
    sw[j] = sumw;
    scales[j] = make_qkx_quants(32, kNmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
  }
}

void quantize_q4_K_weighted(const float* x, BlockQ4_K* y, int64_t nb, const float* qw) {
  uint8_t L[kQK_K];
  float scales[8], mins[8], sw[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    search_k4_weighted<15>(x, scales, mins, sw, L, qw + kQK_K * i);
    finish_q4_K_weighted(x, scales, mins, sw, L, &y[i]);
  }
}

void quantize_q5_K_weighted(const float* x, BlockQ5_K* y, int64_t nb, const float* qw) {
  uint8_t L[kQK_K];
  float scales[8], mins[8], sw[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    search_k4_weighted<31>(x, scales, mins, sw, L, qw + kQK_K * i);
    finish_q5_K_weighted(x, scales, mins, sw, L, &y[i]);
  }
}

// ---- dequantization (same arithmetic as ggml's dequantize_row_*) ---------------------------------

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < kQK; ++j) *y++ = static_cast<float>(x[i].qs[j]) * d;
  }
}

void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = f16_to_f32(x[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((x[i].qs[j] & 0xF) - 8) * d;
      y[j + 16] = static_cast<float>((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_q2_K(const BlockQ2_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), min = f16_to_f32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    int is = 0;
    for (int n = 0; n < kQK_K; n += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = x[i].scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF), ml = min * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
        }
      }
    }
  }
}

void dequantize_q3_K(const BlockQ3_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d_all = f16_to_f32(x[i].d);
    int8_t sc[16];
    unpack_q3_k_scales(x[i].scales, sc);
    const uint8_t* q = x[i].qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < kQK_K; n += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * static_cast<float>(sc[is++]);
          for (int l = 16 * half; l < 16 * half + 16; ++l) {
            const int v = ((q[l] >> shift) & 3) - ((x[i].hmask[l] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

void dequantize_q4_K(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), min = f16_to_f32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < 8; j += 2, q += 32) {
      uint8_t sc, m;
      get_scale_min_k4(j, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
      get_scale_min_k4(j + 1, x[i].scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_K(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), min = f16_to_f32(x[i].dmin);
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 8; j += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      get_scale_min_k4(j, x[i].scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
      get_scale_min_k4(j + 1, x[i].scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}

void dequantize_q6_K(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int n = 0; n < kQK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

// ---- float types -------------------------------------------------------------------------------

void copy_f32(const float* x, float* y, int64_t n, const float*) { std::memcpy(y, x, n * sizeof(float)); }
void to_f16(const float* x, uint16_t* y, int64_t n, const float*) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}
void to_bf16(const float* x, uint16_t* y, int64_t n, const float*) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}
void from_f32(const float* x, float* y, int64_t n) { std::memcpy(y, x, n * sizeof(float)); }
void from_f16(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(x[i]);
}
void from_bf16(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}
void copy_activations(const float* x, float* y, int64_t n) { std::memcpy(y, x, n * sizeof(float)); }

// ---- the quantizers with an optional importance ------------------------------------------------

void q8_0(const float* x, BlockQ8_0* y, int64_t nb, const float*) { quantize_q8_0(x, y, nb); }  // ggml ignores imatrix here
void q4_0(const float* x, BlockQ4_0* y, int64_t nb, const float* qw) {
  if (qw) quantize_q4_0_weighted(x, y, nb * kQK, qw);
  else quantize_q4_0(x, y, nb);
}
void q2_K(const float* x, BlockQ2_K* y, int64_t nb, const float* qw) {
  if (qw) quantize_q2_K_weighted(x, y, nb, qw);
  else quantize_q2_K(x, y, nb);
}
void q3_K(const float* x, BlockQ3_K* y, int64_t nb, const float* qw) {
  if (qw) quantize_q3_K_weighted(x, y, nb, qw);
  else quantize_q3_K(x, y, nb);
}
void q4_K(const float* x, BlockQ4_K* y, int64_t nb, const float* qw) {
  if (qw) quantize_q4_K_weighted(x, y, nb, qw);
  else quantize_q4_K(x, y, nb);
}
void q5_K(const float* x, BlockQ5_K* y, int64_t nb, const float* qw) {
  if (qw) quantize_q5_K_weighted(x, y, nb, qw);
  else quantize_q5_K(x, y, nb);
}

}  // namespace

namespace quant::table {

void install_reference_quantizers(Rows& rows) {
  auto set = [&](GGMLType t, auto quantize, auto dequantize) {
    row(rows, t).quantize_rows = quantize;
    row(rows, t).dequantize_row = dequantize;
  };
  set(GGMLType::F32, quantize_rows<copy_f32>, dequantize_row<from_f32>);
  set(GGMLType::F16, quantize_rows<to_f16>, dequantize_row<from_f16>);
  set(GGMLType::BF16, quantize_rows<to_bf16>, dequantize_row<from_bf16>);
  set(GGMLType::Q8_0, quantize_rows<q8_0>, dequantize_row<dequantize_q8_0>);
  set(GGMLType::Q4_0, quantize_rows<q4_0>, dequantize_row<dequantize_q4_0>);
  set(GGMLType::Q2_K, quantize_rows<q2_K>, dequantize_row<dequantize_q2_K>);
  set(GGMLType::Q3_K, quantize_rows<q3_K>, dequantize_row<dequantize_q3_K>);
  set(GGMLType::Q4_K, quantize_rows<q4_K>, dequantize_row<dequantize_q4_K>);
  set(GGMLType::Q5_K, quantize_rows<q5_K>, dequantize_row<dequantize_q5_K>);
  set(GGMLType::Q6_K, quantize_rows<quantize_q6_K>, dequantize_row<dequantize_q6_K>);
  // As activations: F32 copies, Q8_0 quantizes as for weights.
  row(rows, GGMLType::F32).from_float = from_float<copy_activations>;
  row(rows, GGMLType::Q8_0).from_float = from_float<quantize_q8_0>;
}

}  // namespace quant::table
}  // namespace squish
