#pragma once
// On-disk block layouts of the ggml quant types Squish reads and writes (ggml-common.h).
// Each struct is exactly the bytes of one block in a GGUF tensor; f16 fields are raw bits.
// kElems is the block's element count: the traits table (ggml_types.cpp) takes every type's
// block size and bytes (sizeof) from here, and its scales' byte offsets (offsetof).
#include "core/quant/ggml_types.hpp"

#include <bit>
#include <cstdint>
#include <cstring>

namespace squish::quant {

struct BlockQ4_0 {   // 32 weights: w = d * (q - 8)
  static constexpr int kElems = kQK;
  uint16_t d;
  uint8_t qs[kQK / 2];  // low nibbles = weights 0..15, high nibbles = 16..31
};
struct BlockQ8_0 {   // 32 weights: w = d * q
  static constexpr int kElems = kQK;
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4_1 {   // 32 weights: w = d * q + m (read only: Squish neither writes nor runs it)
  static constexpr int kElems = kQK;
  uint16_t d, m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {   // 32 weights: w = d * (q - 16), 5th bits in qh (read only)
  static constexpr int kElems = kQK;
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {   // 32 weights: w = d * q + m, 5th bits in qh (read only)
  static constexpr int kElems = kQK;
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_1 {   // 32 activations: x = d * q, s = d * sum(q) (read only)
  static constexpr int kElems = kQK;
  uint16_t d, s;
  int8_t qs[kQK];
};
struct BlockQ2_K {   // 16 groups of 16: w = d*sc*q - dmin*m, sc/m 4 bits, q 2 bits
  static constexpr int kElems = kQK_K;
  uint8_t scales[kQK_K / 16];  // low nibble scale, high nibble min
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};
struct BlockQ3_K {   // 16 groups of 16: w = d*(sc-32)*(q-4), sc 6 bits, q 3 bits (2 low + 1 in hmask)
  static constexpr int kElems = kQK_K;
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  uint16_t d;
};
struct BlockQ4_K {   // 8 groups of 32: w = d*sc*q - dmin*m, sc/m 6 bits packed in 12 bytes, q 4 bits
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQK_K / 2];
};
struct BlockQ5_K {   // as Q4_K with a 5th bit per weight in qh
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
struct BlockQ6_K {   // 16 groups of 16: w = d*sc*(q-32), sc int8, q 6 bits (4 in ql + 2 in qh)
  static constexpr int kElems = kQK_K;
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
struct BlockQ8_K {   // activations for K-quant dots: x = d * q, with 16-element partial sums
  static constexpr int kElems = kQK_K;
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

// llama.cpp's 4-bit non-linear types (i-quants): each weight is a 4-bit index into the 16
// levels below (denser near zero, as the weights are), times the block's scale.
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
struct BlockIQ4_NL {  // 32 weights: w = d * values[q], low nibbles = weights 0..15, high = 16..31
  static constexpr int kElems = kQK;
  uint16_t d;
  uint8_t qs[kQK / 2];
};
struct BlockIQ4_XS {  // 8 groups of 32: w = d * (ls - 32) * values[q], ls 6 bits (4 in scales_l, 2 in scales_h)
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint16_t scales_h;             // group g's top 2 bits at bit 2g
  uint8_t scales_l[kQK_K / 64];  // group g's low 4 bits: low nibble of byte g/2 for even g, high for odd
  uint8_t qs[kQK_K / 2];         // per group 16 bytes: low nibbles weights 0..15, high 16..31
};

// Group g's 6-bit scale (0..63; the multiplier is ls - 32) of an IQ4_XS block.
inline int iq4_xs_scale(const BlockIQ4_XS& b, int g) {
  return ((b.scales_l[g / 2] >> (4 * (g % 2))) & 0xF) | (((b.scales_h >> (2 * g)) & 3) << 4);
}

// llama.cpp's 3-bit i-quants: weights in groups of 4 (a point of a grid on the D4 lattice,
// iq_grids.hpp) with their signs stored apart, under a 4-bit scale per group of 32.
struct BlockIQ3_XXS {  // 8 groups of 32: w = d * (2s + 1) / 4 * grid[q] * sign
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint8_t qs[kQK_K / 4];      // per group 8 indexes into the 256-point grid
  uint8_t signs_scales[32];   // per group a uint32: 4 x 7 sign bits (kIQEvenSigns), the scale s in bits 28..31
};
struct BlockIQ3_S {  // 8 groups of 32: w = d * (2s + 1) * grid[q] * sign
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint8_t qs[kQK_K / 4];      // per group 8 indexes into the 512-point grid, low 8 bits
  uint8_t qh[kQK_K / 32];     // per group the 8 indexes' 9th bits
  uint8_t signs[kQK_K / 8];   // one bit per weight
  uint8_t scales[kQK_K / 64]; // group g's s in nibble g % 2 of byte g / 2
};

// llama.cpp's 2-bit i-quants: points of 8 weights on an E8-lattice grid, signs apart, 4-bit scales.
struct BlockIQ2_XXS {  // 8 groups of 32: w = d * (2s + 1) / 8 * grid[q] * sign
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint8_t qs[kQK_K / 4];  // per group two uint32: 4 indexes (bytes) into the 256-point grid; 4 x 7 sign bits, s in bits 28..31
};
struct BlockIQ2_XS {  // 16 groups of 16: w = d * (2s + 1) / 8 * grid[q] * sign
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint16_t qs[kQK_K / 8];     // per 8 weights: 9-bit index into the 512-point grid | 7 sign bits << 9
  uint8_t scales[kQK_K / 32]; // group g's s in nibble g % 2 of byte g / 2
};
struct BlockIQ2_S {  // 16 groups of 16: w = d * (2s + 1) / 8 * grid[q] * sign
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint8_t qs[kQK_K / 4];      // 32 indexes' low 8 bits (1024-point grid), then 32 sign bytes
  uint8_t qh[kQK_K / 32];     // the indexes' top 2 bits, 4 per byte
  uint8_t scales[kQK_K / 32]; // group g's s in nibble g % 2 of byte g / 2
};

// llama.cpp's 1-bit i-quants: points of 8 weights in {-1, 0, 1} (a 2048-point grid), shifted by
// +-1/8, under 3-bit odd scales.
inline constexpr float kIQ1Delta = 0.125f;
struct BlockIQ1_S {  // 8 groups of 32: w = d * (2s + 1) * (grid[q] + shift)
  static constexpr int kElems = kQK_K;
  uint16_t d;
  uint8_t qs[kQK_K / 8];    // the 32 indexes' low 8 bits
  uint16_t qh[kQK_K / 32];  // per group: 4 x 3 top index bits, s in bits 12..14, shift -1/8 if bit 15
};
struct BlockIQ1_M {  // 16 groups of 16: w = d * (2s + 1) * (grid[q] + shift), d an fp16 spread over scales
  static constexpr int kElems = kQK_K;
  uint8_t qs[kQK_K / 8];      // the 32 indexes' low 8 bits
  uint8_t qh[kQK_K / 16];     // per 16 weights: 2 x (3 top index bits, shift -1/8 if the 4th)
  uint8_t scales[kQK_K / 32]; // 4 uint16: 4 x 3-bit s each, and 4 bits of d's fp16 on top
};
// d of an IQ1_M block: the fp16 whose 4 nibbles are the top nibbles of the 4 scale words.
inline uint16_t iq1_m_d(const BlockIQ1_M& b) {
  uint16_t sc[4];
  std::memcpy(sc, b.scales, sizeof(sc));
  return static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
}

static_assert(sizeof(BlockIQ4_NL) == 18 && sizeof(BlockIQ4_XS) == 136);
static_assert(sizeof(BlockIQ3_XXS) == 98 && sizeof(BlockIQ3_S) == 110);
static_assert(sizeof(BlockIQ1_S) == 50 && sizeof(BlockIQ1_M) == 56);
static_assert(sizeof(BlockIQ2_XXS) == 66 && sizeof(BlockIQ2_XS) == 74 && sizeof(BlockIQ2_S) == 82);
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// ggml's round-to-nearest for |x| <= 2^22: adding 1.5*2^23 puts the integer in the low mantissa
// bits (the FPU rounds half to even), and the bias is subtracted back. Quantizers must use exactly
// this (not lrintf/roundf) to reproduce ggml's bytes for every input, including out-of-range ones.
inline int nearest_int(float f) {
  const float v = f + 12582912.f;
  const int32_t i = std::bit_cast<int32_t>(v);
  return (i & 0x007fffff) - 0x00400000;
}

// The 6-bit scale and min of group j (0..7) of a Q4_K/Q5_K block: groups 0..3 keep 6 bits in
// bytes 0..7; groups 4..7 keep 4 bits in bytes 8..11 and their top 2 bits in the spare top bits
// of bytes 0..7.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The 16 signed 6-bit scales of a Q3_K block (already minus 32). Scale j has its low 4 bits in
// the low (j < 8) or high nibble of byte j % 8 and its high 2 bits at bit 2 * (j / 4) of byte
// 8 + j % 4; four scales per 32-bit word at once (this is on the dot kernels' hot path).
inline void unpack_q3_k_scales(const uint8_t* packed, int8_t out[16]) {
  uint32_t a[3], u[4];
  std::memcpy(a, packed, sizeof(a));
  constexpr uint32_t low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
  u[0] = (a[0] & low4) | ((a[2] & low2) << 4);
  u[1] = (a[1] & low4) | (((a[2] >> 2) & low2) << 4);
  u[2] = ((a[0] >> 4) & low4) | (((a[2] >> 4) & low2) << 4);
  u[3] = ((a[1] >> 4) & low4) | (((a[2] >> 6) & low2) << 4);
  // Each byte minus 32 without borrows between bytes: with the top bit set first no byte goes
  // below zero, and flipping it back leaves (b - 32) mod 256.
  for (uint32_t& w : u) w = ((w | 0x80808080u) - 0x20202020u) ^ 0x80808080u;
  std::memcpy(out, u, sizeof(u));
}

}  // namespace squish::quant
