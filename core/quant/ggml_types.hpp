#pragma once
// ggml tensor types as stored in GGUF files: ids, block sizes and bytes per block.
// Ids are ggml's on-disk enum (ggml.h, enum ggml_type) and must never change.
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
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

constexpr int kQK = 32;    // elements per block of the legacy quants (Q4_0, Q8_0, ...)
constexpr int kQK_K = 256; // elements per super-block of the K-quants

struct GGMLTypeTraits {
  GGMLType type;
  const char* name;      // "Q4_K", as llama.cpp prints it
  int block_size;        // elements per block
  size_t type_size;      // bytes per block
  bool quantized;
};

// Traits of a type known to Squish (built in, or registered by a loaded plugin: type_registry.hpp);
// nullptr for ids Squish does not handle.
const GGMLTypeTraits* ggml_type_traits(uint32_t id);
inline const GGMLTypeTraits* ggml_type_traits(GGMLType t) { return ggml_type_traits(static_cast<uint32_t>(t)); }
const char* ggml_type_name(GGMLType t);
// Case-insensitive lookup by name ("q4_k", "F16", or a plugin type's); nullopt if unknown.
std::optional<GGMLType> ggml_type_from_name(std::string_view name);
// The same among ggml's built-in types only.
std::optional<GGMLType> ggml_builtin_type_from_name(std::string_view name);
// Bytes of one row of n elements; n must be a multiple of the block size.
size_t ggml_row_size(GGMLType t, int64_t n);

// How many values (float types) or block scales (quantized types) in `data` are NaN or Inf,
// read from their exponent bits without dequantizing: a block can only dequantize to a
// non-finite value through a non-finite scale. Integer types count 0. nullopt: unknown layout
// (plugin types: dequantize whole rows to check them).
std::optional<uint64_t> count_non_finite(GGMLType t, std::span<const std::byte> data);

}  // namespace squish
