// squish-run: runs a YAML pipeline of stage plugins. See README.md ("Running pipelines").
#include "core/base/error.hpp"
#include "core/io/text_file.hpp"
#include "core/runtime/events.hpp"
#include "core/runtime/graph.hpp"
#include "core/runtime/launcher.hpp"
#include "core/runtime/pipeline.hpp"
#include "core/quant/type_registry.hpp"
#include "core/runtime/plugin_host.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

using namespace squish;

namespace {

const char* kUsage = R"(usage: squish-run [options] PIPELINE.yaml

Runs a Squish pipeline: stage plugins (dlopen'd shared objects) wired by a YAML file,
executed as a streaming TBB flow graph.

options:
  --set NAME=VALUE       set a pipeline variable (e.g. --set model=path/to/hf-folder)
  --set NODE.PARAM=VALUE override one node parameter (e.g. --set quant.threads=2)
  --plugin NAME|PATH     also load this plugin (e.g. one whose tensor types a recipe or GGUF uses)
  --threads N            worker threads (default: the pipeline's setting, else all cores)
  --dry-run              validate the pipeline, print the graph, run nothing
  --events jsonl         machine-readable progress: one JSON object per line on stderr
  --events-file PATH     the same JSON lines, written to PATH instead
  --no-progress          no progress line on the terminal
  --list-nodes           list the node kinds and tensor types of every plugin in the search path
  --version              print the version and plugin ABI
  -h, --help             this help

exit codes:
  0 success   2 usage or invalid pipeline   3 bad input data (model, GGUF, recipe)
  4 plugin error (missing, incompatible, unknown node kind)   5 runtime or I/O error
)";

[[noreturn]] void usage_error(const std::string& msg) {
  fmt::print(stderr, "squish-run: error: {} (see squish-run --help)\n", msg);
  std::exit(static_cast<int>(ExitCode::Usage));
}

// After a pipeline of several waves (score, plan, compress, verify), a line per wave: where the
// time and the memory went.
void print_waves(const std::vector<WaveStats>& waves, bool quiet) {
  if (quiet || waves.size() < 2 || !::isatty(STDERR_FILENO)) return;
  for (const auto& w : waves)
    fmt::print(stderr, "  {:<40} {:8.2f} s  peak {:7.1f} MiB{}\n", fmt::format("{}", fmt::join(w.nodes, ", ")), w.seconds,
               double(w.peak_rss_bytes) / (1 << 20), w.peak_is_wave_only ? "" : " (since start)");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<std::string, std::string>> sets;
  std::vector<std::string> extra_plugins;
  std::string pipeline_file, events_file;
  bool dry_run = false, events_stderr = false, no_progress = false, list_nodes = false;
  int threads = -1;

  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* opt) -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", opt));
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else if (a == "--version") {
      fmt::print("squish-run {} (plugin ABI {}.{}; nodes: {})\n", SQUISH_VERSION, SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, host_cxx_build());
      return 0;
    } else if (a == "--set" || a.starts_with("--set=")) {
      std::string kv = a == "--set" ? value("--set") : a.substr(6);
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) usage_error(fmt::format("--set expects NAME=VALUE, got '{}'", kv));
      sets.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    } else if (a == "--plugin") {
      extra_plugins.push_back(value("--plugin"));
    } else if (a == "--dry-run") {
      dry_run = true;
    } else if (a == "--events") {
      auto v = value("--events");
      if (v != "jsonl") usage_error(fmt::format("--events supports 'jsonl', got '{}'", v));
      events_stderr = true;
    } else if (a == "--events-file") {
      events_file = value("--events-file");
    } else if (a == "--no-progress") {
      no_progress = true;
    } else if (a == "--threads") {
      auto v = value("--threads");
      try {
        threads = std::stoi(v);
      } catch (...) {
        threads = -1;
      }
      if (threads < 0) usage_error(fmt::format("--threads expects a non-negative integer, got '{}'", v));
    } else if (a == "--list-nodes") {
      list_nodes = true;
    } else if (a.starts_with("-")) {
      usage_error(fmt::format("unknown option '{}'", a));
    } else if (pipeline_file.empty()) {
      pipeline_file = a;
    } else {
      usage_error(fmt::format("unexpected argument '{}' (one pipeline file per run)", a));
    }
  }

  // Under mpirun every rank runs this same command line; rank 0 speaks for the run (events,
  // progress), the others only report errors.
  if (launcher_ranks().rank != 0) {
    events_file.clear();
    events_stderr = false;
    no_progress = true;
  }
  std::FILE* jsonl = nullptr;
  if (!events_file.empty()) {
    // The events file is a stream (orchestrators tail it), so it is opened before the pipeline
    // is read; it must not be one of the run's inputs that the command line names.
    std::error_code ec;
    if (std::filesystem::is_directory(events_file, ec))
      usage_error(fmt::format("--events-file {}: is a directory", events_file));
    std::vector<std::string> inputs = {pipeline_file};
    for (const auto& kv : sets) inputs.push_back(kv.second);
    for (const auto& in : inputs)
      if (!in.empty() && std::filesystem::exists(events_file, ec) && std::filesystem::equivalent(events_file, in, ec))
        usage_error(fmt::format("--events-file {}: is the input '{}'; it would be overwritten", events_file, in));
    jsonl = std::fopen(events_file.c_str(), "w");
    if (!jsonl) {
      fmt::print(stderr, "squish-run: {}: cannot open events file: {}\n", events_file, std::strerror(errno));
      return static_cast<int>(ExitCode::Runtime);
    }
  } else if (events_stderr) {
    jsonl = stderr;
  }
  const bool tty = !no_progress && !events_stderr && ::isatty(STDERR_FILENO);
  EventSink events(jsonl, tty);

  if (list_nodes) {
    try {
      PluginHost host;
      host.load_all();
      for (const auto& p : host.plugins()) {
        fmt::print("{} {} (ABI {}.{}, {})\n  {}\n", p.name, p.version, p.abi_major, p.abi_minor, p.path, p.summary);
        for (const auto& t : p.types) {
          const auto* pt = plugin_type_by_name(t);
          fmt::print("  type {} (id {}): blocks of {} values in {} bytes ({:.4g} bits/weight){}\n", t, pt->ops.id, pt->ops.block_size,
                     pt->ops.block_bytes, 8.0 * pt->ops.block_bytes / pt->ops.block_size,
                     pt->has_dot() ? "" : ", no dot kernel (dequantized)");
        }
        for (const auto& k : p.kinds) {
          const auto* nk = host.find(k);
          fmt::print("  {}{}: {}\n", k, nk->parallel ? " [parallel]" : "", nk->summary);
          for (const auto& ps : nk->params)
            fmt::print("      {} ({}{}){}{}\n", ps.name, param_type_name(ps.type), ps.required ? ", required" : "",
                       ps.help.empty() ? "" : "  " + ps.help,
                       ps.required || ps.default_value.is_null() ? "" : "  [default " + json_text(ps.default_value) + "]");
        }
      }
      return 0;
    } catch (const Error& e) {
      fmt::print(stderr, "squish-run: error: {}\n", e.what());
      return static_cast<int>(e.code());
    }
  }
  if (pipeline_file.empty()) usage_error("no pipeline file given");

  int code = 0;
  std::string message;
  size_t graph_peak = 0;
  try {
    PluginHost host;
    for (const auto& name : extra_plugins) host.load(name);
    Pipeline p = Pipeline::load(pipeline_file, sets, host);
    if (threads >= 0) p.threads = threads;
    events.emit("pipeline_start", {{"pipeline", p.name}, {"file", pipeline_file}, {"nodes", p.nodes.size()}, {"dry_run", dry_run}});
    if (dry_run) {
      fmt::print("{}", p.describe());
      fmt::print("pipeline is valid ({} nodes, {} edges)\n", p.nodes.size(), p.edges.size());
    } else {
      GraphRunner runner(p, events);
      try {
        runner.run();
      } catch (...) {
        graph_peak = runner.peak_rss();
        throw;
      }
      graph_peak = runner.peak_rss();
      print_waves(runner.waves(), no_progress || events_stderr);
    }
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  } catch (const std::bad_alloc&) {
    code = static_cast<int>(ExitCode::Runtime);
    message = "out of memory";
  } catch (const std::exception& e) {
    code = static_cast<int>(ExitCode::Runtime);
    message = fmt::format("internal error: {}", e.what());
  }
  events.clear_line();
  if (code != 0) {
    events.emit("error", {{"code", code}, {"message", message}});
    if (jsonl != stderr) fmt::print(stderr, "squish-run: error: {}\n", message);
  }
  events.emit("pipeline_end", {{"ok", code == 0}, {"exit_code", code}, {"seconds", events.seconds()}, {"peak_rss_bytes", std::max(graph_peak, peak_rss_bytes())}});
  if (jsonl && jsonl != stderr) std::fclose(jsonl);
  return code;
}
