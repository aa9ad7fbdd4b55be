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

// The command line.
struct Options {
  std::vector<std::pair<std::string, std::string>> sets;
  std::vector<std::string> extra_plugins;
  std::string pipeline_file, events_file;
  bool dry_run = false, events_stderr = false, no_progress = false, list_nodes = false;
  int threads = -1;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* opt) -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", opt));
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      std::exit(0);
    } else if (a == "--version") {
      fmt::print("squish-run {} (plugin ABI {}.{}; nodes: {})\n", SQUISH_VERSION, SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, host_cxx_build());
      std::exit(0);
    } else if (a == "--set" || a.starts_with("--set=")) {
      std::string kv = a == "--set" ? value("--set") : a.substr(6);
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) usage_error(fmt::format("--set expects NAME=VALUE, got '{}'", kv));
      o.sets.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    } else if (a == "--plugin") {
      o.extra_plugins.push_back(value("--plugin"));
    } else if (a == "--dry-run") {
      o.dry_run = true;
    } else if (a == "--events") {
      auto v = value("--events");
      if (v != "jsonl") usage_error(fmt::format("--events supports 'jsonl', got '{}'", v));
      o.events_stderr = true;
    } else if (a == "--events-file") {
      o.events_file = value("--events-file");
    } else if (a == "--no-progress") {
      o.no_progress = true;
    } else if (a == "--threads") {
      auto v = value("--threads");
      try {
        o.threads = std::stoi(v);
      } catch (...) {
        o.threads = -1;
      }
      if (o.threads < 0) usage_error(fmt::format("--threads expects a non-negative integer, got '{}'", v));
    } else if (a == "--list-nodes") {
      o.list_nodes = true;
    } else if (a.starts_with("-")) {
      usage_error(fmt::format("unknown option '{}'", a));
    } else if (o.pipeline_file.empty()) {
      o.pipeline_file = a;
    } else {
      usage_error(fmt::format("unexpected argument '{}' (one pipeline file per run)", a));
    }
  }
  return o;
}

// The JSON-lines stream: a file (opened before the pipeline is read, since orchestrators tail
// it; it must not be one of the run's inputs), stderr, or none.
std::FILE* open_events(const Options& o) {
  if (o.events_file.empty()) return o.events_stderr ? stderr : nullptr;
  std::error_code ec;
  if (std::filesystem::is_directory(o.events_file, ec)) usage_error(fmt::format("--events-file {}: is a directory", o.events_file));
  std::vector<std::string> inputs = {o.pipeline_file};
  for (const auto& kv : o.sets) inputs.push_back(kv.second);
  for (const auto& in : inputs)
    if (!in.empty() && std::filesystem::exists(o.events_file, ec) && std::filesystem::equivalent(o.events_file, in, ec))
      usage_error(fmt::format("--events-file {}: is the input '{}'; it would be overwritten", o.events_file, in));
  std::FILE* f = std::fopen(o.events_file.c_str(), "w");
  if (!f) {
    fmt::print(stderr, "squish-run: {}: cannot open events file: {}\n", o.events_file, std::strerror(errno));
    std::exit(static_cast<int>(ExitCode::Runtime));
  }
  return f;
}

// --list-nodes: every plugin in the search path, its types and node kinds with their parameters.
int list_nodes() {
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

// Loads, validates and runs (or describes) the pipeline; every failure becomes an exit code and
// one message.
struct Outcome {
  int code = 0;
  std::string message;
  size_t graph_peak = 0;
};

Outcome run_pipeline(const Options& o, EventSink& events) {
  Outcome r;
  try {
    PluginHost host;
    for (const auto& name : o.extra_plugins) host.load(name);
    Pipeline p = Pipeline::load(o.pipeline_file, o.sets, host);
    if (o.threads >= 0) p.threads = o.threads;
    events.emit("pipeline_start", {{"pipeline", p.name}, {"file", o.pipeline_file}, {"nodes", p.nodes.size()}, {"dry_run", o.dry_run}});
    if (o.dry_run) {
      fmt::print("{}", p.describe());
      fmt::print("pipeline is valid ({} nodes, {} edges)\n", p.nodes.size(), p.edges.size());
    } else {
      GraphRunner runner(p, events);
      try {
        runner.run();
      } catch (...) {
        r.graph_peak = runner.peak_rss();
        throw;
      }
      r.graph_peak = runner.peak_rss();
      print_waves(runner.waves(), o.no_progress || o.events_stderr);
    }
  } catch (const Error& e) {
    r.code = static_cast<int>(e.code());
    r.message = e.what();
  } catch (const std::bad_alloc&) {
    r.code = static_cast<int>(ExitCode::Runtime);
    r.message = "out of memory";
  } catch (const std::exception& e) {
    r.code = static_cast<int>(ExitCode::Runtime);
    r.message = fmt::format("internal error: {}", e.what());
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  // Under mpirun every rank runs this same command line; rank 0 speaks for the run (events,
  // progress), the others only report errors.
  if (launcher_ranks().rank != 0) {
    o.events_file.clear();
    o.events_stderr = false;
    o.no_progress = true;
  }
  std::FILE* jsonl = open_events(o);
  const bool tty = !o.no_progress && !o.events_stderr && ::isatty(STDERR_FILENO);
  EventSink events(jsonl, tty);
  if (o.list_nodes) return list_nodes();
  if (o.pipeline_file.empty()) usage_error("no pipeline file given");

  const Outcome r = run_pipeline(o, events);
  events.clear_line();
  if (r.code != 0) {
    events.emit("error", {{"code", r.code}, {"message", r.message}});
    if (jsonl != stderr) fmt::print(stderr, "squish-run: error: {}\n", r.message);
  }
  events.emit("pipeline_end", {{"ok", r.code == 0}, {"exit_code", r.code}, {"seconds", events.seconds()},
                               {"peak_rss_bytes", std::max(r.graph_peak, peak_rss_bytes())}});
  if (jsonl && jsonl != stderr) std::fclose(jsonl);
  return r.code;
}
