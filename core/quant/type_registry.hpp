#pragma once
// Tensor types added at run time by plugins (ids in the private range, plugin ABI
// <squish/plugin_abi.h>), beside ggml's built-in ones. Each registered type has a row of the
// traits table (PluginType::traits, whose kernels call the plugin's functions), which
// ggml_type_traits returns for its id as it returns a built-in type's row, so quantize_rows,
// dequantize_row, the dot products, the recipe, compress, the GGUF reader and writer, verify and
// the engine handle plugin types without knowing about them.
//
// Registration happens while a plugin loads; entries are never removed (plugins stay loaded),
// and look-ups are lock-free.
#include "core/quant/ggml_types.hpp"

#include <squish/plugin_abi.h>

#include <string>
#include <string_view>
#include <vector>

namespace squish {

struct PluginType {
  squish_type ops{};  // the plugin's declaration; fields past its struct_size are zero
  GGMLTypeTraits traits{};  // its row of the traits table (self = this PluginType)
  std::string name, plugin, plugin_version;
  // The type brings its own dot kernel (ABI 3.1); else the engine dequantizes rows.
  bool has_dot() const { return ops.activation_bytes && ops.prepare_activation && ops.vec_dot; }
  // Rows of n elements can be stored in this type (block multiple and the plugin's own rule).
  bool supports_row(int64_t n) const;
};

// The registered type with this id; nullptr if none (built-in ids always give nullptr).
const PluginType* plugin_type(uint32_t id);
inline const PluginType* plugin_type(GGMLType t) { return plugin_type(static_cast<uint32_t>(t)); }
// Case-insensitive look-up by name; nullptr if no loaded plugin registered it.
const PluginType* plugin_type_by_name(std::string_view name);
std::vector<const PluginType*> plugin_types();

// Adds a type declared by `plugin`; `t` is read up to t.struct_size bytes. Returns "" or the
// reason it was refused (id outside the private range or taken, name taken or malformed, block
// sizes zero, required functions missing).
std::string register_plugin_type(const squish_type* t, const std::string& plugin, const std::string& plugin_version);

// A built-in type as a squish_type whose functions are its row's kernels (for plugins that build
// on one); nullptr for ids Squish cannot quantize.
const squish_type* builtin_type_ops(uint32_t id);

}  // namespace squish
