#pragma once
// The stage plugin API: pipeline node kinds. A plugin is a shared object exporting
// `squish_plugin_entry` (the C boundary in <squish/plugin_abi.h>, which also carries tensor
// types); SQUISH_PLUGIN below defines it for a C++ plugin that adds node kinds.
//
// Node kinds are C++ objects (std::function, nlohmann::json, the classes below) shared with
// libsquish_core, so the host only calls a plugin's register_nodes when the plugin was built
// exactly as the host was: SQUISH_CXX_BUILD names the Squish version, this API's revision, the
// compiler, the C++ standard library and nlohmann-json. Any change to the types below bumps
// SQUISH_NODE_API_REVISION. docs/plugins.md says why this is safe and what it costs.
#include "core/runtime/events.hpp"
#include "core/base/tensor.hpp"

#include <nlohmann/json.hpp>
#include <squish/plugin_abi.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

// 3: node registration behind the C entry point (was ABI 2: ParamType::Output, ParamSpec min/max).
#define SQUISH_NODE_API_REVISION 3

#define SQUISH_STRINGIFY2(x) #x
#define SQUISH_STRINGIFY(x) SQUISH_STRINGIFY2(x)
#if defined(__clang__)
#define SQUISH_CXX_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SQUISH_CXX_COMPILER "gcc " __VERSION__
#else
#define SQUISH_CXX_COMPILER "unknown compiler"
#endif
#if defined(__GLIBCXX__)
#define SQUISH_CXX_STDLIB "libstdc++ " SQUISH_STRINGIFY(__GLIBCXX__) " abi" SQUISH_STRINGIFY(_GLIBCXX_USE_CXX11_ABI)
#elif defined(_LIBCPP_VERSION)
#define SQUISH_CXX_STDLIB "libc++ " SQUISH_STRINGIFY(_LIBCPP_VERSION)
#else
#define SQUISH_CXX_STDLIB "unknown stdlib"
#endif
#define SQUISH_CXX_BUILD                                                                             \
  "squish " SQUISH_VERSION " nodes r" SQUISH_STRINGIFY(SQUISH_NODE_API_REVISION) "; " SQUISH_CXX_COMPILER "; " \
  SQUISH_CXX_STDLIB "; nlohmann-json " SQUISH_STRINGIFY(NLOHMANN_JSON_VERSION_MAJOR) "." SQUISH_STRINGIFY(NLOHMANN_JSON_VERSION_MINOR)

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

// The host's own build string (compiled into libsquish_core), compared with a plugin's cxx_build.
const char* host_cxx_build();

}  // namespace squish

// Defines the entry point of a C++ plugin that adds node kinds. Use once per plugin, at namespace
// scope. REGISTER_FN: void(squish::NodeRegistry&).
#define SQUISH_PLUGIN(NAME, VERSION, SUMMARY, REGISTER_FN)                                             \
  SQUISH_PLUGIN_METADATA(1, SQUISH_CXX_BUILD);                                                         \
  extern "C" SQUISH_PLUGIN_EXPORT const squish_plugin_info* squish_plugin_entry() {                    \
    static const squish_plugin_info info{                                                              \
        SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_info), NAME, VERSION, SUMMARY, nullptr, \
        SQUISH_CXX_BUILD, [](void* registry) { REGISTER_FN(*static_cast<::squish::NodeRegistry*>(registry)); }}; \
    return &info;                                                                                      \
  }
