#pragma once
// Building the traits table (GGMLTypeTraits, ggml_types.hpp): one row per built-in type and SIMD
// level. ggml_types.cpp describes each type (layout from blocks.hpp) and then lets the kernel
// files install their kernels, the scalar references first and each SIMD level over them, so a
// type without a kernel at some level keeps the one below. Internal to core/quant.
//
// Kernels are written per block type (`F(x, y, nb, ...)` over nb blocks); the adaptors below
// turn them into the rows' row-level, ABI-shaped entries with no dispatch of their own.
#include "core/quant/ggml_types.hpp"

#include <array>
#include <cstddef>
#include <cstdint>

namespace squish::quant::table {

inline constexpr uint32_t kBuiltinIds = 31;  // ggml ids 0..30 (BF16 = 30); holes have no name
using Rows = std::array<GGMLTypeTraits, kBuiltinIds>;

inline GGMLTypeTraits& row(Rows& rows, GGMLType t) { return rows[static_cast<uint32_t>(t)]; }
inline const GGMLTypeTraits& row_of(void* self) { return *static_cast<const GGMLTypeTraits*>(self); }

// Elements per block of a block struct (blocks.hpp) or of an element type (float for F32, ...).
template <class B>
constexpr int elems() {
  if constexpr (requires { B::kElems; }) return B::kElems;
  else return 1;
}

// ---- kernel signatures, per role ----------------------------------------------------------------
template <class Fn> struct Quantizer;    // void F(const float* x, B* y, int64_t nb, const float* importance)
template <class B> struct Quantizer<void (*)(const float*, B*, int64_t, const float*)> { using Block = B; };
template <class Fn> struct Dequantizer;  // void F(const B* x, float* y, int64_t nb)
template <class B> struct Dequantizer<void (*)(const B*, float*, int64_t)> { using Block = B; };
template <class Fn> struct FromFloat;    // void F(const float* x, B* y, int64_t nb)
template <class B> struct FromFloat<void (*)(const float*, B*, int64_t)> { using Block = B; };
template <class Fn> struct Dot;          // float F(int64_t nb, const W* w, const A* xa)
template <class W, class A> struct Dot<float (*)(int64_t, const W*, const A*)> { using Block = W; using Act = A; };

// ---- adaptors: a typed block kernel as a row entry ----------------------------------------------
template <auto F>
void quantize_rows(void* self, const float* src, void* dst, int64_t n_rows, int64_t n, const float* importance) {
  using B = typename Quantizer<decltype(F)>::Block;
  const int64_t nb = blocks_of(row_of(self), n);
  auto* y = static_cast<B*>(dst);
  for (int64_t r = 0; r < n_rows; ++r) F(src + r * n, y + r * nb, nb, importance);
}

template <auto F>
void dequantize_row(void* self, const void* src, float* dst, int64_t n) {
  using B = typename Dequantizer<decltype(F)>::Block;
  F(static_cast<const B*>(src), dst, blocks_of(row_of(self), n));
}

template <auto F>
void from_float(void* self, const float* x, void* y, int64_t n) {
  using B = typename FromFloat<decltype(F)>::Block;
  F(x, static_cast<B*>(y), blocks_of(row_of(self), n));
}

// The dot's hot path: no checks (n is the caller's whole number of blocks), one call per row.
template <auto F>
float vec_dot(void*, int64_t n, const void* w, const void* xa) {
  using D = Dot<decltype(F)>;
  return F(n / elems<typename D::Block>(), static_cast<const typename D::Block*>(w), static_cast<const typename D::Act*>(xa));
}

// A type's scalar references at once: quantizer, dequantizer, dot (block kernels as above).
template <auto Quantize, auto Dequantize, auto Dot>
void set_reference_kernels(Rows& rows, GGMLType t) {
  row(rows, t).quantize_rows = quantize_rows<Quantize>;
  row(rows, t).dequantize_row = dequantize_row<Dequantize>;
  row(rows, t).vec_dot = vec_dot<Dot>;
}

// ---- installers, each in the file with its kernels ----------------------------------------------
// Level-independent, and the scalar references (every level starts from these):
void install_levels(Rows& rows);                // levels.cpp: read/write_levels
void install_reference_quantizers(Rows& rows);  // quantize_ref.cpp: quantize, dequantize, from_float
void install_reference_dots(Rows& rows);        // vec_dot.cpp: vec_dot, Q8_K activations
void install_reference_iquants(Rows& rows);     // iquants.cpp: IQ4 quantizers, dequantizers, dots
void install_reference_iq3(Rows& rows);         // iq3.cpp: IQ3 quantizers, dequantizers, dots
void install_reference_iq2(Rows& rows);         // iq2.cpp: IQ2 quantizers, dequantizers, dots
void install_reference_iq1(Rows& rows);         // iq1.cpp: IQ1 quantizers, dequantizers, dots
void install_qgemm_packing(Rows& rows);         // qgemm.cpp: activations into token tiles
void install_reference_panels(Rows& rows);      // row_panels.cpp: panel layout, scalar panel matvec
// simd_level() >= Avx2:
void install_avx2_quantizers(Rows& rows);       // quantize_avx2.cpp
void install_avx2_dots(Rows& rows);             // vec_dot_avx2.cpp
void install_avx2_iquants(Rows& rows);          // iquants.cpp: the i-quant quantizers' searches
// simd_level() == Avx512 (VNNI):
void install_avx512_dots(Rows& rows);           // vec_dot_avx512.cpp
void install_qgemm(Rows& rows);                 // qgemm.cpp: weight rows to levels
void install_avx512_panels(Rows& rows);         // row_panels.cpp: panel matvec, decode uses panels

}  // namespace squish::quant::table
