// squish-run end to end: pipelines, plugin host errors, bad inputs, limits, events.
#include "core/io/safetensors_writer.hpp"
#include "core/io/sha256.hpp"
#include "core/runtime/flight_budget.hpp"
#include "core/runtime/plugin_api.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

using namespace squish;
namespace fs = std::filesystem;

namespace {

std::string pipelines() { return test::source_dir() + "/pipelines"; }
std::string testkit_env() { return std::string("SQUISH_PLUGIN_PATH=") + SQUISH_TEST_PLUGIN_DIR + " "; }

// Runs a testkit source -> slow sink pipeline (settings and the nodes' parameters as the inside
// of YAML flow mappings) and returns what the sink saw.
nlohmann::json run_counter_to_sink(const std::string& settings, const std::string& source, const std::string& sink) {
  test::TempDir tmp;
  test::write_file(tmp / "p.yaml", fmt::format("name: bounded\nplugins: [testkit]\nsettings: {{{}}}\nnodes:\n"
                                               "  src: {{kind: testkit.counter_source, params: {{{}}}}}\n"
                                               "  sink: {{kind: testkit.slow_sink, parallel: true, params: {{{}, output: '${{pipeline_dir}}/out.json'}}}}\n"
                                               "edges: [src -> sink]\n",
                                               settings, source, sink));
  auto r = test::run(testkit_env() + test::binary_dir() + "/bin/squish-run " + tmp / "p.yaml");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(test::read_file(tmp / "out.json")) : nlohmann::json::object();
}

// Exactly one line of error output, naming what it must.
void expect_one_line_error(const test::RunResult& r, int code, const std::string& must_contain) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << "stderr: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: " << r.err;
}

std::vector<nlohmann::json> read_events(const std::string& path) {
  std::vector<nlohmann::json> v;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) v.push_back(nlohmann::json::parse(line));  // throws if not JSON
  return v;
}

// A small valid safetensors file with the given header JSON and data bytes.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes, uint64_t header_len_override = 0) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header_len_override ? header_len_override : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\0');
}

std::string checksum_cmd(const std::string& model, const std::string& out, const std::string& extra = "") {
  return "--set model=" + model + " --set output=" + out + " " + extra + " " + pipelines() + "/checksum.yaml";
}

}  // namespace

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex({}), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 h;
  h.update("abc");
  EXPECT_EQ(h.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 m;
  std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i) m.update(a);
  EXPECT_EQ(m.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// The acceptance pipeline: coder-28m streams through a pass-through node into a manifest whose
// entries must equal the safetensors headers and `sha256sum` of each tensor's bytes.
TEST(Runtime, ChecksumManifestMatchesSafetensorsBytes) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string model = test::shared("models/coder-28m");
  auto r = test::squish_run(checksum_cmd(model, tmp / "manifest.json", "--events-file " + tmp / "events.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto manifest = nlohmann::json::parse(test::read_file(tmp / "manifest.json"));
  std::map<std::string, nlohmann::json> got;
  for (auto& e : manifest["tensors"]) got[e["name"]] = e;

  size_t checked = 0;
  for (auto& de : fs::directory_iterator(model)) {
    if (de.path().extension() != ".safetensors") continue;
    const std::string file = de.path().string();
    const std::string bytes = test::read_file(file);
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    auto header = nlohmann::json::parse(bytes.substr(8, n));
    for (auto& [name, info] : header.items()) {
      if (name == "__metadata__") continue;
      ASSERT_TRUE(got.count(name)) << name;
      const auto& e = got[name];
      EXPECT_EQ(e["dtype"], info["dtype"]);
      EXPECT_EQ(e["shape"], info["shape"]);
      const uint64_t b = info["data_offsets"][0], end = info["data_offsets"][1];
      EXPECT_EQ(e["bytes"].get<uint64_t>(), end - b);
      // Independent hash: coreutils on the raw byte range.
      auto h = test::run(fmt::format("tail -c +{} '{}' | head -c {} | sha256sum", 8 + n + b + 1, file, end - b));
      EXPECT_EQ(h.out.substr(0, 64), e["sha256"].get<std::string>()) << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 98u);
  EXPECT_EQ(manifest["tensor_count"], 98);

  auto events = read_events(tmp / "events.jsonl");
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.front()["event"], "pipeline_start");
  EXPECT_EQ(events.back()["event"], "pipeline_end");
  EXPECT_EQ(events.back()["exit_code"], 0);
  EXPECT_GT(events.back()["peak_rss_bytes"].get<uint64_t>(), 0u);
  int finishes = 0;
  for (auto& e : events)
    if (e["event"] == "node_finish") {
      ++finishes;
      if (e["node"] == "check") {
        EXPECT_EQ(e["messages_in"], 98);
      }
    }
  EXPECT_EQ(finishes, 3);
}

TEST(Runtime, DryRunValidatesWithoutRunning) {
  test::TempDir tmp;
  auto r = test::squish_run("--dry-run " + checksum_cmd("/nonexistent", tmp / "m.json"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("pipeline is valid"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp / "m.json"));
}

TEST(Runtime, HelpAndVersion) {
  auto h = test::squish_run("--help");
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.out.find("exit codes"), std::string::npos);
  auto v = test::squish_run("--version");
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_NE(v.out.find("plugin ABI"), std::string::npos);
  expect_one_line_error(test::squish_run("--bogus x.yaml"), 2, "unknown option '--bogus'");
}

struct BadSafetensorsCase {
  const char* name;
  std::string header;
  size_t data;
  uint64_t header_len;
  const char* message;
};

TEST(Runtime, BadSafetensorsInputs) {
  const std::vector<BadSafetensorsCase> cases = {
      {"truncated", "", 0, 0, "shorter than the 8-byte header"},
      {"header_past_eof", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 5000, "runs past end of file"},
      {"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, 0, "overlap"},
      {"unknown_dtype", R"({"a":{"dtype":"F8_E9M9","shape":[1],"data_offsets":[0,1]}})", 1, 0, "unknown dtype"},
      {"shape_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, 0, "needs 12"},
      {"bad_json", R"({"a":{"dtype":"F32",)", 0, 0, "not valid JSON"},
      {"offsets_past_data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, 0, "run past the data section"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    const std::string file = tmp / "model.safetensors";
    if (std::string(c.name) == "truncated") test::write_file(file, "abc");
    else write_raw_safetensors(file, c.header, c.data, c.header_len);
    auto r = test::squish_run(checksum_cmd(file, tmp / "m.json"));
    expect_one_line_error(r, 3, c.message);
    EXPECT_NE(r.err.find(file), std::string::npos) << "error must name the file: " << r.err;
    EXPECT_FALSE(fs::exists(tmp / "m.json"));
    // Nothing partial: no temporary left behind either.
    for (auto& de : fs::directory_iterator(tmp.path())) EXPECT_EQ(de.path().filename(), "model.safetensors");
  }
}

TEST(Runtime, NanWeightsFailAndLeaveNothing) {
  test::TempDir tmp;
  const std::string file = tmp / "nan.safetensors";
  {
    std::vector<float> v(64, 1.0f);
    v[17] = std::numeric_limits<float>::quiet_NaN();
    SafetensorsWriter w(file, {{"w.ok", DType::F32, {64}}, {"w.bad", DType::F32, {64}}});
    std::vector<float> ok(64, 0.5f);
    w.write("w.ok", std::as_bytes(std::span(ok)));
    w.write("w.bad", std::as_bytes(std::span(v)));
    w.commit();
  }
  auto r = test::squish_run(checksum_cmd(file, tmp / "m.json"));
  expect_one_line_error(r, 3, "tensor 'w.bad' has a non-finite value (nan) at element 17");
  EXPECT_FALSE(fs::exists(tmp / "m.json"));
  // With the check off, the same file streams fine.
  auto ok = test::squish_run(checksum_cmd(file, tmp / "m.json", "--set check_finite=false"));
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(tmp / "m.json"));
}

TEST(Runtime, UnwritableOutputIsRuntimeError) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto r = test::squish_run(checksum_cmd(test::shared("models/stories260K"), tmp / "no/such/dir/m.json"));
  expect_one_line_error(r, 5, "cannot create output");
  EXPECT_FALSE(fs::exists(tmp / "no"));
}

// Pipeline validation: each defect reported with file:line:col, exit 2 (4 for plugin problems).
TEST(Runtime, PipelineValidationErrors) {
  struct Case {
    const char* name;
    const char* yaml;
    int code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"malformed_yaml", "name: x\nplugins: [io\nnodes: {}\n", 2, "YAML syntax error"},
      {"unknown_top_key", "name: x\nplugins: [io]\nnodez: {}\n", 2, ":3:1: unknown key 'nodez' (did you mean 'nodes'?)"},
      {"unknown_kind", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensor_source}\n", 4,
       ":4:13: unknown node kind 'io.safetensor_source' (did you mean 'io.safetensors_source'?)"},
      {"missing_plugin", "name: x\nplugins: [nosuch]\nnodes:\n  a: {kind: io.passthrough}\n", 4,
       ":2:11: plugin 'nosuch' not found (looked for "},
      {"missing_param", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensors_source}\n", 2,
       "missing required parameter 'model'"},
      {"unknown_param", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m, modl: x}}\n", 2,
       ":4:55: node 'a' (io.safetensors_source) has no parameter 'modl'"},
      {"type_error", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m, release_pages: maybe}}\n", 2,
       "must be true or false, got 'maybe'"},
      {"dangling_edge", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m}}\nedges: [a -> b]\n", 2,
       ":5:9: edge refers to undefined node 'b'"},
      {"cycle",
       "name: x\nplugins: [io]\nnodes:\n  s: {kind: io.safetensors_source, params: {model: m}}\n  a: {kind: io.passthrough}\n"
       "  b: {kind: io.passthrough}\nedges: [s -> a, a -> b, b -> a]\n", 2, "cycle through nodes a, b"},
      {"no_input", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.passthrough}\n", 2, "has no input edge"},
      {"undefined_variable", "name: x\nplugins: [io]\nnodes:\n  a: {kind: io.safetensors_source, params: {model: '${nope}'}}\n", 2,
       "reference to undefined variable 'nope'"},
      {"variable_name_digit", "name: x\nplugins: [io]\nvariables: {9a: m}\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       "bad variable name '9a'"},
      {"variable_name_dash", "name: x\nplugins: [io]\nvariables: {a-b: m}\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       "bad variable name 'a-b'"},
      {"variable_name_utf8", "name: x\nplugins: [io]\nvariables: {\"\u00e9\": m}\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       "bad variable name"},
      {"node_name_dash_first", "name: x\nplugins: [io]\nnodes:\n  -a: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       "bad node name '-a'"},
      {"node_name_dot", "name: x\nplugins: [io]\nnodes:\n  a.b: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       "bad node name 'a.b'"},
      {"in_flight_bytes", "name: x\nplugins: [io]\nsettings: {max_in_flight_bytes: lots}\nnodes:\n  a: {kind: io.safetensors_source, params: {model: m}}\n", 2,
       ":3:33: 'max_in_flight_bytes' must be auto, 0 or a size such as 4G, got 'lots'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    test::write_file(tmp / "p.yaml", c.yaml);
    auto r = test::squish_run("--dry-run " + tmp / "p.yaml");
    expect_one_line_error(r, c.code, c.message);
    EXPECT_NE(r.err.find(tmp / "p.yaml"), std::string::npos) << r.err;
  }
}

TEST(Runtime, SetOverridesNodeParameters) {
  auto r = test::squish_run("--dry-run --set model=m --set check.to_f32=true " + pipelines() + "/checksum.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(R"("to_f32":true)"), std::string::npos) << r.out;
  expect_one_line_error(test::squish_run("--dry-run --set model=m --set check.to_f64=true " + pipelines() + "/checksum.yaml"), 2,
                        "has no parameter 'to_f64' (did you mean 'to_f32'?)");
  expect_one_line_error(test::squish_run("--dry-run --set model=m --set check.to_f32=perhaps " + pipelines() + "/checksum.yaml"), 2,
                        "--set check.to_f32: parameter 'to_f32' of node 'check' must be true or false");
  expect_one_line_error(test::squish_run("--dry-run --set model=m --set chek.to_f32=1 " + pipelines() + "/checksum.yaml"), 2,
                        "the pipeline has no node 'chek'");
}

TEST(Runtime, PluginHostErrors) {
  const std::string dir = SQUISH_TEST_PLUGIN_DIR;
  struct Case {
    const char* plugin;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"noentry", "not a Squish plugin: no 'squish_plugin_entry' entry point"},
      {"badabi", fmt::format("plugin ABI {}.0 is incompatible with this squish-run (ABI {}.{})", SQUISH_ABI_MAJOR + 41,
                             SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR)},
      {"dupkind", "node kind 'io.passthrough' is already provided by"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.plugin);
    test::TempDir tmp;
    test::write_file(tmp / "p.yaml", fmt::format("name: x\nplugin_paths: [{}]\nplugins: [io, {}]\nnodes:\n  a: {{kind: io.safetensors_source, params: {{model: m}}}}\n", dir, c.plugin));
    // badabi's constructor leaves a mark when it runs: the refusal comes from the file's metadata,
    // before dlopen, so none of its code runs.
    expect_one_line_error(
        test::run("SQUISH_TESTKIT_CTOR_MARK=" + tmp / "mark" + " " + test::binary_dir() + "/bin/squish-run --dry-run " + tmp / "p.yaml"), 4,
        c.message);
    EXPECT_FALSE(std::filesystem::exists(tmp / "mark")) << "the plugin's code ran before it was refused";
  }
}

// A file that is not an ELF object, or whose metadata section is cut short, is refused as not a
// plugin; nothing of it is loaded.
TEST(Runtime, PluginFilesThatAreNotPluginsAreRefusedBeforeLoading) {
  test::TempDir tmp;
  test::write_file(tmp / "squish_text.so", std::string(100, 'x'));
  std::string lib = test::read_file(std::string(SQUISH_TEST_PLUGIN_DIR) + "/squish_testkit.so");
  const size_t at = lib.find("SQUISHPL");
  ASSERT_NE(at, std::string::npos) << "testkit carries its metadata";
  std::string unmarked = lib;
  unmarked.replace(at, 8, "XXXXXXXX");
  test::write_file(tmp / "squish_unmarked.so", unmarked);
  test::write_file(tmp / "squish_cut.so", lib.substr(0, lib.size() / 2));  // section table cut off
  for (const auto& [name, message] : std::vector<std::pair<std::string, std::string>>{
           {"text", "not a 64-bit little-endian ELF shared object"},
           {"unmarked", "its .squish_plugin section has no SQUISHPL mark"},
           {"cut", "the section table lies outside the file"}}) {
    SCOPED_TRACE(name);
    test::write_file(tmp / "p.yaml", fmt::format("name: x\nplugin_paths: [{}]\nplugins: [{}]\nnodes: {{}}\n", tmp.path().string(), name));
    expect_one_line_error(test::squish_run("--dry-run " + tmp / "p.yaml"), 4, "not a Squish plugin: " + message);
  }
}

// The limiter bounds messages in flight however fast the source is and however slow the sink.
TEST(Runtime, InFlightMessagesAreBounded) {
  const auto out = run_counter_to_sink("max_in_flight: 3", "count: 200", "sleep_us: 300");
  EXPECT_EQ(out["received"], 200);
  EXPECT_LE(out["max_live"].get<int>(), 3);
  EXPECT_GE(out["max_live"].get<int>(), 1);
}

// The byte budget against a model of oneTBB's limiter (count L in [0, slots], +1 when it admits
// a message while L < slots, moved by the budget's decrements): in random orders of producing,
// admitting and releasing tensors of random sizes, the budget never asks for a move the limiter
// would clamp, L always equals what live messages hold, a message is admitted only when the
// ones already in flight weigh at most slots - 1 (so bytes in flight stay below the bound plus
// the newest tensor), and everything is given back at the end.
TEST(FlightBudget, KeepsTheLimitersAccountExact) {
  std::mt19937_64 rng(7);
  for (const size_t slots : {1, 3, 8}) {
    for (const uint64_t unit : {0, 100, 1000}) {
      SCOPED_TRACE(fmt::format("{} slots of {} bytes", slots, unit));
      FlightBudget budget(slots);
      budget.set_unit(unit);
      int64_t limiter = 0;  // the limiter's count
      std::vector<std::shared_ptr<FlightBudget::Share>> admitted;
      std::shared_ptr<FlightBudget::Share> waiting;  // produced, not admitted yet (the source reads one ahead)
      int produced = 0;
      auto held = [&] {
        int64_t h = waiting ? int64_t(waiting->held) - 1 : 0;
        for (const auto& s : admitted) h += int64_t(s->held);
        return h;
      };
      while (produced < 400 || waiting || !admitted.empty()) {
        const int action = static_cast<int>(rng() % 3);
        if (action == 0 && !waiting && produced < 400) {
          size_t take = 0;
          const uint64_t bytes = rng() % 4 == 0 ? rng() % (12 * std::max<uint64_t>(unit, 1)) : rng() % std::max<uint64_t>(unit, 1);
          waiting = budget.admit(bytes, take);
          ++produced;
          ASSERT_GE(waiting->weight, 1u);
          ASSERT_LE(waiting->weight, slots);
          if (unit > 0) {
            ASSERT_EQ(waiting->weight, std::clamp<uint64_t>((bytes + unit - 1) / unit, 1, slots));
          }
          ASSERT_LE(limiter + int64_t(take), int64_t(slots)) << "a decrement the limiter would clamp";
          limiter += int64_t(take);
        } else if (action == 1 && waiting && limiter < int64_t(slots)) {
          size_t in_flight = 0;
          for (const auto& s : admitted) in_flight += s->weight;
          ASSERT_LE(in_flight, slots - 1);
          ++limiter;
          admitted.push_back(std::move(waiting));
          waiting = nullptr;
        } else if (action == 2 && !admitted.empty()) {
          const size_t k = rng() % admitted.size();
          const auto s = admitted[k];
          admitted.erase(admitted.begin() + int64_t(k));
          const size_t back = budget.release(s);
          ASSERT_LE(int64_t(back), limiter) << "a release the limiter would clamp";
          limiter -= int64_t(back);
        }
        ASSERT_EQ(limiter, held());
      }
      EXPECT_EQ(limiter, 0);
    }
  }
}

// The same budget in a graph: with 4 slots of 1 KiB, a 10,000-byte tensor takes every slot, so
// no two of them are alive at once (counting messages alone lets the source run ahead to the
// next one, two messages later); it still passes, and the 16-byte ones between them flow.
TEST(Runtime, InFlightBytesAreBounded) {
  const auto out = run_counter_to_sink("max_in_flight: 4, max_in_flight_bytes: 4096", "count: 300, bytes: 16, big_bytes: 10000, big_every: 2",
                                       "sleep_us: 200");
  EXPECT_EQ(out["received"], 300);
  EXPECT_LT(out["max_live_bytes"].get<int64_t>(), 2 * 10000);
}

// Progress events carry the time left at the rate since the node's first report: each
// eta_seconds is that rate times the remaining work, recomputed here from the events' own
// times (rounded to 1 ms, eta to 0.1 s: the tolerance), and it comes once a second has passed.
TEST(Runtime, ProgressEventsEstimateTimeLeft) {
  test::TempDir tmp;
  test::write_file(tmp / "p.yaml", "name: eta\nplugins: [testkit]\nsettings: {max_in_flight: 2}\nnodes:\n"
                                   "  src: {kind: testkit.counter_source, params: {count: 80}}\n"
                                   "  sink: {kind: testkit.slow_sink, params: {output: '${pipeline_dir}/out.json', sleep_us: 50000}}\n"
                                   "edges: [src -> sink]\n");
  auto r = test::run(testkit_env() + test::binary_dir() + "/bin/squish-run --events-file " + tmp / "ev.jsonl" + " " + tmp / "p.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(test::read_file(tmp / "ev.jsonl"));
  std::optional<std::pair<double, uint64_t>> first;
  int with_eta = 0;
  for (std::string line; std::getline(lines, line);) {
    const auto e = nlohmann::json::parse(line);
    if (e["event"] != "node_progress" || e["node"] != "src") continue;
    const double t = e["t"].get<double>();
    const uint64_t done = e["done"].get<uint64_t>(), total = e["total"].get<uint64_t>();
    if (!first) {
      first = {t, done};
      EXPECT_FALSE(e.contains("eta_seconds"));
      continue;
    }
    if (!e.contains("eta_seconds")) {
      EXPECT_TRUE(t - first->first < 1.0 + 1e-3 || done >= total) << line;
      continue;
    }
    ++with_eta;
    const double rate = (t - first->first) / double(done - first->second);
    const double slack = 2e-3 / double(done - first->second) * double(total - done) + 0.05 + 1e-9;
    EXPECT_NEAR(e["eta_seconds"].get<double>(), rate * double(total - done), slack) << line;
  }
  EXPECT_GT(with_eta, 0);
}

// A source with an input edge starts only after that node has finished: every document the
// node emitted has reached its consumers before the first tensor of the gated source.
TEST(Runtime, GatedSourceStartsAfterItsInputsFinish) {
  test::TempDir tmp;
  const std::string nodes =
      "  first: {kind: testkit.counter_source, params: {count: 20}}\n"
      "  announce: {kind: testkit.announce}\n"
      "  second: {kind: testkit.counter_source, params: {count: 10, needs_documents: 1}}\n"
      "  sink: {kind: testkit.slow_sink, parallel: true, params: {output: '${pipeline_dir}/out.json', sleep_us: 0}}\n";
  test::write_file(tmp / "p.yaml", "name: gated\nplugins: [testkit]\nnodes:\n" + nodes +
                                       "edges: [first -> announce, announce -> second, announce -> sink, second -> sink]\n");
  auto r = test::run(testkit_env() + test::binary_dir() + "/bin/squish-run --events-file " + tmp / "ev.jsonl " + tmp / "p.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto out = nlohmann::json::parse(test::read_file(tmp / "out.json"));
  EXPECT_EQ(out["received"], 10);
  EXPECT_EQ(out["documents"], 1);
  EXPECT_EQ(out["documents_after_tensors"], false);
  std::vector<nlohmann::json> waves;
  for (auto& e : read_events(tmp / "ev.jsonl"))
    if (e["event"] == "wave_finish") waves.push_back(e);
  ASSERT_EQ(waves.size(), 2u);
  EXPECT_EQ(waves[0]["nodes"], nlohmann::json({"first", "announce"}));
  EXPECT_EQ(waves[1]["sources"], nlohmann::json({"second"}));
  EXPECT_GT(waves[1]["peak_rss_bytes"].get<uint64_t>(), 0u);

  // Without the edge the second source starts at once, before the document exists.
  test::write_file(tmp / "q.yaml", "name: ungated\nplugins: [testkit]\nnodes:\n" + nodes +
                                       "edges: [first -> announce, announce -> sink, second -> sink]\n");
  expect_one_line_error(test::run(testkit_env() + test::binary_dir() + "/bin/squish-run " + tmp / "q.yaml"), 3,
                        "node 'second': counter source: started after 0 of 1 documents");
}

// Variables may refer to variables; a cycle is an error naming it.
TEST(Runtime, VariablesExpandInsideVariables) {
  test::TempDir tmp;
  test::write_file(tmp / "p.yaml", "name: x\nplugins: [io]\nvariables: {out: ~, manifest: '${out}.json'}\nnodes:\n"
                                   "  a: {kind: io.safetensors_source, params: {model: m}}\n"
                                   "  b: {kind: io.checksum_manifest, params: {output: '${manifest}'}}\nedges: [a -> b]\n");
  auto r = test::squish_run("--dry-run --set out=/tmp/zz " + tmp / "p.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("/tmp/zz.json"), std::string::npos) << r.out;
  expect_one_line_error(test::squish_run("--dry-run --set 'out=${manifest}' " + tmp / "p.yaml"), 2,
                        "variables refer to each other in a cycle: manifest -> out -> manifest");
}

// The first error cancels the graph, is reported once, and sinks do not write.
TEST(Runtime, FirstErrorCancelsGraph) {
  test::TempDir tmp;
  test::write_file(tmp / "p.yaml", "name: failing\nplugins: [testkit]\nnodes:\n"
                                   "  src: {kind: testkit.counter_source, params: {count: 1000, fail_at: 10}}\n"
                                   "  sink: {kind: testkit.slow_sink, params: {output: '${pipeline_dir}/out.json', sleep_us: 0}}\n"
                                   "edges: [src -> sink]\n");
  auto r = test::run(testkit_env() + test::binary_dir() + "/bin/squish-run --events-file " + tmp / "ev.jsonl " + tmp / "p.yaml");
  expect_one_line_error(r, 3, "node 'src': counter source: planned failure at message 10");
  EXPECT_FALSE(fs::exists(tmp / "out.json"));
  auto events = read_events(tmp / "ev.jsonl");
  int errors = 0;
  for (auto& e : events) errors += e["event"] == "error";
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(events.back()["event"], "pipeline_end");
  EXPECT_EQ(events.back()["exit_code"], 3);
}

// Peak RSS must not grow with checkpoint size: stream coder-28m (57 MB) and a generated 2 GB
// checkpoint with tensors of the same size, and compare the peaks.
TEST(Runtime, PeakRssDoesNotGrowWithModelSize) {
  SQUISH_SKIP_UNDER_SANITIZERS("shadow memory grows with every mapped byte");
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string big = tmp / "big.safetensors";
  const int n_tensors = 256;
  const int64_t rows = 8192, cols = 512;  // bf16: 8 MiB each, as coder-28m's embedding
  {
    std::vector<SafetensorsWriter::Decl> decls;
    for (int i = 0; i < n_tensors; ++i) decls.push_back({fmt::format("layer.{}.weight", i), DType::BF16, {rows, cols}});
    SafetensorsWriter w(big, decls);
    std::vector<uint16_t> buf(rows * cols);
    uint32_t s = 12345;
    for (int i = 0; i < n_tensors; ++i) {
      for (auto& x : buf) s = s * 1664525u + 1013904223u, x = static_cast<uint16_t>(0x3c00 | (s >> 25));  // finite values
      w.write(fmt::format("layer.{}.weight", i), std::as_bytes(std::span(buf)));
    }
    w.commit();
  }
  ASSERT_GE(fs::file_size(big), 2ull << 30);
  auto peak = [&](const std::string& model, const std::string& tag) {
    auto r = test::squish_run(checksum_cmd(model, tmp / (tag + ".json"), "--threads 2 --events-file " + tmp / (tag + ".jsonl")));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    auto ev = read_events(tmp / (tag + ".jsonl"));
    return ev.back()["peak_rss_bytes"].get<uint64_t>();
  };
  const uint64_t small_rss = peak(test::shared("models/coder-28m"), "coder");
  const uint64_t big_rss = peak(big, "big");
  std::printf("[ figures ] peak RSS streaming coder-28m (57 MB): %.1f MiB; 2 GiB synthetic: %.1f MiB\n", small_rss / 1048576.0,
              big_rss / 1048576.0);
  // 36x more data; the bound is max_in_flight (8) x the largest tensor (8 MiB) plus the process.
  EXPECT_LT(big_rss, small_rss + (80ull << 20));
  EXPECT_LT(big_rss, 300ull << 20);
}
