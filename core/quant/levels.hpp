#pragma once
// A quantized block seen as a grid per weight: w_e = step_e * (level_e - zero) - min_e, with
// integer levels in [0, level_max]. Every ggml type Squish quantizes is affine in its integer
// per weight once its (super-)block scales are fixed, so an error-compensating quantizer
// (GPTQ) can let ggml's scale search pick the scales, then choose each weight's level itself
// and re-encode the block with the same scales.
//
//   Q8_0  step d,        zero 127, levels 0..254 (int8 -127..127: ggml's dot products take |q|)
//   Q4_0  step d,        zero 8,   levels 0..15
//   Q2_K  step d*sc,     min dmin*m, levels 0..3
//   Q3_K  step d*(sc-32), zero 4,  levels 0..7 (2 low bits in qs + 1 in hmask)
//   Q4_K  step d*sc,     min dmin*m, levels 0..15
//   Q5_K  step d*sc,     min dmin*m, levels 0..31 (4 bits in qs + 1 in qh)
//   Q6_K  step d*sc,     zero 32,  levels 0..63 (4 bits in ql + 2 in qh)
//
// The non-uniform 4-bit i-quants are the same with a level table instead of the affine map:
//
//   IQ4_NL  step d,          level l stands for step * kIQ4NLValues[l], levels 0..15
//   IQ4_XS  step d*(ls-32),  the same table
#include "core/quant/ggml_types.hpp"

#include <cstdint>

namespace squish::quant {

struct Grid {
  float step[256];  // per weight of the block (block_size entries used)
  float min[256];
  int zero = 0;
  int level_max = 0;
  const int8_t* table = nullptr;  // non-uniform levels: level l stands for step * table[l]
  // The value a level stands for, with the dequantizer's arithmetic.
  float value(int e, int level) const {
    return table ? step[e] * static_cast<float>(table[level]) : step[e] * static_cast<float>(level - zero) - min[e];
  }
  // The level nearest to w (clamped to the range).
  int nearest(int e, float w) const;
};

// True for the types above (Q8_0, Q4_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS).
bool has_levels(GGMLType type);
// The grid and the levels of one block of `type` (block_size weights).
void read_levels(GGMLType type, const void* block, Grid& grid, uint8_t* levels);
// Writes `levels` into the block, keeping its scales (the bytes read_levels read them from).
void write_levels(GGMLType type, void* block, const uint8_t* levels);

}  // namespace squish::quant
