#pragma once
// Loads plugins (dlopen): keeps the registry of the node kinds they provide and enters the tensor
// types they provide into the process-wide type registry (core/quant/type_registry.hpp).
#include "core/runtime/plugin_api.hpp"

#include <map>
#include <string>
#include <vector>

namespace squish {

struct LoadedPlugin {
  std::string name;
  std::string version;
  std::string summary;
  std::string path;
  uint32_t abi_major = 0, abi_minor = 0;
  std::vector<std::string> kinds;
  std::vector<std::string> types;
};

class PluginHost final : public NodeRegistry {
 public:
  // Search order: the plugin directory beside the squish-run binary (<build>/plugins, or
  // <prefix>/lib/squish/plugins when installed), then each entry
  // of $SQUISH_PLUGIN_PATH (colon-separated), then `extra` (paths listed in the pipeline).
  explicit PluginHost(std::vector<std::string> extra_paths = {});

  // `name_or_path`: a plugin name ("compress" -> squish_compress.so) or a path to a .so file.
  // Throws Error(Plugin) for: not found (lists where it looked), not loadable, missing entry
  // symbol, ABI major mismatch or newer minor, node plugin built differently from the host,
  // duplicate node kind or type. Loading the same plugin twice is a no-op.
  void load(const std::string& name_or_path);
  // Every squish_*.so in the search path (for `squish-run --list-plugins`).
  void load_all();
  void add_search_path(const std::string& dir) { search_path_.push_back(dir); }

  const NodeKind* find(const std::string& kind) const;
  // Throws Error(Plugin) "unknown node kind 'x' (did you mean 'y'?)".
  const NodeKind& at(const std::string& kind) const;
  std::string closest_kind(const std::string& kind) const;

  const std::vector<LoadedPlugin>& plugins() const { return plugins_; }
  const std::vector<std::string>& search_path() const { return search_path_; }
  std::vector<const NodeKind*> kinds() const;

  void add(NodeKind kind) override;  // NodeRegistry, called by plugins while registering

 private:
  std::vector<std::string> search_path_;
  std::vector<LoadedPlugin> plugins_;
  std::map<std::string, NodeKind> kinds_;
  std::map<std::string, std::string> kind_owner_;  // kind -> plugin path
  LoadedPlugin* registering_ = nullptr;
};

// Edit distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace squish
