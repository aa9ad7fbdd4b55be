// AVX2 quantizers and dequantizers, selected at run time (quantize.cpp). Byte-identical to the
// scalar references in quantize_ref.cpp:
//  - elementwise work (F16/BF16/Q8_0/Q4_0 quantization, all dequantization) does the same IEEE
//    operations per element, only 8 at a time (never FMA where the reference multiplies and adds);
//  - the K-quant scale searches run 8 groups at once, one group per lane: each lane performs its
//    group's sequential loop in the reference's order, data-dependent choices become blends, so
//    every lane reproduces the scalar result exactly. The small finishing steps are shared.
#include "core/quant/quant_internal.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/quant/unpack_avx2.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

// Byte/bit exactness needs every a*b+c rounded twice, as written: forbid FMA contraction here
// (GCC contracts by default whenever FMA is available, e.g. in the AVX2 target functions). The
// quant area is also built with -ffp-contract=off (core/CMakeLists.txt), which is what clang,
// without this pragma, goes by.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace squish {
namespace {
using namespace quant;
using namespace quant::detail;

// ---- lane helpers -------------------------------------------------------------------------------

// ggml's nearest_int on 8 lanes (same bit trick, same results for every input).
SQUISH_AVX2 inline __m256i nearest_int8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.f)));
  return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}
SQUISH_AVX2 inline __m256i clamp_i32(__m256i v, int lo, int hi) {
  return _mm256_max_epi32(_mm256_set1_epi32(lo), _mm256_min_epi32(_mm256_set1_epi32(hi), v));
}
SQUISH_AVX2 inline __m256 blend(__m256 a, __m256 b, __m256 take_b) { return _mm256_blendv_ps(a, b, take_b); }
SQUISH_AVX2 inline __m256i blend(__m256i a, __m256i b, __m256 take_b) {
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), take_b));
}
SQUISH_AVX2 inline __m256 gt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
SQUISH_AVX2 inline __m256 lt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
SQUISH_AVX2 inline __m256 fabs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
SQUISH_AVX2 inline __m256 tofloat(__m256i v) { return _mm256_cvtepi32_ps(v); }

// Element i of 8 consecutive groups of `len` floats -> X[i] (lane g = group g).
SQUISH_AVX2 void transpose_in(const float* x, int len, __m256* X) {
  alignas(32) float t[8];
  for (int i = 0; i < len; ++i) {
    for (int g = 0; g < 8; ++g) t[g] = x[g * len + i];
    X[i] = _mm256_load_ps(t);
  }
}
// Levels per lane -> L[g*len + i] (+ offset), as bytes.
SQUISH_AVX2 void transpose_out(const __m256i* Lv, int len, int offset, uint8_t* L) {
  alignas(32) int32_t t[8];
  for (int i = 0; i < len; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), Lv[i]);
    for (int g = 0; g < 8; ++g) L[g * len + i] = static_cast<uint8_t>(t[g] + offset);
  }
}

// make_qkx_quants on 8 groups of n (<= 32) values at once (see quant_internal.hpp).
struct Qkx8 {
  __m256 scale, the_min;
  __m256i L[32];
};
SQUISH_AVX2 void make_qkx_quants8(int n, int nmax, const __m256* X, const __m256* W, float rmin, float rdelta,
                                  int nstep, bool use_mad, Qkx8& out) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 min = X[0], max = X[0];
  __m256 sum_w = W[0];
  __m256 sum_x = _mm256_mul_ps(sum_w, X[0]);
  for (int i = 1; i < n; ++i) {
    min = _mm256_min_ps(X[i], min);  // (x < min) ? x : min, as the reference's if
    max = _mm256_max_ps(X[i], max);
    sum_w = _mm256_add_ps(sum_w, W[i]);
    sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(W[i], X[i]));
  }
  min = blend(min, zero, gt(min, zero));
  const __m256 flat = _mm256_cmp_ps(max, min, _CMP_EQ_OQ);  // lanes the reference returns early for
  const __m256 range = _mm256_sub_ps(max, min);
  __m256 iscale = _mm256_div_ps(_mm256_set1_ps(static_cast<float>(nmax)), range);
  __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.f), iscale);
  __m256 best_mad = zero;
  for (int i = 0; i < n; ++i) {
    out.L[i] = clamp_i32(nearest_int8(_mm256_mul_ps(iscale, _mm256_sub_ps(X[i], min))), 0, nmax);
    __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, tofloat(out.L[i])), min), X[i]);
    diff = use_mad ? fabs8(diff) : _mm256_mul_ps(diff, diff);
    best_mad = _mm256_add_ps(best_mad, _mm256_mul_ps(W[i], diff));
  }
  __m256i Laux[32];
  for (int is = 0; is <= nstep; ++is) {
    const float num = rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax);
    iscale = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(max, min));  // min moves with the best fit
    __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
    for (int i = 0; i < n; ++i) {
      Laux[i] = clamp_i32(nearest_int8(_mm256_mul_ps(iscale, _mm256_sub_ps(X[i], min))), 0, nmax);
      const __m256 fl = tofloat(Laux[i]);
      const __m256 wl = _mm256_mul_ps(W[i], fl);
      sum_l = _mm256_add_ps(sum_l, wl);
      sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, fl));
      sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, X[i]));
    }
    const __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
    const __m256 solvable = gt(D, zero);
    if (_mm256_movemask_ps(solvable) == 0) continue;
    __m256 this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), D);
    __m256 this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), D);
    const __m256 pos = gt(this_min, zero);
    this_min = blend(this_min, zero, pos);
    this_scale = blend(this_scale, _mm256_div_ps(sum_xl, sum_l2), pos);
    __m256 mad = zero;
    for (int i = 0; i < n; ++i) {
      __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, tofloat(Laux[i])), this_min), X[i]);
      diff = use_mad ? fabs8(diff) : _mm256_mul_ps(diff, diff);
      mad = _mm256_add_ps(mad, _mm256_mul_ps(W[i], diff));
    }
    const __m256 better = _mm256_andnot_ps(flat, _mm256_and_ps(solvable, lt(mad, best_mad)));
    if (_mm256_movemask_ps(better) == 0) continue;
    for (int i = 0; i < n; ++i) out.L[i] = blend(out.L[i], Laux[i], better);
    best_mad = blend(best_mad, mad, better);
    scale = blend(scale, this_scale, better);
    min = blend(min, this_min, better);
  }
  for (int i = 0; i < n; ++i) out.L[i] = blend(out.L[i], _mm256_setzero_si256(), flat);
  out.scale = blend(scale, zero, flat);
  out.the_min = _mm256_xor_ps(min, _mm256_set1_ps(-0.0f));
}

// Largest magnitude per lane, keeping the first such value's sign (the references' amax/max).
SQUISH_AVX2 inline void signed_amax8(int n, const __m256* X, __m256& amax, __m256& max) {
  amax = _mm256_setzero_ps();
  max = _mm256_setzero_ps();
  for (int i = 0; i < n; ++i) {
    const __m256 ax = fabs8(X[i]);
    const __m256 bigger = gt(ax, amax);
    amax = blend(amax, ax, bigger);
    max = blend(max, X[i], bigger);
  }
}

// make_qx_quants on 8 groups of n values (W = nullptr: weights x^2). L gets l + nmax.
SQUISH_AVX2 __m256 make_qx_quants8(int n, int nmax, const __m256* X, const __m256* W, __m256i* L) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 amax, max;
  signed_amax8(n, X, amax, max);
  const __m256 dead = lt(amax, _mm256_set1_ps(kGroupMaxEps));
  __m256 iscale = _mm256_div_ps(_mm256_set1_ps(static_cast<float>(-nmax)), max);
  __m256 sumlx = zero, suml2 = zero;
  for (int i = 0; i < n; ++i) {
    const __m256i l = clamp_i32(nearest_int8(_mm256_mul_ps(iscale, X[i])), -nmax, nmax - 1);
    L[i] = _mm256_add_epi32(l, _mm256_set1_epi32(nmax));
    const __m256 w = W ? W[i] : _mm256_mul_ps(X[i], X[i]);
    const __m256 fl = tofloat(l);
    sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, X[i]), fl));
    suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, fl), fl));
  }
  __m256 scale = blend(zero, _mm256_div_ps(sumlx, suml2), _mm256_cmp_ps(suml2, zero, _CMP_NEQ_UQ));
  __m256 best = _mm256_mul_ps(scale, sumlx);
  __m256i laux[32];
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    const float num = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is));
    iscale = _mm256_div_ps(_mm256_set1_ps(num), max);
    sumlx = suml2 = zero;
    for (int i = 0; i < n; ++i) {
      laux[i] = clamp_i32(nearest_int8(_mm256_mul_ps(iscale, X[i])), -nmax, nmax - 1);
      const __m256 w = W ? W[i] : _mm256_mul_ps(X[i], X[i]);
      const __m256 fl = tofloat(laux[i]);
      sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, X[i]), fl));
      suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, fl), fl));
    }
    const __m256 better = _mm256_and_ps(gt(suml2, zero), gt(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)));
    if (_mm256_movemask_ps(better) == 0) continue;
    for (int i = 0; i < n; ++i) L[i] = blend(L[i], _mm256_add_epi32(laux[i], _mm256_set1_epi32(nmax)), better);
    scale = blend(scale, _mm256_div_ps(sumlx, suml2), better);
    best = blend(best, _mm256_mul_ps(scale, sumlx), better);
  }
  for (int i = 0; i < n; ++i) L[i] = blend(L[i], _mm256_setzero_si256(), dead);
  return blend(scale, zero, dead);
}

// make_q3_quants on 8 groups. A lane whose pass changed nothing would change nothing in later
// passes either (same state, same arithmetic), so passes continue until no lane changes.
SQUISH_AVX2 __m256 make_q3_quants8(int n, int nmax, const __m256* X, __m256i* L) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 amax, max;
  signed_amax8(n, X, amax, max);
  const __m256 dead = lt(amax, _mm256_set1_ps(kGroupMaxEps));
  const __m256 iscale = _mm256_div_ps(_mm256_set1_ps(static_cast<float>(-nmax)), max);
  __m256 sumlx = zero, suml2 = zero;
  for (int i = 0; i < n; ++i) {
    L[i] = clamp_i32(nearest_int8(_mm256_mul_ps(iscale, X[i])), -nmax, nmax - 1);
    const __m256 w = _mm256_mul_ps(X[i], X[i]);
    const __m256 fl = tofloat(L[i]);
    sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, X[i]), fl));
    suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, fl), fl));
  }
  for (int itry = 0; itry < 5; ++itry) {
    __m256 changed = zero;
    for (int i = 0; i < n; ++i) {
      const __m256 w = _mm256_mul_ps(X[i], X[i]);
      const __m256 wx = _mm256_mul_ps(w, X[i]);
      const __m256 li = tofloat(L[i]);
      __m256 slx = _mm256_sub_ps(sumlx, _mm256_mul_ps(wx, li));
      __m256 sl2 = _mm256_sub_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, li), li));
      const __m256i new_l =
          clamp_i32(nearest_int8(_mm256_div_ps(_mm256_mul_ps(X[i], sl2), slx)), -nmax, nmax - 1);
      const __m256 nl = tofloat(new_l);
      slx = _mm256_add_ps(slx, _mm256_mul_ps(wx, nl));
      sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, nl), nl));
      const __m256 differs = _mm256_castsi256_ps(
          _mm256_xor_si256(_mm256_cmpeq_epi32(new_l, L[i]), _mm256_set1_epi32(-1)));
      const __m256 gain = gt(_mm256_mul_ps(_mm256_mul_ps(slx, slx), suml2),
                             _mm256_mul_ps(_mm256_mul_ps(sumlx, sumlx), sl2));
      const __m256 accept = _mm256_and_ps(
          _mm256_and_ps(gt(_mm256_sub_ps(sumlx, _mm256_mul_ps(wx, li)), zero), differs),
          _mm256_and_ps(gt(sl2, zero), gain));
      L[i] = blend(L[i], new_l, accept);
      sumlx = blend(sumlx, slx, accept);
      suml2 = blend(suml2, sl2, accept);
      changed = _mm256_or_ps(changed, accept);
    }
    if (_mm256_movemask_ps(changed) == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = blend(_mm256_add_epi32(L[i], _mm256_set1_epi32(nmax)), _mm256_setzero_si256(), dead);
  return blend(_mm256_div_ps(sumlx, suml2), zero, dead);
}

// ---- K-quant blocks --------------------------------------------------------------------------------

// Q4_K/Q5_K: one search over the 8 groups of 32. qw: the block's importances or nullptr.
SQUISH_AVX2 void search_k4(const float* x, int nmax, const float* qw, float* scales, float* mins, float* sw,
                           uint8_t* L) {
  __m256 X[32], W[32];
  transpose_in(x, 32, X);
  Qkx8 r;
  if (!qw) {
    __m256 sum_x2 = _mm256_setzero_ps();
    for (int l = 0; l < 32; ++l) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(X[l], X[l]));
    const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.f)));
    for (int l = 0; l < 32; ++l) W[l] = _mm256_add_ps(av_x, fabs8(X[l]));
    if (nmax == 15)
      make_qkx_quants8(32, 15, X, W, -1.f, 0.1f, 20, false, r);
    else
      make_qkx_quants8(32, 31, X, W, -0.5f, 0.1f, 15, false, r);
  } else {
    __m256 Q[32];
    transpose_in(qw, 32, Q);
    const __m256 sigma2 = _mm256_set1_ps(block_sigma2(x, 2.f));
    __m256 sumw = _mm256_setzero_ps();
    for (int l = 0; l < 32; ++l) {
      W[l] = _mm256_mul_ps(Q[l], _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(X[l], X[l]))));
      sumw = _mm256_add_ps(sumw, W[l]);
    }
    _mm256_storeu_ps(sw, sumw);
    make_qkx_quants8(32, nmax, X, W, -0.9f, 0.05f, 36, false, r);
  }
  _mm256_storeu_ps(scales, r.scale);
  _mm256_storeu_ps(mins, r.the_min);
  transpose_out(r.L, 32, 0, L);
}

SQUISH_AVX2 void quantize_q4_K(const float* x, BlockQ4_K* y, int64_t nb, const float* qw) {
  alignas(32) uint8_t L[kQK_K];
  float scales[8], mins[8], sw[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float* q = qw ? qw + kQK_K * i : nullptr;
    search_k4(x, 15, q, scales, mins, sw, L);
    if (q) finish_q4_K_weighted(x, scales, mins, sw, L, &y[i]);
    else finish_q4_K(x, scales, mins, L, &y[i]);
  }
}

SQUISH_AVX2 void quantize_q5_K(const float* x, BlockQ5_K* y, int64_t nb, const float* qw) {
  alignas(32) uint8_t L[kQK_K];
  float scales[8], mins[8], sw[8];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float* q = qw ? qw + kQK_K * i : nullptr;
    search_k4(x, 31, q, scales, mins, sw, L);
    if (q) finish_q5_K_weighted(x, scales, mins, sw, L, &y[i]);
    else finish_q5_K(x, scales, mins, L, &y[i]);
  }
}

SQUISH_AVX2 void quantize_q2_K(const float* x, BlockQ2_K* y, int64_t nb, const float* qw) {
  alignas(32) uint8_t L[kQK_K];
  float scales[16], mins[16], sw[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float* q = qw ? qw + kQK_K * i : nullptr;
    const float sigma2 = q ? block_sigma2(x, 1.f) : 0.f;
    for (int half = 0; half < 2; ++half) {  // groups 0..7, then 8..15
      const float* xh = x + 128 * half;
      __m256 X[16], W[16];
      transpose_in(xh, 16, X);
      Qkx8 r;
      if (!q) {
        for (int l = 0; l < 16; ++l) W[l] = fabs8(X[l]);
        make_qkx_quants8(16, 3, X, W, -0.5f, 0.1f, 15, true, r);
      } else {
        __m256 Q[16];
        transpose_in(q + 128 * half, 16, Q);
        __m256 sumw = _mm256_setzero_ps();
        for (int l = 0; l < 16; ++l) {
          W[l] = _mm256_mul_ps(Q[l], _mm256_sqrt_ps(_mm256_add_ps(_mm256_set1_ps(sigma2), _mm256_mul_ps(X[l], X[l]))));
          sumw = _mm256_add_ps(sumw, W[l]);
        }
        _mm256_storeu_ps(sw + 8 * half, sumw);
        make_qkx_quants8(16, 3, X, W, -0.9f, 0.05f, 36, false, r);
      }
      _mm256_storeu_ps(scales + 8 * half, r.scale);
      _mm256_storeu_ps(mins + 8 * half, r.the_min);
      transpose_out(r.L, 16, 0, L + 128 * half);
    }
    if (q) finish_q2_K_weighted(x, scales, mins, sw, L, &y[i]);
    else finish_q2_K(x, scales, mins, L, &y[i]);
  }
}

SQUISH_AVX2 void quantize_q3_K(const float* x, BlockQ3_K* y, int64_t nb, const float* qw) {
  alignas(32) int8_t L[kQK_K];
  float scales[16], sw[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float* q = qw ? qw + kQK_K * i : nullptr;
    const float sigma2 = q ? block_sigma2(x, 2.f) : 0.f;
    for (int half = 0; half < 2; ++half) {
      __m256 X[16];
      __m256i Lv[16];
      transpose_in(x + 128 * half, 16, X);
      __m256 s;
      if (!q) {
        s = make_q3_quants8(16, 4, X, Lv);
      } else {
        __m256 Q[16], W[16];
        transpose_in(q + 128 * half, 16, Q);
        __m256 sumw = _mm256_setzero_ps();
        for (int l = 0; l < 16; ++l) {
          W[l] = _mm256_mul_ps(Q[l], _mm256_sqrt_ps(_mm256_add_ps(_mm256_set1_ps(sigma2), _mm256_mul_ps(X[l], X[l]))));
          sumw = _mm256_add_ps(sumw, W[l]);
        }
        _mm256_storeu_ps(sw + 8 * half, sumw);
        s = make_qx_quants8(16, 4, X, W, Lv);
      }
      _mm256_storeu_ps(scales + 8 * half, s);
      transpose_out(Lv, 16, 0, reinterpret_cast<uint8_t*>(L) + 128 * half);
    }
    if (q) finish_q3_K_weighted(x, scales, sw, L, &y[i]);
    else finish_q3_K(x, scales, L, &y[i]);
  }
}

SQUISH_AVX2 void quantize_q6_K(const float* x, BlockQ6_K* y, int64_t nb, const float* qw) {
  alignas(32) int8_t L[kQK_K];
  float scales[16];
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float* q = qw ? qw + kQK_K * i : nullptr;
    for (int half = 0; half < 2; ++half) {
      __m256 X[16], Q[16];
      __m256i Lv[16];
      transpose_in(x + 128 * half, 16, X);
      if (q) transpose_in(q + 128 * half, 16, Q);
      _mm256_storeu_ps(scales + 8 * half, make_qx_quants8(16, 32, X, q ? Q : nullptr, Lv));
      transpose_out(Lv, 16, 0, reinterpret_cast<uint8_t*>(L) + 128 * half);
    }
    finish_q6_K(x, scales, L, &y[i]);
  }
}

// ---- legacy blocks and floats ------------------------------------------------------------------------

SQUISH_AVX2 inline float hmax8(__m256 m) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// roundf (half away from zero) on 8 lanes: round to nearest even, then fix exact halves.
SQUISH_AVX2 inline __m256i round_away8(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 half = _mm256_cmp_ps(fabs8(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_EQ_OQ);
  const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));
  return _mm256_cvtps_epi32(blend(r, _mm256_add_ps(t, one), half));
}

SQUISH_AVX2 void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      m = _mm256_max_ps(m, fabs8(v[k]));
    }
    const float amax = hmax8(m);
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = round_away8(_mm256_mul_ps(v[k], vid));
    const __m256i ab = _mm256_packs_epi32(q[0], q[1]), cd = _mm256_packs_epi32(q[2], q[3]);
    const __m256i all = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), all);
  }
}

SQUISH_AVX2 void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0, max = 0;
    for (int j = 0; j < kQK; ++j)
      if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    const __m256 vid = _mm256_set1_ps(id), bias = _mm256_set1_ps(8.5f);
    alignas(32) int32_t q[kQK];
    for (int k = 0; k < 4; ++k) {  // truncation of x*id + 8.5, clamped to 15
      const __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid), bias);
      _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * k), _mm256_min_epi32(_mm256_cvttps_epi32(v), _mm256_set1_epi32(15)));
    }
    for (int j = 0; j < 16; ++j) y[i].qs[j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  }
}

SQUISH_AVX2 void to_f16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)  // F16C rounds to nearest even, like f32_to_f16
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

SQUISH_AVX2 void to_bf16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  const __m256i exp_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    // round to nearest even: add 0x7fff + lsb of the kept part; NaNs are kept quiet instead.
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, exp_mask), inf);
    const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}

// ---- dequantization ------------------------------------------------------------------------------

// out[16] = d_g * (L - offset) - m_g for one 16-level group (same ops as the references).
SQUISH_AVX2 inline void dequant_group(const uint8_t* L, int offset, float dg, float mg, float* out) {
  const __m256 vd = _mm256_set1_ps(dg), vm = _mm256_set1_ps(mg);
  const __m256i off = _mm256_set1_epi32(offset);
  for (int h = 0; h < 2; ++h) {
    const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(L + 8 * h))), off);
    _mm256_storeu_ps(out + 8 * h, _mm256_sub_ps(_mm256_mul_ps(vd, _mm256_cvtepi32_ps(q)), vm));
  }
}

template <class Block>
SQUISH_AVX2 void dequantize_k(const Block* x, float* y, int64_t nb) {
  KInts k;
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    unpack(x[i], k);
    const float d = f16_to_f32(x[i].d);
    if constexpr (std::is_same_v<Block, BlockQ3_K> || std::is_same_v<Block, BlockQ6_K>) {
      const int offset = std::is_same_v<Block, BlockQ3_K> ? 4 : 32;
      for (int g = 0; g < 16; ++g) dequant_group(k.L + 16 * g, offset, d * static_cast<float>(k.sc[g]), 0.f, y + 16 * g);
    } else {
      const float dmin = f16_to_f32(x[i].dmin);
      for (int g = 0; g < 16; ++g)
        dequant_group(k.L + 16 * g, 0, d * static_cast<float>(k.sc[g]), dmin * static_cast<float>(k.m[g]), y + 16 * g);
    }
  }
}

SQUISH_AVX2 void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256 d = _mm256_set1_ps(f16_to_f32(x[i].d));
    for (int k = 0; k < 4; ++k) {
      const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x[i].qs + 8 * k)));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
    }
  }
}

SQUISH_AVX2 void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256 d = _mm256_set1_ps(f16_to_f32(x[i].d));
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs));
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; ++k) {
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), _mm256_set1_epi32(8));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
    }
  }
}

SQUISH_AVX2 void from_f16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  for (; i < n; ++i) y[i] = f16_to_f32(x[i]);
}

SQUISH_AVX2 void from_bf16(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}

// ---- the row entries ---------------------------------------------------------------------------

void f16(const float* x, uint16_t* y, int64_t n, const float*) { to_f16(x, y, n); }
void bf16(const float* x, uint16_t* y, int64_t n, const float*) { to_bf16(x, y, n); }
void q8_0(const float* x, BlockQ8_0* y, int64_t nb, const float*) { quantize_q8_0(x, y, nb); }
void q4_0(const float* x, BlockQ4_0* y, int64_t nb, const float* qw) {
  if (qw) quantize_q4_0_weighted(x, y, nb * kQK, qw);  // weighted Q4_0: the scalar reference
  else quantize_q4_0(x, y, nb);
}

}  // namespace

// F32 keeps the reference's copies (nothing to vectorize).
void quant::table::install_avx2_quantizers(Rows& rows) {
  auto set = [&](GGMLType t, auto quantize, auto dequantize) {
    row(rows, t).quantize_rows = quantize;
    row(rows, t).dequantize_row = dequantize;
  };
  set(GGMLType::F16, quantize_rows<f16>, dequantize_row<from_f16>);
  set(GGMLType::BF16, quantize_rows<bf16>, dequantize_row<from_bf16>);
  set(GGMLType::Q8_0, quantize_rows<q8_0>, dequantize_row<dequantize_q8_0>);
  set(GGMLType::Q4_0, quantize_rows<q4_0>, dequantize_row<dequantize_q4_0>);
  set(GGMLType::Q2_K, quantize_rows<quantize_q2_K>, dequantize_row<dequantize_k<BlockQ2_K>>);
  set(GGMLType::Q3_K, quantize_rows<quantize_q3_K>, dequantize_row<dequantize_k<BlockQ3_K>>);
  set(GGMLType::Q4_K, quantize_rows<quantize_q4_K>, dequantize_row<dequantize_k<BlockQ4_K>>);
  set(GGMLType::Q5_K, quantize_rows<quantize_q5_K>, dequantize_row<dequantize_k<BlockQ5_K>>);
  set(GGMLType::Q6_K, quantize_rows<quantize_q6_K>, dequantize_row<dequantize_k<BlockQ6_K>>);
  row(rows, GGMLType::Q8_0).from_float = from_float<quantize_q8_0>;
}

}  // namespace squish
