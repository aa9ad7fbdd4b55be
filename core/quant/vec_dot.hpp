#pragma once
// Dot products of a quantized weight row with an activation vector, as llama.cpp's
// ggml_vec_dot_*: the activations are quantized once per vector to the weight type's "dot type"
// (Q8_0 for Q8_0/Q4_0 weights, Q8_K for the K-quants, kept F32 for F32/F16/BF16 weights), then
// each block is an integer dot product scaled by the block's float factors.
//
// The SIMD paths (AVX2, AVX-512 VNNI; chosen at run time, see simd_level()) compute the same
// exact per-block integer sums as the scalar reference and accumulate the scaled blocks in float
// vectors: their results differ from the reference's only by float summation order. The float
// weights' AVX2 dots emulate the reference's 32-lane FMA order exactly.
//
// Every function here calls the weight type's row of the traits table (ggml_types.hpp), built in
// or a plugin's; the row of another SIMD level: ggml_type_traits(type, level).
#include "core/quant/ggml_types.hpp"

#include <cstddef>
#include <cstdint>

namespace squish {

// Type the activations are quantized to for a dot with `weight_type` (F32 for float weights).
// Throws for weight types without a dot kernel.
GGMLType vec_dot_type(GGMLType weight_type);
// Bytes of an activation vector of n values prepared for `weight_type`.
size_t activation_row_size(GGMLType weight_type, int64_t n);
// Prepares n activations for dots with `weight_type` rows (xq: activation_row_size bytes).
void quantize_activations(GGMLType weight_type, const float* x, void* xq, int64_t n);
// sum_i w[i] * x[i] over one weight row of n values (ggml_row_size(weight_type, n) bytes).
float vec_dot(GGMLType weight_type, int64_t n, const void* wrow, const void* xq);
// out[r] = vec_dot(row r) for `rows` consecutive rows of n values.
void matvec(GGMLType weight_type, int64_t rows, int64_t n, const void* w, const void* xq, float* out);

namespace ref {  // the scalar references (ggml_type_traits(type, SimdLevel::Scalar))
void quantize_activations(GGMLType weight_type, const float* x, void* xq, int64_t n);
float vec_dot(GGMLType weight_type, int64_t n, const void* wrow, const void* xq);
}  // namespace ref

}  // namespace squish
