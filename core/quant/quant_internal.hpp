#pragma once
// Internal building blocks shared by the scalar reference and the AVX2 quantizers. Each K-quant
// block is made in two steps: a per-group search for scales (and mins), which the AVX2 path runs
// 8 groups at a time, then a "finish" step that quantizes the scales, re-quantizes the weights
// with the rounded scales and packs the bits. Both paths share the finish step.
#include "core/quant/blocks.hpp"

#include <cstdint>

namespace squish::quant::detail {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: a group below this is all zero

// Symmetric quantization of n values to [-nmax, nmax-1] minimising sum w*(x - s*l)^2, w = qw or
// x^2 (ggml's make_qx_quants with rmse_type 1). L gets l + nmax; returns the scale.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw);
// Symmetric search with coordinate-descent refinement (ggml's make_q3_quants, do_rmse = true).
float make_q3_quants(int n, int nmax, const float* x, int8_t* L);
// Asymmetric quantization x ~ scale*l - the_min, l in [0, nmax], minimising the weighted absolute
// (use_mad) or squared error over nstep+1 trial scales (ggml's make_qkx2_quants / make_qkx3_quants,
// which agree when weights are given).
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                      uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad);
// Quantization of non-negative values (scales or mins of the groups) to [0, nmax] with weights
// (ggml's make_qp_quants).
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* qw);

// Finish steps of the unweighted (reference) quantizers. x: the 256 weights of the block;
// scales/mins: per-group results of the search; L: the search's levels (kept for groups whose
// rounded scale is zero, as ggml does).
void finish_q2_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ2_K* y);
void finish_q3_K(const float* x, const float* scales, int8_t* L, BlockQ3_K* y);
void finish_q4_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ4_K* y);
void finish_q5_K(const float* x, const float* scales, const float* mins, uint8_t* L, BlockQ5_K* y);
void finish_q6_K(const float* x, const float* scales, int8_t* L, BlockQ6_K* y);

// Finish steps of the importance-weighted quantizers; sw: each group's total weight.
void finish_q2_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ2_K* y);
void finish_q3_K_weighted(const float* x, const float* scales, const float* sw, int8_t* L, BlockQ3_K* y);
void finish_q4_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ4_K* y);
void finish_q5_K_weighted(const float* x, const float* scales, const float* mins, const float* sw, uint8_t* L,
                          BlockQ5_K* y);
// Importance-weighted Q4_0 over n values (the AVX2 path has no vector version of it).
void quantize_q4_0_weighted(const float* x, BlockQ4_0* y, int64_t n, const float* qw);
// mult * mean square of a 256-value block (the weighted quantizers' sigma^2).
float block_sigma2(const float* x, float mult);

// Bit packing shared by both paths.
void pack_q2_K_levels(const uint8_t* L, uint8_t* qs);                       // 256 levels 0..3
void pack_q3_K_levels(uint8_t* L, uint8_t* hmask, uint8_t* qs);             // 256 levels 0..7
void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* scales);  // 8+8 6-bit values
void pack_q3_K_scales(const int8_t* ls, uint8_t* scales);                    // 16 values 0..63

}  // namespace squish::quant::detail
