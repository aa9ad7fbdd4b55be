#include "core/quant/type_registry.hpp"

#include "core/quant/quantize.hpp"
#include "core/quant/vec_dot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

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
  pt->traits = GGMLTypeTraits{static_cast<GGMLType>(o.id), pt->name.c_str(), static_cast<int>(o.block_size), o.block_bytes, true};
  const PluginType* p = pt.get();
  r.owned.push_back(std::move(pt));
  r.by_id[o.id - kFirst].store(p, std::memory_order_release);
  return "";
}

// ---- built-in types through the C interface ----------------------------------------------------

namespace {

GGMLType id_of(void* self) { return static_cast<GGMLType>(reinterpret_cast<uintptr_t>(self)); }

void builtin_quantize(void* self, const float* src, void* dst, int64_t n_rows, int64_t n_per_row, const float* importance) {
  quantize_rows(id_of(self), src, dst, n_rows, n_per_row, importance);
}
void builtin_dequantize(void* self, const void* src, float* dst, int64_t n) { dequantize_row(id_of(self), src, dst, n); }
size_t builtin_activation_bytes(void* self, int64_t n) { return activation_row_size(id_of(self), n); }
void builtin_prepare(void* self, const float* x, void* xa, int64_t n) { quantize_activations(id_of(self), x, xa, n); }
float builtin_dot(void* self, int64_t n, const void* w, const void* xa) { return vec_dot(id_of(self), n, w, xa); }

}  // namespace

const squish_type* builtin_type_ops(uint32_t id) {
  // Built once: every built-in type Squish quantizes and has a dot kernel for.
  static const std::map<uint32_t, squish_type> table = [] {
    std::map<uint32_t, squish_type> m;
    for (uint32_t i = 0; i < kFirst; ++i) {
      const GGMLTypeTraits* tr = ggml_type_traits(i);
      if (!tr || !quantize_supported(tr->type)) continue;
      squish_type t{};
      t.struct_size = sizeof(squish_type);
      t.id = i;
      t.name = tr->name;
      t.block_size = static_cast<uint32_t>(tr->block_size);
      t.block_bytes = static_cast<uint32_t>(tr->type_size);
      t.self = reinterpret_cast<void*>(static_cast<uintptr_t>(i));
      t.quantize_rows = builtin_quantize;
      t.dequantize_row = builtin_dequantize;
      t.activation_bytes = builtin_activation_bytes;
      t.prepare_activation = builtin_prepare;
      t.vec_dot = builtin_dot;
      m.emplace(i, t);
    }
    return m;
  }();
  if (auto it = table.find(id); it != table.end()) return &it->second;
  return nullptr;
}

}  // namespace squish
