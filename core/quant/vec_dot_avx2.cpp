// AVX2 dot kernels. Each computes the same per-block integers as the scalar reference
// (vec_dot.cpp) with SIMD, then does the reference's float arithmetic in the same order, so the
// results are bit-identical to it.
#include "core/quant/quantize.hpp"
#include "core/quant/vec_dot.hpp"
#include "core/quant/unpack_avx2.hpp"
#include "core/runtime/error.hpp"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

// Byte/bit exactness needs every a*b+c rounded twice, as written: forbid FMA contraction here
// (GCC contracts by default whenever FMA is available, e.g. in the AVX2 target functions).
#pragma GCC optimize("fp-contract=off")

namespace squish {
namespace {
using namespace quant;
using namespace quant::detail;

// One F16C instruction instead of the out-of-line scalar conversion: a per-block scale is
// converted in every block of every dot, so this is on decode's hot path. Exact, like the
// scalar conversion (every fp16 value is representable in fp32).
SQUISH_AVX2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

SQUISH_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

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

// sum_g sc[g] * sum_{16} L*q: unsigned levels times signed activations in pairs (maddubs, no
// overflow: 2*63*127 < 2^15), then weighted by the group scale (madd).
SQUISH_AVX2 int32_t scaled_dot(const KInts& k, const BlockQ8_K& y) {
  __m256i acc = _mm256_setzero_si256();
  for (int p = 0; p < 8; ++p) {
    const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(k.L + 32 * p));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y.qs + 32 * p));
    const __m256i prod = _mm256_maddubs_epi16(l, q);
    const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(k.sc[2 * p + 1]), _mm_set1_epi16(k.sc[2 * p]));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, sc));
  }
  return hsum_i32(acc);
}

template <class Block>
SQUISH_AVX2 float k_dot(int64_t nb, const Block* x, const BlockQ8_K* y) {
  KInts k;
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    unpack(x[i], k);
    const int32_t isum = scaled_dot(k, y[i]);
    if constexpr (std::is_same_v<Block, BlockQ3_K>) {
      sumf += h2f(x[i].d) * y[i].d * static_cast<float>(isum - 4 * offset_bsum_term(k, y[i]));
    } else if constexpr (std::is_same_v<Block, BlockQ6_K>) {
      sumf += h2f(x[i].d) * y[i].d * static_cast<float>(isum - 32 * offset_bsum_term(k, y[i]));
    } else {
      const float dall = y[i].d * h2f(x[i].d);
      const float dmin = y[i].d * h2f(x[i].dmin);
      sumf += dall * static_cast<float>(isum) - dmin * static_cast<float>(min_bsum_term(k, y[i]));
    }
  }
  return sumf;
}

// Q4_K and Q6_K (the bulk of a Q4_K_M model) get fused kernels: the 4/6-bit levels are built
// in registers and dotted straight away instead of going through KInts in memory. The integer
// sums are the same exact values as k_dot's, and the float arithmetic is k_dot's, unchanged.
SQUISH_AVX2 float dot_q4_K(int64_t nb, const BlockQ4_K* x, const BlockQ8_K* y) {
  const __m256i m4 = _mm256_set1_epi8(0xF), ones = _mm256_set1_epi16(1);
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    // The 8 six-bit scales and mins (get_scale_min_k4, four bytes at a time): bytes 0-3 hold
    // sc[0..3] and bits 4-5 of sc[4..7], bytes 4-7 the same for the mins, bytes 8-11 the low
    // nibbles of sc[4..7] (low) and m[4..7] (high).
    uint32_t a[3];
    std::memcpy(a, x[i].scales, sizeof(a));
    const uint32_t sc4[2] = {a[0] & 0x3f3f3f3fu, (a[2] & 0x0f0f0f0fu) | ((a[0] >> 2) & 0x30303030u)};
    const uint32_t mn4[2] = {a[1] & 0x3f3f3f3fu, ((a[2] >> 4) & 0x0f0f0f0fu) | ((a[1] >> 2) & 0x30303030u)};
    uint8_t sc[8];
    std::memcpy(sc, sc4, sizeof(sc));
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {  // 64 weights: low nibbles are group 2c, high nibbles 2c+1
      const __m256i v = load(x[i].qs + 32 * c);
      const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 64 * c)));
      const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 64 * c + 32)));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c])));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1])));
    }
    const int32_t isum = hsum_i32(acc);
    // sum_j m[j] * (bsums[2j] + bsums[2j+1])
    const __m256i bs = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].bsums)), ones);
    const __m256i mv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn4)));
    const int32_t summs = hsum_i32(_mm256_mullo_epi32(bs, mv));
    const float dall = y[i].d * h2f(x[i].d);
    const float dmin = y[i].d * h2f(x[i].dmin);
    sumf += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return sumf;
}

SQUISH_AVX2 float dot_q6_K(int64_t nb, const BlockQ6_K* x, const BlockQ8_K* y) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* sc = x[i].scales;
    __m256i acc = _mm256_setzero_si256();
    for (int n = 0; n < 2; ++n) {  // 128 weights: 4 runs of 32 = groups of 16 weights 8n..8n+7
      const __m256i q0 = load(x[i].ql + 64 * n), q1 = load(x[i].ql + 64 * n + 32), h = load(x[i].qh + 32 * n);
      const __m256i L[4] = {
          _mm256_or_si256(_mm256_and_si256(q0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(q1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), m4), _mm256_and_si256(h, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(h, 2), m30))};
      for (int p = 0; p < 4; ++p) {
        const int g = 8 * n + 2 * p;
        const __m256i prod = _mm256_maddubs_epi16(L[p], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs + 128 * n + 32 * p)));
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, s));
      }
    }
    const int32_t isum = hsum_i32(acc);
    // sum_g sc[g] * bsums[g] (the -32 offset of every level)
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
    const int32_t off = hsum_i32(_mm256_madd_epi16(sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].bsums))));
    sumf += h2f(x[i].d) * y[i].d * static_cast<float>(isum - 32 * off);
  }
  return sumf;
}

// Signed x signed bytes via |x| * (y with x's sign), the usual maddubs trick.
SQUISH_AVX2 inline int32_t dot_i8(__m256i x, __m256i y) {
  const __m256i ax = _mm256_sign_epi8(x, x);
  const __m256i sy = _mm256_sign_epi8(y, x);
  return hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1)));
}

// Lane k of the result = the sum of the 8 lanes of v[k] (one reduction for 8 vectors).
SQUISH_AVX2 inline __m256i hsum8_i32(const __m256i v[8]) {
  const __m256i ab = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i cd = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  // ab: per 128-bit half, the partial sums of v[0..3]; cd: of v[4..7]. Add the halves.
  return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

SQUISH_AVX2 float dot_q8_0(int64_t nb, const BlockQ8_0* x, const BlockQ8_0* y) {
  float sumf = 0;
  int64_t i = 0;
  // Eight blocks at a time: the integer sums are reduced together (a horizontal sum per block
  // costs as much as its dot), then accumulated one by one in the reference's order.
  const __m256i ones = _mm256_set1_epi16(1);
  for (; i + 8 <= nb; i += 8) {
    __m256i p[8];
    for (int k = 0; k < 8; ++k) {
      const __m256i xv = load(reinterpret_cast<const uint8_t*>(x[i + k].qs));
      const __m256i yv = load(reinterpret_cast<const uint8_t*>(y[i + k].qs));
      p[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(yv, xv)), ones);
    }
    alignas(32) int32_t isum[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(isum), hsum8_i32(p));
    for (int k = 0; k < 8; ++k) sumf += static_cast<float>(isum[k]) * (h2f(x[i + k].d) * h2f(y[i + k].d));
  }
  for (; i < nb; ++i) {
    const int32_t isum = dot_i8(load(reinterpret_cast<const uint8_t*>(x[i].qs)), load(reinterpret_cast<const uint8_t*>(y[i].qs)));
    sumf += static_cast<float>(isum) * (h2f(x[i].d) * h2f(y[i].d));
  }
  return sumf;
}

SQUISH_AVX2 float dot_q4_0(int64_t nb, const BlockQ4_0* x, const BlockQ8_0* y) {
  float sumf = 0;
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < nb; ++i) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs));
    const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));  // 0..15
    const __m256i yq = load(reinterpret_cast<const uint8_t*>(y[i].qs));
    // sum (q - 8) * y = sum q*y - 8 * sum y
    const int32_t qy = hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, yq), ones));
    const int32_t sy = hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), yq), ones));
    const int32_t isum = qy - 8 * sy;
    sumf += static_cast<float>(isum) * (h2f(x[i].d) * h2f(y[i].d));
  }
  return sumf;
}

SQUISH_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
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

}  // namespace

namespace avx2 {

void quantize_activations(GGMLType weight_type, const float* x, void* xq, int64_t n) {
  switch (vec_dot_type(weight_type)) {
    case GGMLType::F32: std::memcpy(xq, x, n * sizeof(float)); break;
    case GGMLType::Q8_0: avx2::quantize_row(GGMLType::Q8_0, x, xq, n); break;
    default: quantize_q8_K(x, static_cast<BlockQ8_K*>(xq), n / kQK_K); break;
  }
}

float vec_dot(GGMLType t, int64_t n, const void* w, const void* xq) {
  const int64_t nbk = n / kQK_K, nb0 = n / kQK;
  const auto* q8k = static_cast<const BlockQ8_K*>(xq);
  const auto* xf = static_cast<const float*>(xq);
  switch (t) {
    case GGMLType::F32: return float_dot(n, static_cast<const float*>(w), xf, LoadF32{}, ScalarF32{});
    case GGMLType::F16: return float_dot(n, static_cast<const uint16_t*>(w), xf, LoadF16{}, ScalarF16{});
    case GGMLType::BF16: return float_dot(n, static_cast<const uint16_t*>(w), xf, LoadBF16{}, ScalarBF16{});
    case GGMLType::Q8_0: return dot_q8_0(nb0, static_cast<const BlockQ8_0*>(w), static_cast<const BlockQ8_0*>(xq));
    case GGMLType::Q4_0: return dot_q4_0(nb0, static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(xq));
    case GGMLType::Q2_K: return k_dot(nbk, static_cast<const BlockQ2_K*>(w), q8k);
    case GGMLType::Q3_K: return k_dot(nbk, static_cast<const BlockQ3_K*>(w), q8k);
    case GGMLType::Q4_K: return dot_q4_K(nbk, static_cast<const BlockQ4_K*>(w), q8k);
    case GGMLType::Q5_K: return k_dot(nbk, static_cast<const BlockQ5_K*>(w), q8k);
    case GGMLType::Q6_K: return dot_q6_K(nbk, static_cast<const BlockQ6_K*>(w), q8k);
    default: fail(ExitCode::Runtime, "no dot kernel for {} weights", ggml_type_name(t));
  }
}

}  // namespace avx2
}  // namespace squish
