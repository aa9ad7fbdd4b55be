// AVX2 dot kernels. Each computes the same per-block integers as the scalar reference
// (vec_dot.cpp) with SIMD, then does the reference's float arithmetic in the same order, so the
// results are bit-identical to it.
#include "core/quant/iq_grids.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/quant/vec_dot.hpp"
#include "core/quant/unpack_avx2.hpp"
#include "core/base/error.hpp"

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

// One F16C instruction instead of the out-of-line scalar conversion: a per-block scale is
// converted in every block of every dot, so this is on decode's hot path. Exact, like the
// scalar conversion (every fp16 value is representable in fp32).
SQUISH_AVX2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

SQUISH_AVX2 inline float hmax_abs(const float* x, int n) {  // n a multiple of 8
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 int32 -> 32 int8 in order (values already in int8 range).
SQUISH_AVX2 inline __m256i pack_i32_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b);  // lanes interleave per 128 bits
  const __m256i cd = _mm256_packs_epi32(c, d);
  const __m256i abcd = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

SQUISH_AVX2 void quantize_q8_K(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    const float amax = hmax_abs(x, kQK_K);
    if (!amax) {
      std::memset(&y[i], 0, sizeof(y[i]));
      continue;
    }
    float max = 0;  // the first value of largest magnitude, with its sign (as the reference)
    for (int j = 0; j < kQK_K; ++j)
      if (std::fabs(x[j]) == amax) { max = x[j]; break; }
    const float iscale = -127.f / max;
    const __m256 vs = _mm256_set1_ps(iscale);
    const __m256i v127 = _mm256_set1_epi32(127);
    for (int j = 0; j < kQK_K; j += 32) {
      // cvtps rounds to nearest even like nearest_int (|v| <= 127 here).
      __m256i q[4];
      for (int k = 0; k < 4; ++k)
        q[k] = _mm256_min_epi32(v127, _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + j), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
    }
    finish_q8_K_block(y[i]);
    y[i].d = 1 / iscale;
  }
}

// ---- quantized dots ------------------------------------------------------------------------
// Per block the integer sums are exact (as the reference's); the block's float factors are then
// applied to a vector of 8 partial sums and accumulated in float vectors across blocks, so the
// float result differs from the reference only by summation order (quant_simd_test bounds it).

SQUISH_AVX2 inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

SQUISH_AVX2 inline __m256i loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Group scales for 16-weight groups: for the p-th 32-byte run of levels (groups 2p and 2p+1),
// 16 int16 lanes holding sc[2p] (low half) and sc[2p+1] (high half), from 16 int8 scales.
SQUISH_AVX2 inline __m256i pair_scales(__m128i sc8, int p) {
  const __m128i idx = _mm_set_epi64x(0x0101010101010101LL * (2 * p + 1), 0x0101010101010101LL * (2 * p));
  return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
}

// sum over the 32 weights of one run: levels (unsigned) x activations, weighted per group.
SQUISH_AVX2 inline __m256i scaled_run(__m256i levels, const int8_t* q8, __m256i scales16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(levels, loadu(q8)), scales16);
}

// Q2_K, Q3_K, Q6_K: 16 groups of 16, levels unsigned with an offset folded into the bsums term.
SQUISH_AVX2 float dot_q2_K(int64_t nb, const BlockQ2_K* x, const BlockQ8_K* y) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
    const __m128i sc8 = _mm_and_si128(packed, m4);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
    const __m256i summs = _mm256_madd_epi16(mins, loadu(y[i].bsums));
    __m256i sumi = _mm256_setzero_si256();
    for (int n = 0; n < 2; ++n) {
      const __m256i v = loadu(x[i].qs + 32 * n);
      for (int s = 0; s < 4; ++s) {
        const __m256i L = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3);
        sumi = _mm256_add_epi32(sumi, scaled_run(L, y[i].qs + 128 * n + 32 * s, pair_scales(sc8, 4 * n + s)));
      }
    }
    const float dy = y[i].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dy * h2f(x[i].dmin)), _mm256_cvtepi32_ps(summs), acc_m);
  }
  return hsum_ps(_mm256_sub_ps(acc, acc_m));
}

SQUISH_AVX2 float dot_q3_K(int64_t nb, const BlockQ3_K* x, const BlockQ8_K* y) {
  const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i sc8 = q3_k_scales(x[i].scales);
    // The -4 of every level: sum_g sc[g] * bsums[g].
    const __m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), loadu(y[i].bsums));
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 2));
    __m256i h = loadu(x[i].hmask);  // bit 4n+s of byte l: the high bit of weight 128n + 32s + l
    for (int n = 0; n < 2; ++n) {
      const __m256i v = loadu(x[i].qs + 32 * n);
      for (int s = 0; s < 4; ++s) {
        // high bit moved to bit 2: (h << 2) & 4, h shifted right once per run.
        const __m256i L = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3),
                                          _mm256_and_si256(_mm256_slli_epi16(h, 2), four));
        h = _mm256_srli_epi16(h, 1);
        sumi = _mm256_add_epi32(sumi, scaled_run(L, y[i].qs + 128 * n + 32 * s, pair_scales(sc8, 4 * n + s)));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc);
}

SQUISH_AVX2 float dot_q6_K(int64_t nb, const BlockQ6_K* x, const BlockQ8_K* y) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
    // The -32 of every level: sum_g sc[g] * bsums[g].
    const __m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), loadu(y[i].bsums));
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
    for (int n = 0; n < 2; ++n) {  // 128 weights: 4 runs of 32 = groups 8n..8n+7
      const __m256i q0 = loadu(x[i].ql + 64 * n), q1 = loadu(x[i].ql + 64 * n + 32), h = loadu(x[i].qh + 32 * n);
      const __m256i L[4] = {
          _mm256_or_si256(_mm256_and_si256(q0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(q1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), m4), _mm256_and_si256(h, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30))};
      for (int p = 0; p < 4; ++p)
        sumi = _mm256_add_epi32(sumi, scaled_run(L[p], y[i].qs + 128 * n + 32 * p, pair_scales(sc8, 4 * n + p)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc);
}

// The shared part of Q4_K and Q5_K: `levels(c, lo, hi)` gives the 64 levels of run c.
template <class Block, class Levels>
SQUISH_AVX2 inline float k4_dot(int64_t nb, const Block* x, const BlockQ8_K* y, Levels levels) {
  __m256 acc = _mm256_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    uint32_t sc4[2], mn4[2];
    k4_scales_mins(x[i].scales, sc4, mn4);
    // mins: sum_j m[j] * (bsums[2j] + bsums[2j+1])
    const __m256i bs = loadu(y[i].bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn4)));
    const __m128i summs = _mm_madd_epi16(mins, pairs);
    // each scale as an int16 pair in an int32: one broadcast from memory per run
    const uint8_t* sc = reinterpret_cast<const uint8_t*>(sc4);
    alignas(32) int32_t s2[8];
    for (int j = 0; j < 8; ++j) s2[j] = sc[j] * 0x10001;
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      __m256i lo, hi;
      levels(x[i], c, lo, hi);
      sumi = _mm256_add_epi32(sumi, scaled_run(lo, y[i].qs + 64 * c, _mm256_set1_epi32(s2[2 * c])));
      sumi = _mm256_add_epi32(sumi, scaled_run(hi, y[i].qs + 64 * c + 32, _mm256_set1_epi32(s2[2 * c + 1])));
    }
    const float dy = y[i].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * h2f(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    acc_m = _mm_fmadd_ps(_mm_set1_ps(dy * h2f(x[i].dmin)), _mm_cvtepi32_ps(summs), acc_m);
  }
  __m128 m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return hsum_ps(acc) - _mm_cvtss_f32(m);
}

SQUISH_AVX2 float dot_q4_K(int64_t nb, const BlockQ4_K* x, const BlockQ8_K* y) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  return k4_dot(nb, x, y, [&](const BlockQ4_K& b, int c, __m256i& lo, __m256i& hi) SQUISH_AVX2 {
    const __m256i v = loadu(b.qs + 32 * c);
    lo = _mm256_and_si256(v, m4);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
  });
}

SQUISH_AVX2 float dot_q5_K(int64_t nb, const BlockQ5_K* x, const BlockQ8_K* y) {
  const __m256i m4 = _mm256_set1_epi8(0xF), bit4 = _mm256_set1_epi8(0x10);
  return k4_dot(nb, x, y, [&](const BlockQ5_K& b, int c, __m256i& lo, __m256i& hi) SQUISH_AVX2 {
    // bit 2c of qh[l] is the 5th bit of weight 64c + l, bit 2c+1 that of weight 64c + 32 + l
    const __m256i v = loadu(b.qs + 32 * c), h = _mm256_srl_epi16(loadu(b.qh), _mm_cvtsi32_si128(2 * c));
    lo = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
  });
}

// Signed x signed bytes, 8 int32 lanes of partial sums: |x| * (y with x's sign) (maddubs), the
// 16-bit pair sums times `scales` (ones: a plain dot).
SQUISH_AVX2 inline __m256i dot_i8_lanes_scaled(__m256i x, __m256i y, __m256i scales) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)), scales);
}
SQUISH_AVX2 inline __m256i dot_i8_lanes(__m256i x, __m256i y) { return dot_i8_lanes_scaled(x, y, _mm256_set1_epi16(1)); }

SQUISH_AVX2 float dot_q8_0(int64_t nb, const BlockQ8_0* x, const BlockQ8_0* y) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    const __m256i p0 = dot_i8_lanes(loadu(x[i].qs), loadu(y[i].qs));
    const __m256i p1 = dot_i8_lanes(loadu(x[i + 1].qs), loadu(y[i + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
  }
  for (; i < nb; ++i)
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(dot_i8_lanes(loadu(x[i].qs), loadu(y[i].qs))), acc0);
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

SQUISH_AVX2 float dot_q4_0(int64_t nb, const BlockQ4_0* x, const BlockQ8_0* y) {
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m256i eight = _mm256_set1_epi8(8);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  auto block = [&](int64_t i) SQUISH_AVX2 {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs));
    const __m256i q = _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4)), eight);
    return _mm256_mul_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(dot_i8_lanes(q, loadu(y[i].qs))));
  };
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    acc0 = _mm256_add_ps(acc0, block(i));
    acc1 = _mm256_add_ps(acc1, block(i + 1));
  }
  for (; i < nb; ++i) acc0 = _mm256_add_ps(acc0, block(i));
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

// IQ4_NL / IQ4_XS: 16 bytes of nibbles to the 32 signed levels of a group (weights 0..15 from the
// low nibbles, 16..31 from the high), by one table lookup per 128-bit lane.
SQUISH_AVX2 inline __m256i iq4_levels(const uint8_t* qs) {
  const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_set_m128i(_mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(v, 4), m4)), _mm_shuffle_epi8(table, _mm_and_si128(v, m4)));
}

SQUISH_AVX2 inline __m256i iq4_table() {  // the 16 levels in both 128-bit lanes, for shuffles
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
}

// IQ4_NL, two blocks per step: block i's 16 bytes in the low lane, block i+1's in the high, so
// the low nibbles are weights 0..15 of each and the high nibbles 16..31; the activations are
// regrouped to match, and each lane's 4 partial sums take its own block's scale.
SQUISH_AVX2 float dot_iq4_nl(int64_t nb, const BlockIQ4_NL* x, const BlockQ8_0* y) {
  const __m256i table = iq4_table();
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    const __m256i v = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i + 1].qs)),
                                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs)));
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    const __m256i q0 = loadu(y[i].qs), q1 = loadu(y[i + 1].qs);
    const __m256i q_lo = _mm256_permute2x128_si256(q0, q1, 0x20), q_hi = _mm256_permute2x128_si256(q0, q1, 0x31);
    const __m256i s = _mm256_add_epi32(dot_i8_lanes(lo, q_lo), dot_i8_lanes(hi, q_hi));
    const __m256 d = _mm256_set_m128(_mm_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm_set1_ps(h2f(x[i].d) * h2f(y[i].d)));
    if (i % 4 == 0) acc0 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc0);
    else acc1 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc1);
  }
  for (; i < nb; ++i)
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(dot_i8_lanes(iq4_levels(x[i].qs), loadu(y[i].qs))), acc0);
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

// IQ4_XS, two groups per step: the low nibbles of their 32 bytes are weights 0..15 of each
// group and the high nibbles weights 16..31, so the activations are regrouped to match (one
// cross-lane permute each) instead of the levels. Each group's ls - 32 multiplies its 16-bit
// pair sums in the `madd`; every block's integer is exact, and blocks are scaled and summed in
// float lanes.
SQUISH_AVX2 float dot_iq4_xs(int64_t nb, const BlockIQ4_XS* x, const BlockQ8_K* y) {
  const __m256i table = iq4_table();
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    uint64_t ls = 0;  // each group's ls - 32 as a byte, in a register (a store and a wider load stall)
    for (int g = 0; g < kQK_K / 32; ++g) ls |= uint64_t(uint8_t(iq4_xs_scale(x[i], g) - 32)) << (8 * g);
    const __m128i sc8 = _mm_cvtsi64_si128(static_cast<long long>(ls));
    __m256i isum = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      const __m256i v = loadu(x[i].qs + 32 * p);
      const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
      const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
      const __m256i q0 = loadu(y[i].qs + 64 * p), q1 = loadu(y[i].qs + 64 * p + 32);
      const __m256i sc = pair_scales(sc8, p);
      const __m256i q_lo = _mm256_permute2x128_si256(q0, q1, 0x20), q_hi = _mm256_permute2x128_si256(q0, q1, 0x31);
      isum = _mm256_add_epi32(isum, _mm256_add_epi32(dot_i8_lanes_scaled(lo, q_lo, sc), dot_i8_lanes_scaled(hi, q_hi, sc)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

SQUISH_AVX2 inline __m256 load8(const uint16_t* p, std::false_type /*f16*/) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
SQUISH_AVX2 inline __m256 load8(const uint16_t* p, std::true_type /*bf16*/) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Float weights: 4 x 8 FMA lanes; the lane folding and tail follow ref's float_dot exactly.
template <class W, class Load, class Scalar>
SQUISH_AVX2 float float_dot(int64_t n, const W* w, const float* x, Load load_w, Scalar scalar_w) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_fmadd_ps(load_w(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
  const __m256 v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float s = 0;
  for (int l = 0; l < 8; ++l) s += lanes[l];
  for (; i < n; ++i) s += scalar_w(w[i]) * x[i];
  return s;
}

struct LoadF32 {
  SQUISH_AVX2 __m256 operator()(const float* p) const { return _mm256_loadu_ps(p); }
};
struct LoadF16 {
  SQUISH_AVX2 __m256 operator()(const uint16_t* p) const { return load8(p, std::false_type{}); }
};
struct LoadBF16 {
  SQUISH_AVX2 __m256 operator()(const uint16_t* p) const { return load8(p, std::true_type{}); }
};
struct ScalarF32 { float operator()(float v) const { return v; } };
struct ScalarF16 { float operator()(uint16_t v) const { return f16_to_f32(v); } };
struct ScalarBF16 { float operator()(uint16_t v) const { return bf16_to_f32(v); } };

float dot_f32(int64_t n, const float* w, const float* x) { return float_dot(n, w, x, LoadF32{}, ScalarF32{}); }
float dot_f16(int64_t n, const uint16_t* w, const float* x) { return float_dot(n, w, x, LoadF16{}, ScalarF16{}); }
float dot_bf16(int64_t n, const uint16_t* w, const float* x) { return float_dot(n, w, x, LoadBF16{}, ScalarBF16{}); }

// IQ3_XXS / IQ3_S: a group's 32 sign bits (bit j: weight j negative) as bytes, 0xFF where set.
// Each byte of the broadcast word goes to the 8 bytes of its weights, then each byte tests its bit.
SQUISH_AVX2 inline __m256i sign_bytes(uint32_t bits) {
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread), bit), bit);
}

// 32 weights of a grid i-quant: grid bytes (unsigned) times signed activations, pairs summed to
// 16 bits (|2 x 62 x 127| fits), then times the odd scales (16-bit lanes 0..7 hold weights 0..15,
// lanes 8..15 weights 16..31) into 32-bit lanes.
SQUISH_AVX2 inline __m256i iq_grid_group(__m256i grid, uint32_t sign_bits, const int8_t* q8, __m256i scales) {
  const __m256i q = _mm256_sign_epi8(loadu(q8), _mm256_or_si256(sign_bytes(sign_bits), _mm256_set1_epi8(1)));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(grid, q), scales);
}
SQUISH_AVX2 inline __m256i iq3_group(__m256i grid, uint32_t sign_bits, const int8_t* q8, int scale) {
  return iq_grid_group(grid, sign_bits, q8, _mm256_set1_epi16(static_cast<int16_t>(scale)));
}
// The odd scales 2s + 1 of two groups of 16 from one byte of nibbles.
SQUISH_AVX2 inline __m256i group16_scales(uint8_t nibbles) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(2 * (nibbles >> 4) + 1)), _mm_set1_epi16(static_cast<int16_t>(2 * (nibbles & 0xF) + 1)));
}
// Four bytes of 7-bit sign codes as 32 sign bits.
inline uint32_t even_signs4(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  return kIQEvenSigns[c0 & 127] | (kIQEvenSigns[c1 & 127] << 8) | (kIQEvenSigns[c2 & 127] << 16) | (uint32_t{kIQEvenSigns[c3 & 127]} << 24);
}
SQUISH_AVX2 inline __m256i points4(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t p3) {
  return _mm256_set_epi64x(static_cast<int64_t>(p3), static_cast<int64_t>(p2), static_cast<int64_t>(p1), static_cast<int64_t>(p0));
}

SQUISH_AVX2 float dot_iq2_xxs(int64_t nb, const BlockIQ2_XXS* x, const BlockQ8_K* y) {
  const uint64_t* P = kIQ2XXSPoints.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t aux[2];
      std::memcpy(aux, x[i].qs + 8 * ib, 8);
      const __m256i grid = points4(P[aux[0] & 0xFF], P[(aux[0] >> 8) & 0xFF], P[(aux[0] >> 16) & 0xFF], P[aux[0] >> 24]);
      const uint32_t signs = even_signs4(aux[1], aux[1] >> 7, aux[1] >> 14, aux[1] >> 21);
      isum = _mm256_add_epi32(isum, iq3_group(grid, signs, y[i].qs + 32 * ib, static_cast<int>(2 * (aux[1] >> 28) + 1)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return 0.125f * hsum_ps(acc);
}

SQUISH_AVX2 float dot_iq2_xs(int64_t nb, const BlockIQ2_XS* x, const BlockQ8_K* y) {
  const uint64_t* P = kIQ2XSPoints.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint16_t* q = x[i].qs + 4 * ib;
      const __m256i grid = points4(P[q[0] & 511], P[q[1] & 511], P[q[2] & 511], P[q[3] & 511]);
      const uint32_t signs = even_signs4(q[0] >> 9, q[1] >> 9, q[2] >> 9, q[3] >> 9);
      isum = _mm256_add_epi32(isum, iq_grid_group(grid, signs, y[i].qs + 32 * ib, group16_scales(x[i].scales[ib])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return 0.125f * hsum_ps(acc);
}

SQUISH_AVX2 float dot_iq2_s(int64_t nb, const BlockIQ2_S* x, const BlockQ8_K* y) {
  const uint64_t* P = kIQ2SPoints.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* q = x[i].qs + 4 * ib;
      const unsigned h = x[i].qh[ib];
      const __m256i grid = points4(P[q[0] | ((h << 8) & 0x300)], P[q[1] | ((h << 6) & 0x300)], P[q[2] | ((h << 4) & 0x300)],
                                   P[q[3] | ((h << 2) & 0x300)]);
      uint32_t signs;
      std::memcpy(&signs, x[i].qs + kQK_K / 8 + 4 * ib, 4);
      isum = _mm256_add_epi32(isum, iq_grid_group(grid, signs, y[i].qs + 32 * ib, group16_scales(x[i].scales[ib])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return 0.125f * hsum_ps(acc);
}

SQUISH_AVX2 float dot_iq3_xxs(int64_t nb, const BlockIQ3_XXS* x, const BlockQ8_K* y) {
  const uint32_t* P = kIQ3XXSPoints.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* q3 = x[i].qs + 8 * ib;
      const __m256i grid = _mm256_set_epi32(static_cast<int>(P[q3[7]]), static_cast<int>(P[q3[6]]), static_cast<int>(P[q3[5]]),
                                            static_cast<int>(P[q3[4]]), static_cast<int>(P[q3[3]]), static_cast<int>(P[q3[2]]),
                                            static_cast<int>(P[q3[1]]), static_cast<int>(P[q3[0]]));
      uint32_t aux;
      std::memcpy(&aux, x[i].signs_scales + 4 * ib, 4);
      const uint32_t signs = kIQEvenSigns[aux & 127] | (kIQEvenSigns[(aux >> 7) & 127] << 8) |
                             (kIQEvenSigns[(aux >> 14) & 127] << 16) | (uint32_t{kIQEvenSigns[(aux >> 21) & 127]} << 24);
      isum = _mm256_add_epi32(isum, iq3_group(grid, signs, y[i].qs + 32 * ib, static_cast<int>(2 * (aux >> 28) + 1)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return 0.25f * hsum_ps(acc);
}

SQUISH_AVX2 float dot_iq3_s(int64_t nb, const BlockIQ3_S* x, const BlockQ8_K* y) {
  const uint32_t* P = kIQ3SPoints.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* q = x[i].qs + 8 * ib;
      const unsigned h = x[i].qh[ib];
      const auto at = [&](int k) { return static_cast<int>(P[q[k] | (((h >> k) & 1u) << 8)]); };
      const __m256i grid = _mm256_set_epi32(at(7), at(6), at(5), at(4), at(3), at(2), at(1), at(0));
      uint32_t signs;
      std::memcpy(&signs, x[i].signs + 4 * ib, 4);
      const int scale = 2 * ((x[i].scales[ib / 2] >> (4 * (ib % 2))) & 0xF) + 1;
      isum = _mm256_add_epi32(isum, iq3_group(grid, signs, y[i].qs + 32 * ib, scale));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

// IQ1_S / IQ1_M: 32 weights in {-1, 0, 1}: the activations with the grid's signs (0 where the
// grid is 0) summed in pairs, times the 16-bit lanes' scales; and the activations' own pair sums
// times the lanes' signed shift scales (the +-1/8 applied once per block).
SQUISH_AVX2 inline void iq1_group(__m256i grid, const int8_t* q8, __m256i scales, __m256i shift_scales, __m256i& isum, __m256i& ishift) {
  const __m256i ones = _mm256_set1_epi8(1), q = loadu(q8);
  isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones, _mm256_sign_epi8(q, grid)), scales));
  ishift = _mm256_add_epi32(ishift, _mm256_madd_epi16(_mm256_maddubs_epi16(ones, q), shift_scales));
}

SQUISH_AVX2 float dot_iq1_s(int64_t nb, const BlockIQ1_S* x, const BlockQ8_K* y) {
  const uint64_t* P = kIQ1Points.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    __m256i isum = _mm256_setzero_si256(), ishift = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* q = x[i].qs + 4 * ib;
      const unsigned h = x[i].qh[ib];
      const __m256i grid = points4(P[q[0] | ((h << 8) & 0x700)], P[q[1] | ((h << 5) & 0x700)], P[q[2] | ((h << 2) & 0x700)],
                                   P[q[3] | ((h >> 1) & 0x700)]);
      const int ls = static_cast<int>(2 * ((h >> 12) & 7) + 1);
      const __m256i scales = _mm256_set1_epi16(static_cast<int16_t>(ls));
      iq1_group(grid, y[i].qs + 32 * ib, scales, _mm256_set1_epi16(static_cast<int16_t>(h & 0x8000 ? -ls : ls)), isum, ishift);
    }
    const __m256 sums = _mm256_add_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_set1_ps(kIQ1Delta), _mm256_cvtepi32_ps(ishift)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), sums, acc);
  }
  return hsum_ps(acc);
}

SQUISH_AVX2 float dot_iq1_m(int64_t nb, const BlockIQ1_M* x, const BlockQ8_K* y) {
  const uint64_t* P = kIQ1Points.data();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    uint16_t sc[4];
    std::memcpy(sc, x[i].scales, sizeof(sc));
    __m256i isum = _mm256_setzero_si256(), ishift = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {  // two groups of 16: g = 2 ib, 2 ib + 1
      const uint8_t* q = x[i].qs + 4 * ib;
      const unsigned h0 = x[i].qh[2 * ib], h1 = x[i].qh[2 * ib + 1];
      const __m256i grid = points4(P[q[0] | ((h0 << 8) & 0x700)], P[q[1] | ((h0 << 4) & 0x700)], P[q[2] | ((h1 << 8) & 0x700)],
                                   P[q[3] | ((h1 << 4) & 0x700)]);
      const int s = sc[ib / 2] >> (6 * (ib % 2));
      const int ls0 = 2 * (s & 7) + 1, ls1 = 2 * ((s >> 3) & 7) + 1;
      const auto sh = [](unsigned bits, unsigned mask, int ls) { return static_cast<int16_t>(bits & mask ? -ls : ls); };
      // 16-bit lanes 0..3 hold weights 0..7, 4..7 weights 8..15 (group 2 ib), 8..15 the next group.
      const __m256i scales = _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(ls1)), _mm_set1_epi16(static_cast<int16_t>(ls0)));
      const __m256i shifts = _mm256_set_epi16(sh(h1, 0x80, ls1), sh(h1, 0x80, ls1), sh(h1, 0x80, ls1), sh(h1, 0x80, ls1),
                                              sh(h1, 0x08, ls1), sh(h1, 0x08, ls1), sh(h1, 0x08, ls1), sh(h1, 0x08, ls1),
                                              sh(h0, 0x80, ls0), sh(h0, 0x80, ls0), sh(h0, 0x80, ls0), sh(h0, 0x80, ls0),
                                              sh(h0, 0x08, ls0), sh(h0, 0x08, ls0), sh(h0, 0x08, ls0), sh(h0, 0x08, ls0));
      iq1_group(grid, y[i].qs + 32 * ib, scales, shifts, isum, ishift);
    }
    const __m256 sums = _mm256_add_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_set1_ps(kIQ1Delta), _mm256_cvtepi32_ps(ishift)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(iq1_m_d(x[i])) * y[i].d), sums, acc);
  }
  return hsum_ps(acc);
}

}  // namespace

void quant::table::install_avx2_dots(Rows& rows) {
  row(rows, GGMLType::F32).vec_dot = vec_dot<dot_f32>;
  row(rows, GGMLType::F16).vec_dot = vec_dot<dot_f16>;
  row(rows, GGMLType::BF16).vec_dot = vec_dot<dot_bf16>;
  row(rows, GGMLType::Q8_0).vec_dot = vec_dot<dot_q8_0>;
  row(rows, GGMLType::Q4_0).vec_dot = vec_dot<dot_q4_0>;
  row(rows, GGMLType::Q2_K).vec_dot = vec_dot<dot_q2_K>;
  row(rows, GGMLType::Q3_K).vec_dot = vec_dot<dot_q3_K>;
  row(rows, GGMLType::Q4_K).vec_dot = vec_dot<dot_q4_K>;
  row(rows, GGMLType::Q5_K).vec_dot = vec_dot<dot_q5_K>;
  row(rows, GGMLType::Q6_K).vec_dot = vec_dot<dot_q6_K>;
  row(rows, GGMLType::IQ4_NL).vec_dot = vec_dot<dot_iq4_nl>;
  row(rows, GGMLType::IQ4_XS).vec_dot = vec_dot<dot_iq4_xs>;
  row(rows, GGMLType::IQ3_XXS).vec_dot = vec_dot<dot_iq3_xxs>;
  row(rows, GGMLType::IQ3_S).vec_dot = vec_dot<dot_iq3_s>;
  row(rows, GGMLType::IQ2_XXS).vec_dot = vec_dot<dot_iq2_xxs>;
  row(rows, GGMLType::IQ2_XS).vec_dot = vec_dot<dot_iq2_xs>;
  row(rows, GGMLType::IQ2_S).vec_dot = vec_dot<dot_iq2_s>;
  row(rows, GGMLType::IQ1_S).vec_dot = vec_dot<dot_iq1_s>;
  row(rows, GGMLType::IQ1_M).vec_dot = vec_dot<dot_iq1_m>;
  row(rows, GGMLType::Q8_K).from_float = from_float<quantize_q8_K>;
}

}  // namespace squish
