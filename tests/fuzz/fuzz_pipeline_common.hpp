#pragma once
// Pipeline targets: a plugin host that finds only the stand-in plugins (fake_plugin.cpp, in
// SQUISH_FUZZ_PLUGIN_DIR; in the normal build the real ones in build/plugins come first, with the
// same kinds and parameters), and a guard that keeps fuzzed pipelines from dlopen'ing anything
// else: an input naming a plugin by path (a '/', a ".so"), through a variable ('$'), or adding
// search directories (plugin_paths) is skipped, not loaded.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/runtime/pipeline.hpp"
#include "core/runtime/plugin_host.hpp"

#include <yaml-cpp/yaml.h>

#include <cstdlib>

namespace squish::fuzz {

// One host for the whole run: loading a plugin is a dlopen and a registration (most of an
// execution's time when done per input), and loading it again is a no-op. Inputs cannot change
// the host otherwise: pipeline_is_safe refuses plugin_paths and plugins named by path.
inline PluginHost& host() {
  static PluginHost* h = [] {
    ::unsetenv("SQUISH_PLUGIN_PATH");
    return new PluginHost({SQUISH_FUZZ_PLUGIN_DIR});
  }();
  return *h;
}

inline bool safe_plugin_name(const std::string& n) {
  return n.find('/') == std::string::npos && n.find('$') == std::string::npos && !n.ends_with(".so") && n != "." &&
         n != "..";
}

// False: the input could make the host load something other than the stand-ins; skip it.
inline bool pipeline_is_safe(const std::string& text) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (...) {
    return true;  // the loader fails the same way before it loads any plugin
  }
  if (!root.IsMap()) return true;
  for (auto it = root.begin(); it != root.end(); ++it) {
    // Copies: it->first / it->second live in a temporary proxy (a reference would dangle).
    const YAML::Node key_node = it->first, value = it->second;
    if (!key_node.IsScalar()) continue;
    const std::string key = key_node.Scalar();
    if (key == "plugin_paths") return false;
    if (key == "plugins") {
      if (!value.IsSequence()) continue;
      for (const auto& n : value)
        if (n.IsScalar() && !safe_plugin_name(n.Scalar())) return false;
    }
  }
  return true;
}

// What a loaded pipeline must satisfy; and the description --dry-run prints.
inline void check_pipeline(const Pipeline& p) {
  for (const auto& n : p.nodes) {
    SQUISH_FUZZ_CHECK(n.kind_info != nullptr, n.name);
    SQUISH_FUZZ_CHECK(n.params.is_object(), n.name);
    for (const auto& ps : n.kind_info->params) SQUISH_FUZZ_CHECK(n.params.contains(ps.name), n.name + "." + ps.name);
    (void)p.predecessors(n.name), (void)p.successors(n.name), (void)p.node(n.name);
  }
  // nodes are in topological order: every edge goes forward.
  for (const auto& e : p.edges) {
    size_t from = p.nodes.size(), to = p.nodes.size();
    for (size_t i = 0; i < p.nodes.size(); ++i) {
      if (p.nodes[i].name == e.from) from = i;
      if (p.nodes[i].name == e.to) to = i;
    }
    SQUISH_FUZZ_CHECK(from < to && to < p.nodes.size(), "edge " + e.from + " -> " + e.to + " not in topological order");
  }
  (void)p.describe();
}

}  // namespace squish::fuzz
