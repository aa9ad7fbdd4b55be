#pragma once
// ggml tensor types as stored in GGUF files (ids, block sizes, bytes per block), and the one
// traits table every dispatcher over types reads (GGMLTypeTraits below). Ids are ggml's on-disk
// enum (ggml.h, enum ggml_type) and must never change.
#include "core/base/simd.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace squish {

enum class GGMLType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
};

constexpr int kQK = 32;    // elements per block of the legacy quants (Q4_0, Q8_0, ...)
constexpr int kQK_K = 256; // elements per super-block of the K-quants

namespace quant {
struct Grid;  // levels.hpp
}

// One row per type: what the type is (ggml's type_traits) and its kernels at one SIMD level
// (ggml's type_traits_cpu). Built-in rows are filled once per SIMD level, at first use, by the
// files that define the kernels (ggml_types.cpp assembles them); a plugin type's row is made
// when it registers (type_registry.cpp). Every dispatcher reads the row of its type; nullptr
// means the type has no such kernel.
struct GGMLTypeTraits {
  GGMLType type{};
  const char* name = nullptr;  // "Q4_K", as llama.cpp prints it
  int block_size = 0;          // elements per block
  size_t type_size = 0;        // bytes per block
  bool quantized = false;

  // ---- kernels shaped as the plugin ABI's (squish_type): `self` first, always this row's ----
  // Built-in rows: the row itself. Plugin rows: the PluginType (type_registry.hpp).
  void* self = nullptr;
  // Rows of n_per_row floats (a multiple of block_size) to blocks; importance: optional
  // per-column weights (an importance matrix row).
  void (*quantize_rows)(void* self, const float* src, void* dst, int64_t n_rows, int64_t n_per_row,
                        const float* importance) = nullptr;
  void (*dequantize_row)(void* self, const void* src, float* dst, int64_t n) = nullptr;
  // Dots with a weight row: activations are prepared once per vector (to vec_dot_type: F32, Q8_0,
  // Q8_K, or a plugin type's own format), then vec_dot runs once per row.
  GGMLType vec_dot_type = GGMLType::F32;
  size_t (*activation_bytes)(void* self, int64_t n) = nullptr;
  void (*prepare_activation)(void* self, const float* x, void* xa, int64_t n) = nullptr;
  float (*vec_dot)(void* self, int64_t n, const void* w_row, const void* xa) = nullptr;
  // The type as activations (Q8_0, Q8_K; F32 copies): n floats to n / block_size blocks.
  void (*from_float)(void* self, const float* x, void* y, int64_t n) = nullptr;
  // Built-in rows: the row of vec_dot_type in the same table (the activations' kernels).
  const GGMLTypeTraits* activations = nullptr;

  // ---- built-in kernels without `self` ----
  // Integer levels of one block (levels.hpp): GPTQ needs them.
  void (*read_levels)(const void* block, quant::Grid& grid, uint8_t* levels) = nullptr;
  void (*write_levels)(void* block, const uint8_t* levels) = nullptr;
  // Prefill's integer GEMM (qgemm.hpp; AVX-512 VNNI rows only): a weight row of K values to
  // levels L and per 16-weight group a, b (w = a * L + b); for activation types, one token's
  // prepared activations into lane `lane` of a 32-token tile.
  void (*qgemm_decode)(const void* row, int64_t K, uint8_t* L, float* a, float* b) = nullptr;
  void (*qgemm_pack)(const void* xa, int64_t K, int lane, int8_t* q, float* dy, float* dyq) = nullptr;
  // Decode's 16-row panels (row_panels.hpp): the layout, its matvec, and whether decode uses them.
  void (*pack_panel)(int64_t n, const void* rows, size_t row_bytes, void* panel) = nullptr;
  void (*panel_matvec)(int64_t n, const void* panel, const void* xa, float* out) = nullptr;
  bool decode_panels = false;
  // NaN/Inf values or block scales in `blocks` blocks (count_non_finite below).
  uint64_t (*count_non_finite)(const std::byte* data, size_t blocks) = nullptr;
};

// The row of a type known to Squish (built in, or registered by a loaded plugin: type_registry.hpp)
// at this process's SIMD level (simd_level()); nullptr for ids Squish does not handle.
const GGMLTypeTraits* ggml_type_traits(uint32_t id);
inline const GGMLTypeTraits* ggml_type_traits(GGMLType t) { return ggml_type_traits(static_cast<uint32_t>(t)); }
// The same at a given SIMD level: SimdLevel::Scalar gives the scalar references, the definition
// of the bytes. Kernels of a level above simd_level() must not be called. Plugin rows are the
// same at every level.
const GGMLTypeTraits* ggml_type_traits(GGMLType t, SimdLevel level);
const char* ggml_type_name(GGMLType t);
// Types whose quantizer needs an importance matrix (llama.cpp's IQ2_XXS, IQ2_XS, IQ1_S: their grids
// lose the model without one). llama-quantize also refuses IQ2_S and IQ1_M without one; their
// quantizers have a rule for that case, so Squish makes them (docs/recipe.md).
inline bool needs_importance(GGMLType t) { return t == GGMLType::IQ2_XXS || t == GGMLType::IQ2_XS || t == GGMLType::IQ1_S; }
// Case-insensitive lookup by name ("q4_k", "F16", or a plugin type's); nullopt if unknown.
std::optional<GGMLType> ggml_type_from_name(std::string_view name);
// The same among ggml's built-in types only.
std::optional<GGMLType> ggml_builtin_type_from_name(std::string_view name);
// Blocks in n elements of the type; fails unless n is a multiple of the block size.
int64_t blocks_of(const GGMLTypeTraits& t, int64_t n);
// Bytes of one row of n elements; n must be a multiple of the block size.
size_t ggml_row_size(GGMLType t, int64_t n);

// How many values (float types) or block scales (quantized types) in `data` are NaN or Inf,
// read from their exponent bits without dequantizing: a block can only dequantize to a
// non-finite value through a non-finite scale. Integer types count 0. nullopt: unknown layout
// (plugin types: dequantize whole rows to check them).
std::optional<uint64_t> count_non_finite(GGMLType t, std::span<const std::byte> data);

}  // namespace squish
