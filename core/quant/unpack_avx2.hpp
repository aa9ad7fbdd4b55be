#pragma once
// AVX2 unpacking of K-quant blocks into KInts (levels + group scales), shared by the AVX2 dot
// kernels and dequantizers. Only include from files whose callers check quant_simd_enabled().
#include "core/quant/vec_dot_internal.hpp"

#include <immintrin.h>

#include <cstring>

#define SQUISH_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace squish::quant::detail {

// ---- K-quant unpacking ---------------------------------------------------------------------------

SQUISH_AVX2 inline void store(uint8_t* p, __m256i v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
SQUISH_AVX2 inline __m256i load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// The 16 scales of a Q3_K block minus 32 as int8 lanes (unpack_q3_k_scales in registers): low
// nibbles of bytes 0-7 then their high nibbles, each joined with 2 bits of byte 8 + j % 4
// taken at bit 2 * (j / 4).
SQUISH_AVX2 inline __m128i q3_k_scales(const uint8_t* packed) {
  uint64_t lo8;
  uint32_t hi4;
  std::memcpy(&lo8, packed, 8);
  std::memcpy(&hi4, packed + 8, 4);
  const __m128i m4 = _mm_set1_epi8(0xF), m3 = _mm_set1_epi8(3);
  const __m128i x = _mm_cvtsi64_si128(static_cast<long long>(lo8));
  const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(x, m4), _mm_and_si128(_mm_srli_epi16(x, 4), m4));
  const __m128i h = _mm_set1_epi32(static_cast<int>(hi4));
  const __m128i high = _mm_and_si128(_mm_unpacklo_epi64(_mm_unpacklo_epi32(h, _mm_srli_epi16(h, 2)),
                                                        _mm_unpacklo_epi32(_mm_srli_epi16(h, 4), _mm_srli_epi16(h, 6))), m3);
  return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32));
}

// Byte mask: bit `bit` of each byte of v set -> `val`, else 0.
SQUISH_AVX2 inline __m256i bit_to(__m256i v, int bit, int val) {
  const __m256i b = _mm256_set1_epi8(static_cast<char>(1 << bit));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, b), b), _mm256_set1_epi8(static_cast<char>(val)));
}

SQUISH_AVX2 inline void unpack(const BlockQ2_K& b, KInts& k) {
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int n = 0; n < 2; ++n) {
    const __m256i v = load(b.qs + 32 * n);
    for (int s = 0; s < 4; ++s) store(k.L + 128 * n + 32 * s, _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3));
  }
  for (int g = 0; g < 16; ++g) {
    k.sc[g] = b.scales[g] & 0xF;
    k.m[g] = b.scales[g] >> 4;
  }
}

SQUISH_AVX2 inline void unpack(const BlockQ3_K& b, KInts& k) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i h = load(b.hmask);
  for (int n = 0; n < 2; ++n) {
    const __m256i v = load(b.qs + 32 * n);
    for (int s = 0; s < 4; ++s) {
      const __m256i low = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), m3);
      store(k.L + 128 * n + 32 * s, _mm256_or_si256(low, bit_to(h, 4 * n + s, 4)));
    }
  }
  int8_t sc[16];
  unpack_q3_k_scales(b.scales, sc);
  for (int g = 0; g < 16; ++g) k.sc[g] = sc[g];
}

SQUISH_AVX2 inline void unpack(const BlockQ4_K& b, KInts& k) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  for (int c = 0; c < 4; ++c) {
    const __m256i v = load(b.qs + 32 * c);
    store(k.L + 64 * c, _mm256_and_si256(v, m4));
    store(k.L + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
  }
  k4_group_scales(b.scales, k);
}

SQUISH_AVX2 inline void unpack(const BlockQ5_K& b, KInts& k) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i h = load(b.qh);
  for (int c = 0; c < 4; ++c) {
    const __m256i v = load(b.qs + 32 * c);
    store(k.L + 64 * c, _mm256_or_si256(_mm256_and_si256(v, m4), bit_to(h, 2 * c, 16)));
    store(k.L + 64 * c + 32, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), bit_to(h, 2 * c + 1, 16)));
  }
  k4_group_scales(b.scales, k);
}

SQUISH_AVX2 inline void unpack(const BlockQ6_K& b, KInts& k) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
  for (int n = 0; n < 2; ++n) {
    const __m256i q0 = load(b.ql + 64 * n), q1 = load(b.ql + 64 * n + 32), h = load(b.qh + 32 * n);
    uint8_t* L = k.L + 128 * n;
    store(L, _mm256_or_si256(_mm256_and_si256(q0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)));
    store(L + 32, _mm256_or_si256(_mm256_and_si256(q1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)));
    store(L + 64, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), m4), _mm256_and_si256(h, m30)));
    store(L + 96, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m4),
                                  _mm256_and_si256(_mm256_srli_epi16(h, 2), m30)));
  }
  for (int g = 0; g < 16; ++g) k.sc[g] = b.scales[g];
}

// Q4_K, Q5_K: 8 groups of 32 with 6-bit scales and mins packed in 12 bytes (get_scale_min_k4):
// bytes 0-3 hold sc[0..3] and bits 4-5 of sc[4..7], bytes 4-7 the same for the mins, bytes
// 8-11 the low nibbles of sc[4..7] (low) and m[4..7] (high). Out: sc[0..7] and m[0..7] bytes.
inline void k4_scales_mins(const uint8_t* packed, uint32_t sc[2], uint32_t mn[2]) {
  uint32_t a[3];
  std::memcpy(a, packed, sizeof(a));
  sc[0] = a[0] & 0x3f3f3f3fu;
  sc[1] = (a[2] & 0x0f0f0f0fu) | ((a[0] >> 2) & 0x30303030u);
  mn[0] = a[1] & 0x3f3f3f3fu;
  mn[1] = ((a[2] >> 4) & 0x0f0f0f0fu) | ((a[1] >> 2) & 0x30303030u);
}

}  // namespace squish::quant::detail
