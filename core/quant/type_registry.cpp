#include "core/quant/type_registry.hpp"

#include "core/base/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace squish {

namespace {

constexpr uint32_t kFirst = SQUISH_TYPE_ID_PRIVATE_FIRST, kLast = SQUISH_TYPE_ID_PRIVATE_LAST;

struct Registry {
  std::array<std::atomic<const PluginType*>, kLast - kFirst + 1> by_id{};
  std::mutex mu;                                   // serialises registration
  std::vector<std::unique_ptr<PluginType>> owned;  // never shrinks: pointers stay valid
};

Registry& registry() {
  static Registry r;
  return r;
}

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::toupper(x) == std::toupper(y); });
}

bool valid_name(const char* s) {
  if (!s || !*s || std::strlen(s) > 32) return false;
  for (const char* p = s; *p; ++p)
    if (!std::isalnum(static_cast<unsigned char>(*p)) && *p != '_') return false;
  return true;
}

}  // namespace

bool PluginType::supports_row(int64_t n) const {
  return n > 0 && n % traits.block_size == 0 && (!ops.supports_row || ops.supports_row(ops.self, n) != 0);
}

const PluginType* plugin_type(uint32_t id) {
  if (id < kFirst || id > kLast) return nullptr;
  return registry().by_id[id - kFirst].load(std::memory_order_acquire);
}

const PluginType* plugin_type_by_name(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  for (const auto& t : r.owned)
    if (same_name(t->name, name)) return t.get();
  return nullptr;
}

std::vector<const PluginType*> plugin_types() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<const PluginType*> v;
  for (const auto& t : r.owned) v.push_back(t.get());
  return v;
}

// ---- a plugin type's row of the traits table: its functions, called with its own self ----------

namespace {

const PluginType& plugin_of(void* self) { return *static_cast<const PluginType*>(self); }

void plugin_quantize(void* self, const float* src, void* dst, int64_t n_rows, int64_t n_per_row, const float* importance) {
  const PluginType& p = plugin_of(self);
  if (!p.supports_row(n_per_row))
    fail(ExitCode::Runtime, "type {} (plugin '{}') cannot store rows of {} elements", p.name, p.plugin, n_per_row);
  p.ops.quantize_rows(p.ops.self, src, dst, n_rows, n_per_row, importance);
}
void plugin_dequantize(void* self, const void* src, float* dst, int64_t n) {
  const PluginType& p = plugin_of(self);
  p.ops.dequantize_row(p.ops.self, src, dst, n);
}
// With its own dot kernel: its own activation format.
size_t plugin_activation_bytes(void* self, int64_t n) {
  const PluginType& p = plugin_of(self);
  return p.ops.activation_bytes(p.ops.self, n);
}
void plugin_prepare(void* self, const float* x, void* xa, int64_t n) {
  const PluginType& p = plugin_of(self);
  p.ops.prepare_activation(p.ops.self, x, xa, n);
}
float plugin_dot(void* self, int64_t n, const void* w, const void* xa) {
  const PluginType& p = plugin_of(self);
  return p.ops.vec_dot(p.ops.self, n, w, xa);
}
// Without: F32 activations, and each row dequantized and multiplied in float.
size_t float_activation_bytes(void*, int64_t n) { return size_t(n) * sizeof(float); }
void float_activations(void*, const float* x, void* xa, int64_t n) { std::memcpy(xa, x, size_t(n) * sizeof(float)); }
float dequantized_dot(void* self, int64_t n, const void* w, const void* xa) {
  const PluginType& p = plugin_of(self);
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(n));
  p.ops.dequantize_row(p.ops.self, w, row.data(), n);
  const auto* x = static_cast<const float*>(xa);
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += row[i + j] * x[i + j];
  for (; i < n; ++i) acc[0] += row[i] * x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void fill_row(PluginType& p) {
  GGMLTypeTraits& t = p.traits;
  t.type = static_cast<GGMLType>(p.ops.id);
  t.name = p.name.c_str();
  t.block_size = static_cast<int>(p.ops.block_size);
  t.type_size = p.ops.block_bytes;
  t.quantized = true;
  t.self = &p;
  t.quantize_rows = plugin_quantize;
  t.dequantize_row = plugin_dequantize;
  // A plugin type's prepared activations are its own format: only its rows read them.
  t.vec_dot_type = p.has_dot() ? t.type : GGMLType::F32;
  t.activation_bytes = p.has_dot() ? plugin_activation_bytes : float_activation_bytes;
  t.prepare_activation = p.has_dot() ? plugin_prepare : float_activations;
  t.vec_dot = p.has_dot() ? plugin_dot : dequantized_dot;
}

}  // namespace

std::string register_plugin_type(const squish_type* t, const std::string& plugin, const std::string& plugin_version) {
  if (!t) return "register_type(NULL)";
  // Read what the plugin compiled, never more; fields a newer minor added stay zero.
  const size_t prefix = offsetof(squish_type, supports_row);
  if (t->struct_size < prefix) return fmt::format("squish_type.struct_size {} is smaller than ABI 3.0's", t->struct_size);
  auto pt = std::make_unique<PluginType>();
  std::memcpy(&pt->ops, t, std::min<size_t>(t->struct_size, sizeof(squish_type)));
  pt->ops.struct_size = sizeof(squish_type);
  const squish_type& o = pt->ops;
  const std::string shown = valid_name(o.name) ? o.name : "?";
  if (!valid_name(o.name)) return fmt::format("type id {}: name must be 1-32 letters, digits or '_'", o.id);
  if (o.id < kFirst || o.id > kLast)
    return fmt::format("type {} has id {}, outside the private range {}..{}", shown, o.id, kFirst, kLast);
  if (o.block_size == 0 || o.block_bytes == 0 || o.block_size > (1u << 20) || o.block_bytes > (1u << 24))
    return fmt::format("type {}: block of {} elements in {} bytes is not a valid layout", shown, o.block_size, o.block_bytes);
  if (!o.quantize_rows || !o.dequantize_row) return fmt::format("type {}: quantize_rows and dequantize_row are required", shown);
  const bool any_dot = o.activation_bytes || o.prepare_activation || o.vec_dot;
  if (any_dot && !(o.activation_bytes && o.prepare_activation && o.vec_dot))
    return fmt::format("type {}: a dot kernel needs all of activation_bytes, prepare_activation and vec_dot", shown);

  if (ggml_builtin_type_from_name(o.name)) return fmt::format("type name {} is a built-in type's", shown);

  Registry& r = registry();
  std::lock_guard lock(r.mu);
  if (const PluginType* other = r.by_id[o.id - kFirst].load()) {
    // The same plugin loaded again by another host in this process (dlopen returns the same
    // object): the same declaration, nothing to do.
    if (other->plugin == plugin && same_name(other->name, o.name) && other->ops.block_size == o.block_size &&
        other->ops.block_bytes == o.block_bytes && other->ops.quantize_rows == o.quantize_rows)
      return "";
    return fmt::format("type id {} ({}) is already registered by plugin '{}' as {}", o.id, shown, other->plugin, other->name);
  }
  for (const auto& other : r.owned)
    if (same_name(other->name, o.name)) return fmt::format("type name {} is already registered by plugin '{}'", shown, other->plugin);
  pt->name = o.name;
  pt->plugin = plugin;
  pt->plugin_version = plugin_version;
  pt->ops.name = pt->name.c_str();
  fill_row(*pt);
  const PluginType* p = pt.get();
  r.owned.push_back(std::move(pt));
  r.by_id[o.id - kFirst].store(p, std::memory_order_release);
  return "";
}

// ---- built-in types through the C interface: their rows' own kernels --------------------------

const squish_type* builtin_type_ops(uint32_t id) {
  // Built once: every built-in type Squish quantizes and has a dot kernel for.
  static const std::map<uint32_t, squish_type> table = [] {
    std::map<uint32_t, squish_type> m;
    for (uint32_t i = 0; i < kFirst; ++i) {
      const GGMLTypeTraits* tr = ggml_type_traits(i);
      if (!tr || !tr->quantize_rows || !tr->vec_dot) continue;
      squish_type t{};
      t.struct_size = sizeof(squish_type);
      t.id = i;
      t.name = tr->name;
      t.block_size = static_cast<uint32_t>(tr->block_size);
      t.block_bytes = static_cast<uint32_t>(tr->type_size);
      t.self = tr->self;
      t.quantize_rows = tr->quantize_rows;
      t.dequantize_row = tr->dequantize_row;
      t.activation_bytes = tr->activation_bytes;
      t.prepare_activation = tr->prepare_activation;
      t.vec_dot = tr->vec_dot;
      m.emplace(i, t);
    }
    return m;
  }();
  if (auto it = table.find(id); it != table.end()) return &it->second;
  return nullptr;
}

}  // namespace squish
