// The traits table: one row per built-in type, filled once per SIMD level at first use (its
// layout from blocks.hpp, its kernels installed by the files that define them), and the one
// lookup for built-in and plugin types.
#include "core/quant/ggml_types.hpp"

#include "core/quant/blocks.hpp"
#include "core/quant/type_registry.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace squish {

namespace {
using namespace quant;
using table::Rows;

// ---- NaN / Inf from exponent bits ---------------------------------------------------------------

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
bool f64_non_finite(const std::byte* p) {
  uint64_t u;
  std::memcpy(&u, p, 8);
  return (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}

// The float fields at byte offsets Off... of each block B (a float type: the value at 0).
template <class B, bool (*NonFinite)(const std::byte*), size_t... Off>
uint64_t count_fields(const std::byte* p, size_t blocks) {
  uint64_t bad = 0;
  for (size_t b = 0; b < blocks; ++b, p += sizeof(B)) ((bad += NonFinite(p + Off)), ...);
  return bad;
}
uint64_t count_none(const std::byte*, size_t) { return 0; }  // integers
uint64_t count_iq1_m(const std::byte* p, size_t blocks) {  // its fp16 is spread over the scales
  uint64_t bad = 0;
  for (size_t b = 0; b < blocks; ++b, p += sizeof(BlockIQ1_M)) {
    BlockIQ1_M blk;
    std::memcpy(&blk, p, sizeof(blk));
    const uint16_t d = iq1_m_d(blk);
    bad += f16_non_finite(reinterpret_cast<const std::byte*>(&d));
  }
  return bad;
}

// ---- what each type is --------------------------------------------------------------------------

template <class B>
void describe(Rows& rows, GGMLType t, const char* name, bool quantized, uint64_t (*count_non_finite)(const std::byte*, size_t),
              GGMLType vec_dot_type = GGMLType::F32) {
  GGMLTypeTraits& r = table::row(rows, t);
  r.type = t;
  r.name = name;
  r.block_size = table::elems<B>();
  r.type_size = sizeof(B);
  r.quantized = quantized;
  r.count_non_finite = count_non_finite;
  r.vec_dot_type = vec_dot_type;
}

void describe_all(Rows& r) {
  using T = GGMLType;
  describe<float>(r, T::F32, "F32", false, count_fields<float, f32_non_finite, 0>);
  describe<uint16_t>(r, T::F16, "F16", false, count_fields<uint16_t, f16_non_finite, 0>);
  describe<uint16_t>(r, T::BF16, "BF16", false, count_fields<uint16_t, bf16_non_finite, 0>);
  describe<double>(r, T::F64, "F64", false, count_fields<double, f64_non_finite, 0>);
  describe<int8_t>(r, T::I8, "I8", false, count_none);
  describe<int16_t>(r, T::I16, "I16", false, count_none);
  describe<int32_t>(r, T::I32, "I32", false, count_none);
  describe<int64_t>(r, T::I64, "I64", false, count_none);
  describe<BlockQ4_0>(r, T::Q4_0, "Q4_0", true, count_fields<BlockQ4_0, f16_non_finite, offsetof(BlockQ4_0, d)>, T::Q8_0);
  describe<BlockQ4_1>(r, T::Q4_1, "Q4_1", true, count_fields<BlockQ4_1, f16_non_finite, offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)>);
  describe<BlockQ5_0>(r, T::Q5_0, "Q5_0", true, count_fields<BlockQ5_0, f16_non_finite, offsetof(BlockQ5_0, d)>);
  describe<BlockQ5_1>(r, T::Q5_1, "Q5_1", true, count_fields<BlockQ5_1, f16_non_finite, offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)>);
  describe<BlockQ8_0>(r, T::Q8_0, "Q8_0", true, count_fields<BlockQ8_0, f16_non_finite, offsetof(BlockQ8_0, d)>, T::Q8_0);
  describe<BlockQ8_1>(r, T::Q8_1, "Q8_1", true, count_fields<BlockQ8_1, f16_non_finite, offsetof(BlockQ8_1, d), offsetof(BlockQ8_1, s)>);
  describe<BlockQ2_K>(r, T::Q2_K, "Q2_K", true, count_fields<BlockQ2_K, f16_non_finite, offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)>,
                      T::Q8_K);
  describe<BlockQ3_K>(r, T::Q3_K, "Q3_K", true, count_fields<BlockQ3_K, f16_non_finite, offsetof(BlockQ3_K, d)>, T::Q8_K);
  describe<BlockQ4_K>(r, T::Q4_K, "Q4_K", true, count_fields<BlockQ4_K, f16_non_finite, offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)>,
                      T::Q8_K);
  describe<BlockQ5_K>(r, T::Q5_K, "Q5_K", true, count_fields<BlockQ5_K, f16_non_finite, offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)>,
                      T::Q8_K);
  describe<BlockQ6_K>(r, T::Q6_K, "Q6_K", true, count_fields<BlockQ6_K, f16_non_finite, offsetof(BlockQ6_K, d)>, T::Q8_K);
  describe<BlockIQ4_NL>(r, T::IQ4_NL, "IQ4_NL", true, count_fields<BlockIQ4_NL, f16_non_finite, offsetof(BlockIQ4_NL, d)>, T::Q8_0);
  describe<BlockIQ4_XS>(r, T::IQ4_XS, "IQ4_XS", true, count_fields<BlockIQ4_XS, f16_non_finite, offsetof(BlockIQ4_XS, d)>, T::Q8_K);
  describe<BlockIQ3_XXS>(r, T::IQ3_XXS, "IQ3_XXS", true, count_fields<BlockIQ3_XXS, f16_non_finite, offsetof(BlockIQ3_XXS, d)>, T::Q8_K);
  describe<BlockIQ3_S>(r, T::IQ3_S, "IQ3_S", true, count_fields<BlockIQ3_S, f16_non_finite, offsetof(BlockIQ3_S, d)>, T::Q8_K);
  describe<BlockIQ2_XXS>(r, T::IQ2_XXS, "IQ2_XXS", true, count_fields<BlockIQ2_XXS, f16_non_finite, offsetof(BlockIQ2_XXS, d)>, T::Q8_K);
  describe<BlockIQ2_XS>(r, T::IQ2_XS, "IQ2_XS", true, count_fields<BlockIQ2_XS, f16_non_finite, offsetof(BlockIQ2_XS, d)>, T::Q8_K);
  describe<BlockIQ2_S>(r, T::IQ2_S, "IQ2_S", true, count_fields<BlockIQ2_S, f16_non_finite, offsetof(BlockIQ2_S, d)>, T::Q8_K);
  describe<BlockIQ1_S>(r, T::IQ1_S, "IQ1_S", true, count_fields<BlockIQ1_S, f16_non_finite, offsetof(BlockIQ1_S, d)>, T::Q8_K);
  describe<BlockIQ1_M>(r, T::IQ1_M, "IQ1_M", true, count_iq1_m, T::Q8_K);
  describe<BlockQ8_K>(r, T::Q8_K, "Q8_K", true, count_fields<BlockQ8_K, f32_non_finite, offsetof(BlockQ8_K, d)>);
}

// ---- kernels every built-in row with a dot shares: its activations' row does the work -----------

size_t activation_bytes(void* self, int64_t n) {
  const GGMLTypeTraits& a = *table::row_of(self).activations;
  return static_cast<size_t>(blocks_of(a, n)) * a.type_size;
}
void prepare_activation(void* self, const float* x, void* xa, int64_t n) {
  const GGMLTypeTraits& a = *table::row_of(self).activations;
  a.from_float(a.self, x, xa, n);
}

// The rows of one SIMD level, built in place (rows point at themselves and at each other).
class Table {
 public:
  explicit Table(SimdLevel level) {
    describe_all(rows_);
    table::install_levels(rows_);
    table::install_reference_quantizers(rows_);
    table::install_reference_dots(rows_);
    table::install_reference_iquants(rows_);
    table::install_reference_iq3(rows_);
    table::install_reference_iq2(rows_);
    table::install_reference_iq1(rows_);
    table::install_qgemm_packing(rows_);
    table::install_reference_panels(rows_);
    if (level >= SimdLevel::Avx2) {
      table::install_avx2_quantizers(rows_);
      table::install_avx2_dots(rows_);
      table::install_avx2_iquants(rows_);
    }
    if (level >= SimdLevel::Avx512) {
      table::install_avx512_dots(rows_);
      table::install_qgemm(rows_);
      table::install_avx512_panels(rows_);
    }
    for (GGMLTypeTraits& r : rows_) {
      if (!r.name) continue;
      r.self = &r;
      if (!r.vec_dot) continue;
      r.activations = &table::row(rows_, r.vec_dot_type);
      r.activation_bytes = activation_bytes;
      r.prepare_activation = prepare_activation;
    }
  }
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  const GGMLTypeTraits* find(uint32_t id) const { return id < rows_.size() && rows_[id].name ? &rows_[id] : nullptr; }
  const Rows& rows() const { return rows_; }

 private:
  Rows rows_{};
};

template <SimdLevel L>
const Table& table_at() {
  static const Table t(L);
  return t;
}
const Table& table_for(SimdLevel level) {
  if (level == SimdLevel::Avx512) return table_at<SimdLevel::Avx512>();
  if (level == SimdLevel::Avx2) return table_at<SimdLevel::Avx2>();
  return table_at<SimdLevel::Scalar>();
}

const GGMLTypeTraits* plugin_row(uint32_t id) {
  const PluginType* p = plugin_type(id);
  return p ? &p->traits : nullptr;
}

}  // namespace

const GGMLTypeTraits* ggml_type_traits(uint32_t id) {
  static const Table& current = table_for(simd_level());
  if (const GGMLTypeTraits* t = current.find(id)) return t;
  return plugin_row(id);
}

const GGMLTypeTraits* ggml_type_traits(GGMLType t, SimdLevel level) {
  const auto id = static_cast<uint32_t>(t);
  if (const GGMLTypeTraits* r = table_for(level).find(id)) return r;
  return plugin_row(id);
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
  for (const GGMLTypeTraits& t : table_for(SimdLevel::Scalar).rows()) {
    if (!t.name) continue;
    std::string_view n = t.name;
    if (n.size() == name.size() &&
        std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) { return std::toupper(a) == std::toupper(b); }))
      return t.type;
  }
  return std::nullopt;
}

int64_t blocks_of(const GGMLTypeTraits& t, int64_t n) {
  if (n % t.block_size != 0)
    fail(ExitCode::Runtime, "row of {} elements is not a multiple of {}'s block size {}", n, t.name, t.block_size);
  return n / t.block_size;
}

size_t ggml_row_size(GGMLType t, int64_t n) {
  const auto* tr = ggml_type_traits(t);
  if (!tr) fail(ExitCode::Runtime, "unknown ggml type id {}", static_cast<uint32_t>(t));
  return static_cast<size_t>(blocks_of(*tr, n)) * tr->type_size;
}

std::optional<uint64_t> count_non_finite(GGMLType t, std::span<const std::byte> data) {
  const auto* tr = ggml_type_traits(t);
  if (!tr || !tr->count_non_finite) return std::nullopt;
  return tr->count_non_finite(data.data(), data.size() / tr->type_size);
}

}  // namespace squish
