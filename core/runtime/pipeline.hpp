#pragma once
// Pipeline files (YAML): which plugins to load, the nodes (kind + parameters), the edges between
// them, and pipeline-level variables referenced as ${name} in parameters. Everything is
// validated before anything runs; every problem is reported as "file:line:col: message".
//
//   name: compress
//   plugins: [io, compress]
//   variables: {model: ~, output: out.gguf}      # ~ = required, set with --set model=...
//   settings: {max_in_flight: 8, max_in_flight_bytes: auto, threads: 0}
//   nodes:
//     recipe: {kind: compress.recipe, params: {model: "${model}", preset: Q8_0}}
//     read:   {kind: io.safetensors_source, params: {model: "${model}"}}
//     quant:  {kind: compress.quantize, parallel: true}
//     write:  {kind: compress.gguf_writer, params: {output: "${output}"}}
//   edges: ["recipe -> read", "recipe -> quant", "read -> quant", "quant -> write"]
#include "core/runtime/plugin_host.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace squish {

struct SourceLoc {
  std::string file;
  int line = 0;  // 1-based; 0 = unknown (e.g. the command line)
  int column = 0;
  std::string str() const;
};

struct PipelineNode {
  std::string name;
  std::string kind;
  const NodeKind* kind_info = nullptr;
  nlohmann::json params;   // validated, typed, defaults applied, variables substituted
  int concurrency = 1;     // 1 = serial; 0 = unlimited (parallel)
  SourceLoc loc;
};

struct PipelineEdge {
  std::string from, to;
  SourceLoc loc;
};

struct PipelineVariable {
  std::string value;  // as text; parsed by the parameter's type where it is used
  bool set = false;   // has a default or was given with --set
  std::string help;
};

struct Pipeline {
  std::string name;
  std::string description;
  std::string file;  // path of the pipeline file
  std::vector<std::string> plugins;
  std::vector<std::string> plugin_paths;
  std::map<std::string, PipelineVariable> variables;
  std::vector<PipelineNode> nodes;  // in topological order after load()
  std::vector<PipelineEdge> edges;
  int max_in_flight = 8;  // tensors in flight between a source and the sinks
  // Bytes of source messages in flight (a large tensor takes several of the max_in_flight slots):
  // nullopt = "auto", an eighth of the memory available when the source starts; 0 = no byte bound.
  std::optional<uint64_t> max_in_flight_bytes;
  int threads = 0;        // 0 = all cores

  // overrides: "--set" pairs: `name=value` for variables, `node.param=value` for parameters.
  // Loads the listed plugins into `host`. Throws Error(Usage) for invalid files, Error(Plugin)
  // for plugin problems, each message prefixed with the file location.
  static Pipeline load(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                       PluginHost& host);

  std::vector<std::string> predecessors(const std::string& node) const;
  std::vector<std::string> successors(const std::string& node) const;
  const PipelineNode& node(const std::string& name) const;
  // Human description of the graph (for --dry-run).
  std::string describe() const;
};

}  // namespace squish
