#pragma once
// The stage plugin ABI. A plugin is a shared object exporting one extern "C" entry point,
// `squish_plugin_entry`, that returns a PluginInfo. The host checks `abi_version` before it
// touches anything else, then calls `register_nodes` to add the node kinds the plugin provides.
//
// Plugins are C++ and share libsquish_core with the host, so the types below cross the
// boundary. Any change to them (or to the types they reference) bumps SQUISH_PLUGIN_ABI_VERSION;
// a plugin built against another version is refused with a clear error instead of crashing.
#include "core/runtime/events.hpp"
#include "core/runtime/tensor.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#define SQUISH_PLUGIN_ABI_VERSION 2u  // 2: ParamType::Output, ParamSpec min/max
#define SQUISH_PLUGIN_ENTRY_SYMBOL "squish_plugin_entry"

namespace squish {

enum class NodeRole {
  Source,     // produces messages (no inputs)
  Transform,  // consumes messages and emits zero or more messages
  Sink,       // consumes messages, emits none (but may emit documents when finished)
};

// Path: a file or folder the node reads; Output: one it writes (file or folder). Both may be ""
// when the parameter is optional (= none). The loader refuses an output that is the same file as
// any input of the run, and a number that is not finite or lies outside [min, max].
enum class ParamType { String, Path, Int, Float, Bool, List, Map, Any, Output };
const char* param_type_name(ParamType t);

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::String;
  bool required = false;
  nlohmann::json default_value = nullptr;  // used when not required and not given
  std::string help;
  double min = -1e300, max = 1e300;  // Int and Float: the accepted range (inclusive)
};

// Where a node sends what it produces; thread-safe.
class Emitter {
 public:
  virtual ~Emitter() = default;
  virtual void emit(Message m) = 0;
};

// What the runtime gives a node: its validated parameters and services.
struct NodeContext {
  std::string node_name;       // as named in the pipeline file
  std::string kind;            // node kind, e.g. "compress.quantize"
  nlohmann::json params;       // validated, defaults applied, typed (ints are ints, ...)
  std::string pipeline_dir;    // directory of the pipeline file (relative paths in params are already resolved)
  int threads = 0;             // worker threads the pipeline may use (0 = all cores)
  EventSink* events = nullptr; // progress, warnings
  const std::atomic<bool>* cancelled = nullptr;

  bool is_cancelled() const { return cancelled && cancelled->load(std::memory_order_relaxed); }
  // Progress of a long step inside a node (tokens scored, tensors written, ...).
  void progress(const std::string& unit, uint64_t done, uint64_t total) const;
  void warn(const std::string& message) const;
  // A node's own "threads" parameter when > 0, else the pipeline's setting (0 = all cores).
  // Throws Error(Usage) for a negative value.
  int threads_param() const;
};

class Node {
 public:
  virtual ~Node() = default;
  // Sources: produce the next message into `out`; return false when exhausted.
  virtual bool produce(Message& out) { return false; }
  // Transforms and sinks: handle one message. Called concurrently when the node runs parallel.
  virtual void consume(const Message& in, Emitter& out) {}
  // Called once after every upstream node has finished and all their messages were consumed.
  virtual void finish(Emitter& out) {}
  // Sources: how many messages they will produce, for progress (0 = unknown).
  virtual uint64_t expected_count() const { return 0; }
};

struct NodeKind {
  std::string name;     // "<plugin>.<node>", e.g. "io.safetensors_source"
  std::string summary;  // one line for --help / --dry-run
  NodeRole role = NodeRole::Transform;
  bool parallel = false;  // consume() may run concurrently on different messages
  std::vector<ParamSpec> params;
  std::function<std::unique_ptr<Node>(const NodeContext&)> create;
};

class NodeRegistry {
 public:
  virtual ~NodeRegistry() = default;
  virtual void add(NodeKind kind) = 0;
};

struct PluginInfo {
  uint32_t abi_version;  // must equal SQUISH_PLUGIN_ABI_VERSION of the host
  const char* name;      // "compress"
  const char* version;   // plugin's own version string
  const char* summary;
  void (*register_nodes)(NodeRegistry& registry);
};

using PluginEntryFn = const PluginInfo* (*)();

}  // namespace squish

// Defines the plugin's entry point. Use once per plugin, at namespace scope.
#define SQUISH_PLUGIN(NAME, VERSION, SUMMARY, REGISTER_FN)                                     \
  extern "C" __attribute__((visibility("default"))) const ::squish::PluginInfo* squish_plugin_entry() { \
    static const ::squish::PluginInfo info{SQUISH_PLUGIN_ABI_VERSION, NAME, VERSION, SUMMARY, REGISTER_FN}; \
    return &info;                                                                              \
  }
