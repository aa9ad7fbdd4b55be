#pragma once
// Squish's quantizers for ggml types: F32, F16, BF16, Q8_0, Q4_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//
// Without an importance matrix the output is byte-identical to stock llama.cpp's reference
// quantizers (ggml-quants.c *_ref, which llama-quantize uses when it has no imatrix): same
// algorithms, same float evaluation order, ggml's nearest_int and RNE fp16 rounding. Only this
// unweighted path is byte-matched (tests/quant_reference_test.cpp checks it against GGUFs from
// llama.cpp). With an importance matrix (`imatrix`: one non-negative weight per input column,
// e.g. the mean squared activation seen by that column) the quantizers minimise the
// importance-weighted squared error, following ggml's quantize_row_*_impl algorithms; Q8_0 and
// the float types ignore it, as in ggml.
//
// Each quantizer has a scalar reference and, where it pays, an AVX2 path; both give identical
// bytes. Every function here calls the type's row of the traits table (ggml_types.hpp), whose
// kernels are those of simd_level(); ggml_type_traits(type, SimdLevel::Scalar) gives the
// references (namespace ref below). Build without -ffast-math / FMA contraction.
#include "core/base/simd.hpp"
#include "core/quant/ggml_types.hpp"

#include <cstddef>
#include <cstdint>

namespace squish {

// True for the types quantize_rows handles (dequantize_row handles them too, and Q8_K).
bool quantize_supported(GGMLType type);

// Quantizes nrows rows of n_per_row floats into dst (ggml_row_size(type, n_per_row) bytes per
// row). n_per_row must be a multiple of the type's block size. imatrix: optional per-column
// importance (n_per_row values) -> importance-weighted quantization. Single-threaded and
// reentrant: callers parallelise by giving threads disjoint row ranges.
void quantize_rows(GGMLType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row,
                   const float* imatrix = nullptr);

// Dequantizes n values (a multiple of the block size) of `type` into floats.
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n);

// Whether the AVX2 paths are in use (simd_level() >= Avx2).
bool quant_simd_enabled();

namespace ref {
// Scalar references: the definition of the bytes. quantize_row handles one row (imatrix as above).
void quantize_row(GGMLType type, const float* src, void* dst, int64_t n, const float* imatrix = nullptr);
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n);
}  // namespace ref

}  // namespace squish
