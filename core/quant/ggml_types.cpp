#include "core/quant/ggml_types.hpp"

#include "core/quant/type_registry.hpp"
#include "core/base/error.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

namespace squish {

namespace {
// Block layouts (bytes): Q4_0 = f16 d + 16 nibbles; Q4_1 = 2 f16 + 16; Q5_0 = f16 + 4 + 16;
// Q5_1 = 2 f16 + 4 + 16; Q8_0 = f16 + 32; Q8_1 = 2 f16 + 32;
// Q2_K = 16 scales + 64 qs + 2 f16 = 84; Q3_K = 32 hmask + 64 qs + 12 scales + f16 = 110;
// Q4_K = 2 f16 + 12 scales + 128 qs = 144; Q5_K = 2 f16 + 12 + 32 qh + 128 qs = 176;
// Q6_K = 128 ql + 64 qh + 16 scales + f16 = 210; Q8_K = f32 + 256 + 16 i16 bsums = 292.
constexpr GGMLTypeTraits kTraits[] = {
    {GGMLType::F32, "F32", 1, 4, false},      {GGMLType::F16, "F16", 1, 2, false},
    {GGMLType::Q4_0, "Q4_0", 32, 18, true},   {GGMLType::Q4_1, "Q4_1", 32, 20, true},
    {GGMLType::Q5_0, "Q5_0", 32, 22, true},   {GGMLType::Q5_1, "Q5_1", 32, 24, true},
    {GGMLType::Q8_0, "Q8_0", 32, 34, true},   {GGMLType::Q8_1, "Q8_1", 32, 36, true},
    {GGMLType::Q2_K, "Q2_K", 256, 84, true},  {GGMLType::Q3_K, "Q3_K", 256, 110, true},
    {GGMLType::Q4_K, "Q4_K", 256, 144, true}, {GGMLType::Q5_K, "Q5_K", 256, 176, true},
    {GGMLType::Q6_K, "Q6_K", 256, 210, true}, {GGMLType::Q8_K, "Q8_K", 256, 292, true},
    {GGMLType::I8, "I8", 1, 1, false},        {GGMLType::I16, "I16", 1, 2, false},
    {GGMLType::I32, "I32", 1, 4, false},      {GGMLType::I64, "I64", 1, 8, false},
    {GGMLType::F64, "F64", 1, 8, false},      {GGMLType::BF16, "BF16", 1, 2, false},
};
}  // namespace

const GGMLTypeTraits* ggml_type_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  const PluginType* p = plugin_type(id);
  return p ? &p->traits : nullptr;
}

const char* ggml_type_name(GGMLType t) {
  const auto* tr = ggml_type_traits(t);
  return tr ? tr->name : "?";
}

std::optional<GGMLType> ggml_type_from_name(std::string_view name) {
  if (auto t = ggml_builtin_type_from_name(name)) return t;
  if (const PluginType* p = plugin_type_by_name(name)) return p->traits.type;
  return std::nullopt;
}

std::optional<GGMLType> ggml_builtin_type_from_name(std::string_view name) {
  for (const auto& t : kTraits) {
    std::string_view n = t.name;
    if (n.size() == name.size() &&
        std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) { return std::toupper(a) == std::toupper(b); }))
      return t.type;
  }
  return std::nullopt;
}

size_t ggml_row_size(GGMLType t, int64_t n) {
  const auto* tr = ggml_type_traits(t);
  if (!tr) fail(ExitCode::Runtime, "unknown ggml type id {}", static_cast<uint32_t>(t));
  if (n % tr->block_size != 0)
    fail(ExitCode::Runtime, "row of {} elements is not a multiple of {}'s block size {}", n, tr->name, tr->block_size);
  return static_cast<size_t>(n / tr->block_size) * tr->type_size;
}

namespace {
bool f16_non_finite(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return (h & 0x7c00) == 0x7c00;
}
bool bf16_non_finite(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return (h & 0x7f80) == 0x7f80;
}
bool f32_non_finite(const std::byte* p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  return (u & 0x7f800000u) == 0x7f800000u;
}
}  // namespace

std::optional<uint64_t> count_non_finite(GGMLType t, std::span<const std::byte> data) {
  const auto* tr = ggml_type_traits(t);
  if (!tr) return std::nullopt;
  // Where each block keeps its f16 scales (layouts above); Q8_K's scale is an f32 at 0.
  std::vector<size_t> f16_scales;
  switch (t) {
    case GGMLType::Q4_0: case GGMLType::Q5_0: case GGMLType::Q8_0: f16_scales = {0}; break;
    case GGMLType::Q4_1: case GGMLType::Q5_1: case GGMLType::Q8_1: case GGMLType::Q4_K: case GGMLType::Q5_K: f16_scales = {0, 2}; break;
    case GGMLType::Q2_K: f16_scales = {80, 82}; break;
    case GGMLType::Q3_K: f16_scales = {108}; break;
    case GGMLType::Q6_K: f16_scales = {208}; break;
    default: break;
  }
  const size_t step = tr->type_size, n = data.size() / step;
  const std::byte* p = data.data();
  uint64_t bad = 0;
  if (!f16_scales.empty()) {
    for (size_t b = 0; b < n; ++b)
      for (size_t off : f16_scales) bad += f16_non_finite(p + b * step + off);
    return bad;
  }
  switch (t) {
    case GGMLType::F32: for (size_t i = 0; i < n; ++i) bad += f32_non_finite(p + 4 * i); return bad;
    case GGMLType::F16: for (size_t i = 0; i < n; ++i) bad += f16_non_finite(p + 2 * i); return bad;
    case GGMLType::BF16: for (size_t i = 0; i < n; ++i) bad += bf16_non_finite(p + 2 * i); return bad;
    case GGMLType::Q8_K: for (size_t b = 0; b < n; ++b) bad += f32_non_finite(p + b * step); return bad;
    case GGMLType::F64: {
      for (size_t i = 0; i < n; ++i) {
        uint64_t u;
        std::memcpy(&u, p + 8 * i, 8);
        bad += (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
      }
      return bad;
    }
    case GGMLType::I8: case GGMLType::I16: case GGMLType::I32: case GGMLType::I64: return 0;
    default: return std::nullopt;
  }
}

}  // namespace squish
