// AVX-512 VNNI dot kernels (avx512f/bw/vl/dq + avx512vnni; installed in the AVX-512 rows of the
// traits table, ggml_types.cpp). The K-quants run 64 weights per instruction: the levels of a 64-weight run are
// built in one register, `vpdpbusd` sums each 4 adjacent level x activation products into 16
// int32 lanes (exact), and the lanes are scaled by their group's float scale (d * sc) and
// accumulated in float. Q8_0 / Q4_0 use 256-bit VNNI per 32-weight block. Float results differ
// from the scalar reference only by summation order (quant_simd_test bounds it).
#include "core/quant/blocks.hpp"
#include "core/quant/type_table.hpp"
#include "core/quant/unpack_avx2.hpp"
#include "core/quant/vec_dot.hpp"

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#define SQUISH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace squish {
namespace {
using namespace quant;
using detail::k4_scales_mins;

SQUISH_AVX512 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
SQUISH_AVX512 inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
SQUISH_AVX512 inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
// A 32-byte run in both halves of a register (one broadcast load).
SQUISH_AVX512 inline __m512i load256x2(const void* p) { return _mm512_broadcast_i64x4(load256(p)); }
// Per-16-bit-lane shift counts: `lo` in the low 256 bits, `hi` in the high 256 bits.
SQUISH_AVX512 inline __m512i halves_epi16(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(static_cast<int16_t>(lo))), _mm256_set1_epi16(static_cast<int16_t>(hi)), 1);
}
// Lane k of the result = f[idx_k] for 16 float lanes.
SQUISH_AVX512 inline __m512 spread(__m512i idx, __m512 f) { return _mm512_permutexvar_ps(idx, f); }
SQUISH_AVX512 inline __m512 dp_ps(__m512i levels, const int8_t* q8) {
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), levels, load512(q8)));
}
SQUISH_AVX512 inline float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

// Index vectors sending 16 dpbusd lanes (4 products each) to their group's scale.
// Groups of 32 (Q4_K, Q5_K): run c covers groups 2c (lanes 0-7) and 2c+1 (lanes 8-15).
SQUISH_AVX512 inline __m512i idx_groups32(int c) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * c)), _mm256_set1_epi32(2 * c + 1), 1);
}
// Groups of 16 (Q2_K, Q3_K, Q6_K): run r covers groups 4r..4r+3, four lanes each.
SQUISH_AVX512 inline __m512i idx_groups16(int r) {
  return _mm512_add_epi32(_mm512_set1_epi32(4 * r), _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
}

// ---- groups of 16 ---------------------------------------------------------------------------

// Q6_K: levels 0..63 (4 bits in ql, 2 in qh), w = d * sc * (L - 32). Per 128 weights n:
// ql[64n..64n+63] low nibbles are weights 128n + 0..63 and high nibbles 128n + 64..127; qh
// byte l carries bits 4-5 of weights 128n + l (+0, +32, +64, +96) in bit pairs 0, 2, 4, 6.
SQUISH_AVX512 float dot_q6_K(int64_t nb, const BlockQ6_K* x, const BlockQ8_K* y) {
  const __m512i m4 = _mm512_set1_epi8(0xF), m30 = _mm512_set1_epi8(0x30);
  const __m512i sh_lo = halves_epi16(4, 2), sh_hi = halves_epi16(0, 2);  // qh bits to bits 4-5
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_off = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float d = y[i].d * h2f(x[i].d);
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
    const __m512 fs = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)));
    // the -32 of every level: 32 * d * sum_g sc[g] * bsums[g]
    const __m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(y[i].bsums));
    acc_off = _mm256_fmadd_ps(_mm256_set1_ps(32 * d), _mm256_cvtepi32_ps(off), acc_off);
    for (int n = 0; n < 2; ++n) {
      const __m512i q = load512(x[i].ql + 64 * n), h = load256x2(x[i].qh + 32 * n);
      // weights 128n + 0..63: low nibbles with qh bits 0-1 (first 32) and 2-3 (next 32)
      const __m512i L0 = _mm512_or_si512(_mm512_and_si512(q, m4), _mm512_and_si512(_mm512_sllv_epi16(h, sh_lo), m30));
      // weights 128n + 64..127: high nibbles with qh bits 4-5 and 6-7
      const __m512i L1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4), _mm512_and_si512(_mm512_srlv_epi16(h, sh_hi), m30));
      acc = _mm512_fmadd_ps(dp_ps(L0, y[i].qs + 128 * n), spread(idx_groups16(2 * n), fs), acc);
      acc = _mm512_fmadd_ps(dp_ps(L1, y[i].qs + 128 * n + 64), spread(idx_groups16(2 * n + 1), fs), acc);
    }
  }
  return _mm512_reduce_add_ps(acc) - hsum128(_mm_add_ps(_mm256_castps256_ps128(acc_off), _mm256_extractf128_ps(acc_off, 1)));
}

// Q3_K: levels 0..7 (2 bits in qs, the third in hmask), w = d * sc * (L - 4), sc 6-bit signed.
// Weight 128n + 32s + l: bits 2s..2s+1 of qs[32n + l], bit 4n+s of hmask[l].
SQUISH_AVX512 float dot_q3_K(int64_t nb, const BlockQ3_K* x, const BlockQ8_K* y) {
  const __m512i m3 = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_off = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float d = y[i].d * h2f(x[i].d);
    const __m128i sc8 = detail::q3_k_scales(x[i].scales);
    const __m512 fs = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)));
    const __m256i off = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(y[i].bsums));
    acc_off = _mm256_fmadd_ps(_mm256_set1_ps(4 * d), _mm256_cvtepi32_ps(off), acc_off);
    const __m512i h = load256x2(x[i].hmask);
    for (int n = 0; n < 2; ++n) {
      const __m512i q = load256x2(x[i].qs + 32 * n);
      for (int r = 0; r < 2; ++r) {  // s = 2r (low half), 2r+1 (high half)
        const int s = 2 * r;
        const __m512i low = _mm512_and_si512(_mm512_srlv_epi16(q, halves_epi16(2 * s, 2 * s + 2)), m3);
        const __m512i hbit = _mm512_srlv_epi16(h, halves_epi16(4 * n + s, 4 * n + s + 1));
        const __m512i L = _mm512_mask_add_epi8(low, _mm512_test_epi8_mask(hbit, _mm512_set1_epi8(1)), low, four);
        acc = _mm512_fmadd_ps(dp_ps(L, y[i].qs + 128 * n + 64 * r), spread(idx_groups16(2 * n + r), fs), acc);
      }
    }
  }
  return _mm512_reduce_add_ps(acc) - hsum128(_mm_add_ps(_mm256_castps256_ps128(acc_off), _mm256_extractf128_ps(acc_off, 1)));
}

// Q2_K: levels 0..3, w = d * sc * L - dmin * m (sc, m 4 bits). Layout of the levels as Q3_K's.
SQUISH_AVX512 float dot_q2_K(int64_t nb, const BlockQ2_K* x, const BlockQ8_K* y) {
  const __m512i m3 = _mm512_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0xF);
  __m512 acc = _mm512_setzero_ps();
  __m256 acc_m = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float dy = y[i].d;
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].scales));
    const __m512 fs = _mm512_mul_ps(_mm512_set1_ps(dy * h2f(x[i].d)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, m4))));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
    acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dy * h2f(x[i].dmin)), _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, load256(y[i].bsums))), acc_m);
    for (int n = 0; n < 2; ++n) {
      const __m512i q = load256x2(x[i].qs + 32 * n);
      for (int r = 0; r < 2; ++r) {
        const __m512i L = _mm512_and_si512(_mm512_srlv_epi16(q, halves_epi16(4 * r, 4 * r + 2)), m3);
        acc = _mm512_fmadd_ps(dp_ps(L, y[i].qs + 128 * n + 64 * r), spread(idx_groups16(2 * n + r), fs), acc);
      }
    }
  }
  return _mm512_reduce_add_ps(acc) - hsum128(_mm_add_ps(_mm256_castps256_ps128(acc_m), _mm256_extractf128_ps(acc_m, 1)));
}

// ---- groups of 32 ---------------------------------------------------------------------------

// w = d * sc * L - dmin * m; `levels(block, c)` gives run c's 64 levels: group 2c in the low
// 256 bits, group 2c+1 in the high 256 bits (the low and high nibbles of qs[32c..32c+31]).
template <class Block, class Levels>
SQUISH_AVX512 inline float k4_dot(int64_t nb, const Block* x, const BlockQ8_K* y, Levels levels) {
  __m512 acc = _mm512_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    uint32_t sc4[2], mn4[2];
    k4_scales_mins(x[i].scales, sc4, mn4);
    const float dy = y[i].d;
    // mins: sum_j m[j] * (bsums[2j] + bsums[2j+1])
    const __m256i bs = load256(y[i].bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn4)));
    acc_m = _mm_fmadd_ps(_mm_set1_ps(dy * h2f(x[i].dmin)), _mm_cvtepi32_ps(_mm_madd_epi16(mins, pairs)), acc_m);
    const __m512 fs = _mm512_mul_ps(_mm512_set1_ps(dy * h2f(x[i].d)),
                                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc4)))));
    for (int c = 0; c < 4; ++c) acc = _mm512_fmadd_ps(dp_ps(levels(x[i], c), y[i].qs + 64 * c), spread(idx_groups32(c), fs), acc);
  }
  return _mm512_reduce_add_ps(acc) - hsum128(acc_m);
}

SQUISH_AVX512 float dot_q4_K(int64_t nb, const BlockQ4_K* x, const BlockQ8_K* y) {
  const __m512i m4 = _mm512_set1_epi8(0xF), nibble = halves_epi16(0, 4);
  return k4_dot(nb, x, y, [&](const BlockQ4_K& b, int c) SQUISH_AVX512 {
    return _mm512_and_si512(_mm512_srlv_epi16(load256x2(b.qs + 32 * c), nibble), m4);
  });
}

// Q5_K: the 5th bit of weight 64c + l is bit 2c of qh[l], that of 64c + 32 + l bit 2c + 1.
SQUISH_AVX512 float dot_q5_K(int64_t nb, const BlockQ5_K* x, const BlockQ8_K* y) {
  const __m512i m4 = _mm512_set1_epi8(0xF), nibble = halves_epi16(0, 4), one = _mm512_set1_epi8(1), bit4 = _mm512_set1_epi8(0x10);
  return k4_dot(nb, x, y, [&](const BlockQ5_K& b, int c) SQUISH_AVX512 {
    const __m512i L = _mm512_and_si512(_mm512_srlv_epi16(load256x2(b.qs + 32 * c), nibble), m4);
    const __mmask64 high = _mm512_test_epi8_mask(_mm512_srlv_epi16(load256x2(b.qh), halves_epi16(2 * c, 2 * c + 1)), one);
    return _mm512_mask_add_epi8(L, high, L, bit4);
  });
}

// ---- 32-weight blocks (Q8_0 activations) ----------------------------------------------------
// Eight blocks at a time: the eight integer dots are reduced together into one vector of block
// sums, and the 2 x 8 fp16 block scales are gathered and converted together (a scalar scale
// conversion per block costs as much as the block's dot).

// Signed x signed bytes with unsigned x signed VNNI: |x| * (y with x's sign), 8 int32 lanes.
SQUISH_AVX512 inline __m256i dot_i8(__m256i x, __m256i y) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// Lane k of the result = the sum of the 8 lanes of v[k].
SQUISH_AVX512 inline __m256i hsum8_i32(const __m256i v[8]) {
  const __m256i ab = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i cd = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

// The fp16 scale `d` (the first member) of 8 consecutive blocks of `Block`, as floats.
template <class Block>
SQUISH_AVX512 inline __m256 scales8(const Block* b) {
  static_assert(offsetof(Block, d) == 0);
  const __m256i offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(sizeof(Block)));
  // Each gathered dword holds the scale in its low half (and the next bytes above it).
  return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_i32gather_epi32(reinterpret_cast<const int*>(b), offsets, 1)));
}

template <class Block, class Levels>
SQUISH_AVX512 inline float q8_dot(int64_t nb, const Block* x, const BlockQ8_0* y, Levels levels) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    __m256i p[8];
    for (int k = 0; k < 8; ++k) p[k] = dot_i8(levels(x[i + k]), load256(y[i + k].qs));
    acc = _mm256_fmadd_ps(_mm256_mul_ps(scales8(x + i), scales8(y + i)), _mm256_cvtepi32_ps(hsum8_i32(p)), acc);
  }
  for (; i < nb; ++i) {
    const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(levels(x[i]), load256(y[i].qs))), acc);
  }
  return hsum128(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

SQUISH_AVX512 float dot_q8_0(int64_t nb, const BlockQ8_0* x, const BlockQ8_0* y) {
  // [&], not []: a lambda without captures also converts to a plain function pointer, and that
  // function would return an AVX vector without AVX enabled (GCC's -Wpsabi).
  return q8_dot(nb, x, y, [&](const BlockQ8_0& b) SQUISH_AVX512 { return load256(b.qs); });
}

SQUISH_AVX512 float dot_q4_0(int64_t nb, const BlockQ4_0* x, const BlockQ8_0* y) {
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m256i eight = _mm256_set1_epi8(8);
  return q8_dot(nb, x, y, [&](const BlockQ4_0& b) SQUISH_AVX512 {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    return _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4)), eight);
  });
}

}  // namespace

// Float weights keep the AVX2 kernels.
void quant::table::install_avx512_dots(Rows& rows) {
  row(rows, GGMLType::Q8_0).vec_dot = vec_dot<dot_q8_0>;
  row(rows, GGMLType::Q4_0).vec_dot = vec_dot<dot_q4_0>;
  row(rows, GGMLType::Q2_K).vec_dot = vec_dot<dot_q2_K>;
  row(rows, GGMLType::Q3_K).vec_dot = vec_dot<dot_q3_K>;
  row(rows, GGMLType::Q4_K).vec_dot = vec_dot<dot_q4_K>;
  row(rows, GGMLType::Q5_K).vec_dot = vec_dot<dot_q5_K>;
  row(rows, GGMLType::Q6_K).vec_dot = vec_dot<dot_q6_K>;
}

}  // namespace squish
