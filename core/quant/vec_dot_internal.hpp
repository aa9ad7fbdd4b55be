#pragma once
// Pieces shared by the scalar and AVX2 dot kernels (see vec_dot.hpp).
#include "core/quant/blocks.hpp"
#include "core/base/tensor.hpp"

#include <cmath>
#include <cstdint>

namespace squish::quant::detail {

// A K-quant block unpacked for an integer dot: w = sc[g] * (L - offset) - m[g], over 16-element
// groups g (mins only for Q2_K/Q4_K/Q5_K). With Q8_K activations y = d * q this turns into
//   isum  = sum_g sc[g] * (sum L*q) - offset * sum_g sc[g] * bsums[g]
//   summs = sum_g m[g] * bsums[g]
struct KInts {
  alignas(32) uint8_t L[kQK_K];
  alignas(32) int16_t sc[16];
  alignas(32) int16_t m[16];
};

// Group scales and mins of a Q4_K/Q5_K block, each repeated for its two 16-element halves.
inline void k4_group_scales(const uint8_t* packed, KInts& k) {
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    get_scale_min_k4(j, packed, sc, m);
    k.sc[2 * j] = k.sc[2 * j + 1] = sc;
    k.m[2 * j] = k.m[2 * j + 1] = m;
  }
}

inline int32_t offset_bsum_term(const KInts& k, const BlockQ8_K& y) {
  int32_t s = 0;
  for (int g = 0; g < 16; ++g) s += k.sc[g] * y.bsums[g];
  return s;
}
inline int32_t min_bsum_term(const KInts& k, const BlockQ8_K& y) {
  int32_t s = 0;
  for (int g = 0; g < 16; ++g) s += k.m[g] * y.bsums[g];
  return s;
}

// Q8_K quantization of activations (ggml's quantize_row_q8_K_ref): 256 values scaled so the one
// of largest magnitude maps to -127, with 16-element sums for the min terms.
inline void finish_q8_K_block(BlockQ8_K& y) {
  for (int j = 0; j < 16; ++j) {
    int sum = 0;
    for (int ii = 0; ii < 16; ++ii) sum += y.qs[16 * j + ii];
    y.bsums[j] = static_cast<int16_t>(sum);
  }
}

}  // namespace squish::quant::detail
