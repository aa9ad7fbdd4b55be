// The bad-input suite, by class: what a hostile or careless user feeds squish-run. Every case
// runs the real binary on a real pipeline and asserts the documented exit code, one line on
// stderr naming the file (or parameter) and the problem, and that nothing was written,
// overwritten or left behind (the working folder is compared byte for byte before and after).
#include "tests/test_util.hpp"

#include "core/gguf/gguf.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <csignal>
#include <functional>
#include <limits>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace fs = std::filesystem;
using namespace squish;
using namespace squish::test;
using nlohmann::json;

namespace {

std::string q(const std::string& s) {  // one shell word
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
std::string pipeline(const std::string& name) { return q(source_dir() + "/pipelines/" + name + ".yaml"); }
const std::string kStories = source_dir() + "/models/stories260K";

// Every file under `dir` with its bytes: what a run must leave exactly as it was.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string rel = fs::relative(e.path(), dir).string();
    if (e.is_symlink()) files[rel] = "-> " + fs::read_symlink(e.path()).string();
    else if (e.is_regular_file()) files[rel] = read_file(e.path().string());
    else files[rel] = "<dir>";
  }
  return files;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// The refusal contract: exit code, one stderr line that says which file and what is wrong, no
// raw library text, and the working folder untouched.
void expect_refused(const RunResult& r, int code, const std::vector<std::string>& mentions) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  const auto ls = lines(r.err);
  ASSERT_EQ(ls.size(), 1u) << "stderr:\n" << r.err;
  EXPECT_EQ(ls[0].rfind("squish-run: ", 0), 0u) << ls[0];
  for (const auto& m : mentions) EXPECT_NE(ls[0].find(m), std::string::npos) << "'" << m << "' not in: " << ls[0];
  for (const char* raw : {"json.exception", "internal error", "basic_filebuf", "std::", "yaml-cpp"})
    EXPECT_EQ(ls[0].find(raw), std::string::npos) << "library text in: " << ls[0];
}

// A scratch folder holding copies of what a case needs; `unchanged()` asserts nothing in it moved.
class Scratch {
 public:
  Scratch() { fs::create_directories(dir_.path()); }
  std::string operator/(const std::string& rel) const { return dir_ / rel; }
  const fs::path& path() const { return dir_.path(); }
  std::string model() {  // a copy of stories260K, to corrupt
    const std::string m = dir_ / "model";
    if (!fs::exists(m)) fs::copy(kStories, m);
    return m;
  }
  void freeze() { before_ = snapshot(dir_.path()); }
  void expect_unchanged() const {
    const auto after = snapshot(dir_.path());
    for (const auto& [f, bytes] : after)
      if (!before_.count(f)) ADD_FAILURE() << "left behind: " << f;
    for (const auto& [f, bytes] : before_) {
      auto it = after.find(f);
      if (it == after.end()) ADD_FAILURE() << "removed: " << f;
      else if (it->second != bytes) ADD_FAILURE() << "modified: " << f;
    }
  }

 private:
  TempDir dir_;
  std::map<std::string, std::string> before_;
};

// A good Q8_0 GGUF of stories260K, built once.
const std::string& good_gguf() {
  static TempDir dir;
  static const std::string path = [] {
    const std::string p = dir / "stories260K-q8.gguf";
    const auto r = squish_run(pipeline("compress") + " --set model=" + q(kStories) + " --set preset=Q8_0 --set output=" + q(p));
    if (r.exit_code != 0) throw std::runtime_error("cannot build the test GGUF: " + r.err);
    return p;
  }();
  return path;
}

// --- safetensors surgery: a checkpoint rewritten with tensors removed, renamed, reshaped... ---
struct StEntry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
std::vector<StEntry> read_st(const std::string& path) {
  const std::string f = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, f.data(), 8);
  const json h = json::parse(f.substr(8, n));
  std::vector<StEntry> out;
  for (const auto& [name, t] : h.items()) {
    if (name == "__metadata__") continue;
    const auto off = t.at("data_offsets");
    out.push_back({name, t.at("dtype"), t.at("shape").get<std::vector<int64_t>>(),
                   f.substr(8 + n + off[0].get<size_t>(), off[1].get<size_t>() - off[0].get<size_t>())});
  }
  return out;
}
// Writes entries in order (duplicates allowed: the header is built as text).
void write_st(const std::string& path, const std::vector<StEntry>& entries) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}", data;
  for (const auto& e : entries) {
    header += fmt::format(",\"{}\":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}", e.name, e.dtype,
                          json(e.shape).dump(), data.size(), data.size() + e.bytes.size());
    data += e.bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  write_file(path, out + header + data);
}
StEntry* find(std::vector<StEntry>& es, const std::string& name) {
  for (auto& e : es)
    if (e.name == name) return &e;
  return nullptr;
}

void edit_config(const std::string& model, const std::function<void(json&)>& f) {
  json c = json::parse(read_file(model + "/config.json"));
  f(c);
  write_file(model + "/config.json", c.dump(2));
}

// --- GGUF surgery: a copy of the good file with metadata or tensor data changed ---
void patch_gguf(const std::string& dst, const std::function<void(std::vector<gguf::KeyValue>&)>& meta,
                const std::function<void(const gguf::TensorInfo&, std::vector<std::byte>&)>& data = {}) {
  const gguf::Reader r = gguf::Reader::open(good_gguf());
  std::vector<gguf::KeyValue> kv = r.metadata();
  meta(kv);
  std::vector<gguf::TensorDecl> decls;
  for (const auto& t : r.tensors()) decls.push_back({t.name, t.ne, t.type});
  gguf::Writer w(dst, kv, decls);
  for (const auto& t : r.tensors()) {
    std::vector<std::byte> bytes(t.data.begin(), t.data.end());
    if (data) data(t, bytes);
    w.write_tensor(t.name, bytes);
  }
  w.commit();
}
void set_key(std::vector<gguf::KeyValue>& kv, const std::string& key, gguf::Value v) {
  for (auto& [k, val] : kv)
    if (k == key) {
      val = std::move(v);
      return;
    }
  kv.emplace_back(key, std::move(v));
}

std::string compress_cmd(const std::string& model, const std::string& output, const std::string& extra = "--set preset=Q8_0") {
  return pipeline("compress") + " --set model=" + q(model) + " " + extra + " --set output=" + q(output);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Class 1: parsers on hostile structure (deep nesting, wrong JSON types, directories as files).
// ---------------------------------------------------------------------------------------------

TEST(BadInputParsers, DeeplyNestedRecipeIsRefused) {
  Scratch s;
  for (const std::string& text : {std::string(100000, '[') + std::string(100000, ']'),
                                  "{\"attention\":" + std::string(300, '{') + std::string(300, '}') + "}"}) {
    write_file(s / "deep.json", text);
    s.freeze();
    expect_refused(squish_run(compress_cmd(kStories, s / "out.gguf", "--set recipe=" + q(s / "deep.json"))), 3, {"deep.json", "deep"});
    s.expect_unchanged();
  }
}

TEST(BadInputParsers, RecipeFieldsOfTheWrongTypeAreRefused) {
  Scratch s;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"name": 5, "preset": "Q8_0"})", "name"},
      {R"({"preset": "Q8_0", "tensors": {"match": "*"}})", "tensors"},
      {R"({"preset": "Q8_0", "attention": {"0": {"kv_groups": "all"}}})", "kv_groups"},
      {R"({"preset": "Q8_0", "drop_layers": [1.5]})", "drop_layers"},
      {R"({"preset": "Q8_0", "preset": "Q4_0"})", "twice"},
      {R"({"preset": "Q8_0")", "recipe"},
  };
  for (const auto& [text, what] : cases) {
    SCOPED_TRACE(text);
    write_file(s / "recipe.json", text);
    s.freeze();
    expect_refused(squish_run(compress_cmd(kStories, s / "out.gguf", "--set recipe=" + q(s / "recipe.json"))), 3, {"recipe.json", what});
    s.expect_unchanged();
  }
}

TEST(BadInputParsers, PipelineFilesThatAreNotPipelines) {
  Scratch s;
  fs::create_directory(s / "adir.yaml");
  write_file(s / "deep.yaml", "name: x\nnodes: " + std::string(100000, '[') + std::string(100000, ']') + "\n");
  write_file(s / "alias.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                               "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                               "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nname: x\nplugins: [io]\n"
                               "nodes:\n  n: {kind: io.checksum, params: {x: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}}\n");
  write_file(s / "binary.yaml", std::string("\x00\xff\xfe\x01 : [", 8));
  s.freeze();
  expect_refused(squish_run(q(s / "adir.yaml")), 2, {"adir.yaml", "directory"});
  expect_refused(squish_run(q(s / "deep.yaml")), 2, {"deep.yaml", "deep"});
  expect_refused(squish_run(q(s / "alias.yaml")), 2, {"alias.yaml"});
  expect_refused(squish_run(q(s / "binary.yaml")), 2, {"binary.yaml"});
  expect_refused(squish_run(q(s / "missing.yaml")), 2, {"missing.yaml"});
  s.expect_unchanged();
}

TEST(BadInputParsers, ConfigAndTokenizerOfTheWrongShape) {
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"config.json", std::string(100000, '[') + std::string(100000, ']'), "deep"},
      {"config.json", [] {
         json c = json::parse(read_file(kStories + "/config.json"));
         c["hidden_size"] = "64";
         return c.dump();
       }(), "hidden_size"},
      {"config.json", "{\"model_type\": \"llama\",", "config.json"},
      {"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": "0"}, "merges": []}})", "id"},
      {"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 1e20}, "merges": []}})", "id"},
      {"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 99999999}, "merges": []}})", "99999999"},
      {"tokenizer.json", R"({"model": {"type": "BPE", "vocab": [1, 2], "merges": []}})", "vocab"},
  };
  for (const auto& [file, text, what] : cases) {
    SCOPED_TRACE(file + ": " + text.substr(0, 60));
    Scratch s;
    const std::string m = s.model();
    write_file(m + "/" + file, text);
    s.freeze();
    expect_refused(squish_run(compress_cmd(m, s / "out.gguf")), 3, {file, what});
    s.expect_unchanged();
  }
}

// A special token id outside the vocabulary: other runtimes would index past their token table.
TEST(BadInputGguf, VerifyRefusesSpecialTokenIdsOutsideTheVocabulary) {
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"}) {
    SCOPED_TRACE(key);
    Scratch s;
    patch_gguf(s / "m.gguf", [&](auto& kv) { set_key(kv, key, uint32_t(512)); });  // stories260K: 512 tokens
    s.freeze();
    expect_refused(squish_run(pipeline("verify") + " --set model=" + q(s / "m.gguf")), 3,
                   {"m.gguf", std::string(key) + " is 512, outside the vocabulary of 512 tokens"});
    s.expect_unchanged();
  }
}

TEST(BadInputParsers, GgufWithADeepOrBrokenRecipeKey) {
  for (const std::string& recipe : {std::string(100000, '{'), std::string("{\"name\": 5}"), std::string("[1,2")}) {
    Scratch s;
    patch_gguf(s / "m.gguf", [&](auto& kv) { set_key(kv, "squish.recipe", recipe); });
    s.freeze();
    expect_refused(squish_run(pipeline("verify") + " --set model=" + q(s / "m.gguf")), 3, {"m.gguf", "squish.recipe"});
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 2: reports carry whatever text the model, prompt or path holds, as valid JSON.
// ---------------------------------------------------------------------------------------------

TEST(BadInputText, ReportsStayValidJsonWithInvalidUtf8) {
  Scratch s;
  const std::string odd_dir = s / "odd\xff\xfe dir";
  fs::create_directory(odd_dir);
  const std::string model = odd_dir + "/m\xc3.gguf";
  fs::copy_file(good_gguf(), model);
  write_file(odd_dir + "/text\xe2\x82.txt", read_file(kStories + "/calibration.txt"));
  const auto valid_report = [](const std::string& path) {
    const std::string text = read_file(path);
    json j;
    EXPECT_NO_THROW(j = json::parse(text)) << path;  // nlohmann refuses invalid UTF-8
    return j;
  };
  for (const std::string& prompt : {std::string("Once \xff\xfe upon"), std::string("\xe8\xae"), std::string("计算两个数的和"),
                                    std::string("\xc0\x80 overlong")}) {
    SCOPED_TRACE(prompt);
    const auto r = squish_run(pipeline("generate") + " --set model=" + q(model) + " --set prompt=" + q(prompt) +
                              " --set n=8 --set report=" + q(odd_dir + "/gen.json"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json j = valid_report(odd_dir + "/gen.json");
    EXPECT_TRUE(j.contains("text"));
  }
  // One token at a time: a report may end inside a multi-byte character.
  for (int n = 1; n <= 4; ++n) {
    const auto r = squish_run(pipeline("generate") + " --set model=" + q(model) + " --set prompt=" + q("计") + " --set n=" +
                              std::to_string(n) + " --set report=" + q(odd_dir + "/gen.json"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    valid_report(odd_dir + "/gen.json");
  }
  auto r = squish_run(pipeline("perplexity") + " --set model=" + q(model) + " --set text=" + q(odd_dir + "/text\xe2\x82.txt") +
                      " --set ctx=64 --set report=" + q(odd_dir + "/ppl.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  valid_report(odd_dir + "/ppl.json");
  r = squish_run(pipeline("verify") + " --set model=" + q(model) + " --set prompt=" + q("\xff Once") + " --set n=4 --set report=" +
                 q(odd_dir + "/verify.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  valid_report(odd_dir + "/verify.json");
  // Events carry the same text: every line must parse.
  r = squish_run("--events jsonl " + pipeline("generate") + " --set model=" + q(model) + " --set prompt=" + q("\xff\xfe") + " --set n=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& l : lines(r.err)) {
    if (l.front() == '{') {
      EXPECT_TRUE(json::accept(l)) << l;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Class 3: an output that is one of the run's inputs (also through a symlink or hard link).
// ---------------------------------------------------------------------------------------------

TEST(BadInputOutputs, OutputNamingAnInputIsRefused) {
  Scratch s;
  const std::string m = s.model();
  fs::copy_file(good_gguf(), s / "m.gguf");
  write_file(s / "text.txt", read_file(kStories + "/calibration.txt"));
  write_file(s / "recipe.json", R"({"preset": "Q8_0"})");
  fs::create_symlink(s / "text.txt", s / "link-to-text.txt");
  fs::create_symlink(s / "m.gguf", s / "link-to-model.gguf");
  fs::create_hard_link(s / "recipe.json", s / "hard-recipe.json");
  s.freeze();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {compress_cmd(m, m + "/model.safetensors"), "model.safetensors"},
      {compress_cmd(m, m + "/config.json"), "config.json"},
      {compress_cmd(m, s / "hard-recipe.json", "--set recipe=" + q(s / "recipe.json")), "hard-recipe.json"},
      {pipeline("generate") + " --set model=" + q(s / "m.gguf") + " --set prompt=Once --set report=" + q(s / "m.gguf"), "m.gguf"},
      {pipeline("generate") + " --set model=" + q(s / "m.gguf") + " --set prompt=Once --set report=" + q(s / "link-to-model.gguf"),
       "link-to-model.gguf"},
      {pipeline("perplexity") + " --set model=" + q(s / "m.gguf") + " --set text=" + q(s / "text.txt") + " --set report=" +
           q(s / "link-to-text.txt"),
       "link-to-text.txt"},
      {pipeline("verify") + " --set model=" + q(s / "m.gguf") + " --set text=" + q(s / "text.txt") + " --set report=" + q(s / "text.txt"),
       "text.txt"},
      {pipeline("score") + " --set model=" + q(m) + " --set text=" + q(s / "text.txt") + " --set output=" + q(m), "model"},
      {"--events-file " + q(s / "link-to-model.gguf") + " " + pipeline("generate") + " --set model=" + q(s / "m.gguf") + " --set prompt=Once",
       "link-to-model.gguf"},
  };
  for (const auto& [cmd, what] : cases) {
    SCOPED_TRACE(cmd);
    expect_refused(squish_run(cmd), 2, {what, "input"});
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 4: interrupted runs leave nothing behind and exit 128 + signal.
// ---------------------------------------------------------------------------------------------

namespace {
// True while process `pid` holds a file open inside `dir` (its output temporary; an unnamed
// O_TMPFILE inode shows as "<dir>/#<inode> (deleted)").
bool has_file_open_in(pid_t pid, const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    const auto target = fs::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind(dir + "/", 0) == 0) return true;
  }
  return false;
}

// Starts squish-run with events on stderr, waits until it has written progress and holds its
// output temporary open in `out_dir`, sends `sig`, and returns the wait status.
int interrupt_run(const std::vector<std::string>& args, const std::string& out_dir, int sig, bool* caught_running) {
  std::vector<std::string> argv_s = {binary_dir() + "/bin/squish-run", "--events", "jsonl"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) throw std::runtime_error("spawn");
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  std::string buf;
  char chunk[4096];
  *caught_running = false;
  // The writer has created its (unnamed) temporary and written data once a tensor finished.
  while (true) {
    const ssize_t k = read(fds[0], chunk, sizeof chunk);
    if (k <= 0) break;
    buf.append(chunk, size_t(k));
    if (buf.find("\"node_progress\"") != std::string::npos && buf.find("\"pipeline_end\"") == std::string::npos &&
        has_file_open_in(pid, out_dir)) {
      *caught_running = true;
      kill(pid, sig);
      break;
    }
  }
  while (read(fds[0], chunk, sizeof chunk) > 0) {
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}
}  // namespace

TEST(BadInputSignals, InterruptedCompressLeavesNothing) {
  SQUISH_REQUIRE_SHARED();
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGKILL}) {
    SCOPED_TRACE(strsignal(sig));
    Scratch s;
    fs::create_directory(s / "out");
    s.freeze();
    bool caught = false;
    const int status = interrupt_run({source_dir() + "/pipelines/compress.yaml", "--set", "model=" + shared("models/coder-28m"),
                                      "--set", "preset=Q4_K_M", "--set", "output=" + (s / "out/coder.gguf")},
                                     fs::canonical(s / "out").string(), sig, &caught);
    ASSERT_TRUE(caught) << "the run ended before it could be interrupted";
    // Handlers clean up and re-raise, so the shell sees 128 + signal (130, 143, 129; 137 for KILL).
    ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
    EXPECT_EQ(WTERMSIG(status), sig);
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 5: checkpoints that disagree with their config.json.
// ---------------------------------------------------------------------------------------------

TEST(BadInputCheckpoint, TensorsThatDisagreeWithTheConfigAreRefused) {
  const std::string up = "model.layers.3.mlp.up_proj.weight";
  const std::vector<std::tuple<std::string, std::function<void(std::vector<StEntry>&)>, std::string>> cases = {
      {"missing tensor", [&](auto& es) { std::erase_if(es, [&](const StEntry& e) { return e.name == up; }); }, up},
      {"transposed shape, same bytes", [&](auto& es) { find(es, up)->shape = {64, 172}; }, up},
      {"flattened shape, same bytes", [&](auto& es) { find(es, up)->shape = {172 * 64}; }, up},
      {"duplicate name", [&](auto& es) { es.push_back(*find(es, up)); }, up},
      {"unexpected tensor", [&](auto& es) { es.push_back({"model.layers.0.self_attn.extra.weight", "F32", {4}, std::string(16, '\0')}); },
       "extra"},
      {"layer beyond the config", [&](auto& es) {
         StEntry e = *find(es, "model.layers.0.input_layernorm.weight");
         e.name = "model.layers.7.input_layernorm.weight";
         es.push_back(e);
       }, "layers.7"},
      {"integer dtype", [&](auto& es) { find(es, up)->dtype = "I32"; }, "I32"},
      {"NaN weights", [&](auto& es) {
         auto* e = find(es, up);
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(e->bytes.data() + 40, &nan, 4);
       }, up},
  };
  for (const auto& [what, edit, mention] : cases) {
    SCOPED_TRACE(what);
    Scratch s;
    const std::string m = s.model();
    auto es = read_st(m + "/model.safetensors");
    edit(es);
    write_st(m + "/model.safetensors", es);
    s.freeze();
    expect_refused(squish_run(compress_cmd(m, s / "out.gguf")), 3, {"model", mention});
    s.expect_unchanged();
  }
  // Truncations and a config that promises more layers than the checkpoint has.
  for (const std::string what : {"truncated data", "truncated header", "more layers"}) {
    SCOPED_TRACE(what);
    Scratch s;
    const std::string m = s.model();
    const std::string st = read_file(m + "/model.safetensors");
    if (what == "truncated data") write_file(m + "/model.safetensors", st.substr(0, st.size() - 1000));
    if (what == "truncated header") write_file(m + "/model.safetensors", st.substr(0, 100));
    if (what == "more layers") edit_config(m, [](json& c) { c["num_hidden_layers"] = 6; });
    s.freeze();
    expect_refused(squish_run(compress_cmd(m, s / "out.gguf")), 3, {what == "more layers" ? "layers.5" : "model.safetensors"});
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 6: hyperparameters out of range.
// ---------------------------------------------------------------------------------------------

TEST(BadInputHyperparameters, OutOfRangeValuesAreRefused) {
  const std::vector<std::tuple<std::string, json, std::string>> cases = {
      {"vocab_size", json(uint64_t(1) << 32), "vocab_size"},
      {"vocab_size", json(uint64_t(1) << 62), "4611686018427387904"},
      {"vocab_size", json(0), "vocab_size"},
      {"vocab_size", json(-512), "vocab_size"},
      {"rms_norm_eps", json(0.0), "rms_norm_eps"},
      {"rms_norm_eps", json(-1e-5), "rms_norm_eps"},
      {"rope_theta", json(0.0), "rope_theta"},
      {"rope_theta", json(-10000.0), "rope_theta"},
      {"num_attention_heads", json(0), "num_attention_heads"},
      {"num_key_value_heads", json(3), "num_key_value_heads"},
      {"num_hidden_layers", json(0), "num_hidden_layers"},
      {"max_position_embeddings", json(1e300), "max_position_embeddings"},
      {"bos_token_id", json(512), "bos_token_id"},
      {"hidden_act", json("gelu"), "hidden_act"},
  };
  for (const auto& [key, value, mention] : cases) {
    SCOPED_TRACE(key + " = " + value.dump());
    Scratch s;
    const std::string m = s.model();
    edit_config(m, [&k = key, &v = value](json& c) { c[k] = v; });  // clang 14 cannot capture structured bindings
    s.freeze();
    expect_refused(squish_run(compress_cmd(m, s / "out.gguf")), 3, {"config.json", mention});
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 7: recipes that name nothing real or keep nothing.
// ---------------------------------------------------------------------------------------------

TEST(BadInputRecipes, RecipesThatCannotApplyAreRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"preset": "Q8_0", "attention": {"1": {"kv_groups": []}}})", "kv_groups"},
      {R"({"preset": "Q8_0", "attention": {"1": {"q_heads": []}}})", "q_heads"},
      {R"({"preset": "Q8_0", "attention": {"1": {"kv_groups": [0, 9]}}})", "9"},
      {R"({"preset": "Q8_0", "attention": {"9": {"kv_groups": [0]}}})", "9"},
      {R"({"preset": "Q8_0", "attention": {"-1": {"kv_groups": [0]}}})", "-1"},
      {R"({"preset": "Q8_0", "ffn_channels": {"0": [0, 4000]}})", "4000"},
      {R"({"preset": "Q8_0", "drop_layers": [0, 1, 2, 3, 4]})", "drop_layers"},
      {R"({"tensors": [{"match": "*.weight", "type": "Q9_K"}]})", "Q9_K"},
      {R"({"preset": "Q7"})", "Q7"},
      {R"({"format": "squish.recipe/9", "preset": "Q8_0"})", "squish.recipe/9"},
      // an index listed twice
      {R"({"preset": "Q8_0", "attention": {"1": {"kv_groups": [0, 0, 1]}}})", "attention.1.kv_groups: index 0 is listed twice"},
      {R"({"preset": "Q8_0", "attention": {"1": {"q_heads": [2, 3, 2]}}})", "attention.1.q_heads: index 2 is listed twice"},
      {R"({"preset": "Q8_0", "ffn_channels": {"0": [5, 7, 5]}})", "ffn_channels.0: index 5 is listed twice"},
      {R"({"preset": "Q8_0", "drop_layers": [1, 1]})", "drop_layers: index 1 is listed twice"},
  };
  for (const auto& [text, mention] : cases) {
    SCOPED_TRACE(text);
    Scratch s;
    write_file(s / "recipe.json", text);
    s.freeze();
    expect_refused(squish_run(compress_cmd(kStories, s / "out.gguf", "--set recipe=" + q(s / "recipe.json"))), 3, {"recipe.json", mention});
    s.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 8: GGUF files that would run but are broken.
// ---------------------------------------------------------------------------------------------

TEST(BadInputGguf, BrokenModelsAreRefusedByInference) {
  using KV = std::vector<gguf::KeyValue>;
  const std::vector<std::tuple<std::string, std::function<void(KV&)>, std::string>> cases = {
      {"head_count 0", [](KV& kv) { set_key(kv, "llama.attention.head_count", uint32_t(0)); }, "head"},
      {"head_count 3", [](KV& kv) { set_key(kv, "llama.attention.head_count", uint32_t(3)); }, "head"},
      {"eos outside the vocabulary", [](KV& kv) { set_key(kv, "tokenizer.ggml.eos_token_id", uint32_t(99999)); }, "eos_token_id"},
      {"eot outside the vocabulary", [](KV& kv) { set_key(kv, "tokenizer.ggml.eot_token_id", uint32_t(512)); }, "eot_token_id"},
      {"block_count 2^20", [](KV& kv) { set_key(kv, "llama.block_count", uint32_t(1 << 20)); }, "block_count"},
      {"no architecture", [](KV& kv) { std::erase_if(kv, [](auto& p) { return p.first == "general.architecture"; }); }, "architecture"},
      {"context_length 2^40", [](KV& kv) { set_key(kv, "llama.context_length", uint64_t(1) << 40); }, "context_length"},
      {"rms epsilon 0", [](KV& kv) { set_key(kv, "llama.attention.layer_norm_rms_epsilon", 0.0f); }, "epsilon"},
  };
  for (const auto& [what, edit, mention] : cases) {
    SCOPED_TRACE(what);
    Scratch s;
    patch_gguf(s / "m.gguf", edit);
    s.freeze();
    expect_refused(squish_run(pipeline("generate") + " --set model=" + q(s / "m.gguf") + " --set prompt=Once --set n=4"), 3,
                   {"m.gguf", mention});
    s.expect_unchanged();
  }
  // NaN weights, whether or not they reach the logits: verify's finite check names the file and
  // tensor; inference refuses the file at load.
  for (const std::string tensor : {"blk.2.attn_q.weight", "output_norm.weight"}) {
    SCOPED_TRACE(tensor);
    Scratch s;
    int poisoned = 0;
    patch_gguf(s / "nan.gguf", [](KV&) {}, [&](const gguf::TensorInfo& t, std::vector<std::byte>& b) {
      if (t.name != tensor) return;
      if (t.type == GGMLType::Q8_0) {
        const uint16_t nan16 = 0x7e00;  // the first block's scale, as f16
        std::memcpy(b.data(), &nan16, 2);
      } else {
        ASSERT_EQ(t.type, GGMLType::F32);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(b.data(), &nan, 4);
      }
      ++poisoned;
    });
    ASSERT_EQ(poisoned, 1);
    write_file(s / "text.txt", read_file(kStories + "/calibration.txt"));
    s.freeze();
    expect_refused(squish_run(pipeline("verify") + " --set model=" + q(s / "nan.gguf")), 3, {"nan.gguf", "finite", tensor});
    s.expect_unchanged();
    expect_refused(squish_run(pipeline("perplexity") + " --set model=" + q(s / "nan.gguf") + " --set text=" + q(s / "text.txt") +
                              " --set ctx=64 --set report=" + q(s / "ppl.json")),
                   3, {"nan.gguf", tensor, "non-finite"});
    expect_refused(squish_run(pipeline("generate") + " --set model=" + q(s / "nan.gguf") + " --set prompt=Once --set report=" + q(s / "g.json")),
                   3, {"nan.gguf", tensor, "non-finite"});
    s.expect_unchanged();
  }
  // Truncated: every prefix length class refused.
  const std::string good = read_file(good_gguf());
  for (size_t keep : {size_t(3), size_t(24), size_t(2000), good.size() / 2, good.size() - 64}) {  // (the last bytes may be padding)
    Scratch t;
    write_file(t / "cut.gguf", good.substr(0, keep));
    t.freeze();
    expect_refused(squish_run(pipeline("generate") + " --set model=" + q(t / "cut.gguf") + " --set prompt=Once --set n=4"), 3, {"cut.gguf"});
    t.expect_unchanged();
  }
}

// ---------------------------------------------------------------------------------------------
// Class 9: resources bounded by the model, said out loud.
// ---------------------------------------------------------------------------------------------

TEST(BadInputResources, GenerationStopsAtTheContext) {
  Scratch s;
  const auto r = squish_run(pipeline("generate") + " --set model=" + q(good_gguf()) + " --set prompt=Once --set n=100000000 --set report=" +
                            q(s / "gen.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(read_file(s / "gen.json"));
  const int context = j.at("context");
  EXPECT_EQ(context, 512);  // stories260K's max_position_embeddings
  EXPECT_TRUE(j.at("stopped_at_context").get<bool>()) << j.dump();
  EXPECT_EQ(j.at("prompt_tokens").get<int>() + j.at("generated_tokens").get<int>(), context) << j.dump();
  EXPECT_NE(r.err.find("context"), std::string::npos) << "no warning about the cap: " << r.err;
}

TEST(BadInputResources, MemoryNeedsAreCheckedUpFront) {
  SQUISH_SKIP_UNDER_SANITIZERS("an address-space limit cannot stand in for memory");
  // A model whose context allows a 10 GiB KV cache, under a 3 GB address-space limit: refused
  // before anything is allocated, naming the file and what needs the memory.
  Scratch s;
  patch_gguf(s / "long.gguf", [](auto& kv) { set_key(kv, "llama.context_length", uint32_t(1) << 24); });
  s.freeze();
  expect_refused(run("ulimit -v 3000000 && " + binary_dir() + "/bin/squish-run " + pipeline("generate") + " --set model=" +
                     q(s / "long.gguf") + " --set prompt=Once --set n=16000000 --set report=" + q(s / "g.json")),
                 5, {"long.gguf", "KV cache", "GiB"});
  s.expect_unchanged();
}

TEST(BadInputResources, PromptLongerThanTheContextIsRefused) {
  Scratch s;
  std::string prompt;
  for (int i = 0; i < 600; ++i) prompt += "Once upon a time ";
  s.freeze();
  expect_refused(squish_run(pipeline("generate") + " --set model=" + q(good_gguf()) + " --set prompt=" + q(prompt) + " --set n=4 --set report=" +
                            q(s / "gen.json")),
                 2, {"prompt", "context"});
  s.expect_unchanged();
}

// ---------------------------------------------------------------------------------------------
// Class 10: parameters out of range, by name; variables expand everywhere.
// ---------------------------------------------------------------------------------------------

TEST(BadInputParameters, OutOfRangeParametersAreRefused) {
  Scratch s;
  write_file(s / "text.txt", read_file(kStories + "/calibration.txt"));
  s.freeze();
  const std::string gen = pipeline("generate") + " --set model=" + q(good_gguf()) + " --set prompt=Once ";
  const std::string ppl = pipeline("perplexity") + " --set model=" + q(good_gguf()) + " --set text=" + q(s / "text.txt") + " ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {gen + "--set temperature=nan", "temperature"},
      {gen + "--set temperature=inf", "temperature"},
      {gen + "--set temperature=-1", "temperature"},
      {gen + "--set top_p=1.5", "top_p"},
      {gen + "--set top_k=-3", "top_k"},
      {gen + "--set n=-5", "n"},
      {gen + "--set n=12abc", "n"},
      {gen + "--set seed=-1", "seed"},
      {gen + "--set n=99999999999999999999", "n"},
      {ppl + "--set chunks=-1", "chunks"},
      {ppl + "--set ctx=1", "ctx"},
      {ppl + "--set threads=-2", "threads"},
      {pipeline("score") + " --set model=" + q(kStories) + " --set text=" + q(s / "text.txt") + " --set output=" + q(s / "sc") +
           " --set max_tokens=-1",
       "max_tokens"},
      {pipeline("verify") + " --set model=" + q(good_gguf()) + " --set ppl_reference=nan", "ppl_reference"},
      {compress_cmd(kStories, ""), "output"},
      {gen + "--set nosuchvar=1", "nosuchvar"},
  };
  for (const auto& [cmd, mention] : cases) {
    SCOPED_TRACE(cmd);
    expect_refused(squish_run(cmd), 2, {mention});
    s.expect_unchanged();
  }
}

TEST(BadInputParameters, VariableDefaultsExpandVariables) {
  Scratch s;
  write_file(s / "p.yaml", "name: p\nplugins: [infer]\nvariables:\n  model: {default: ~}\n  stem: {default: gen}\n"
                           "  report: {default: \"${pipeline_dir}/${stem}-report.json\"}\n"
                           "nodes:\n  g:\n    kind: infer.generate\n    params: {model: \"${model}\", prompt: Once, n: \"2\", report: \"${report}\"}\n");
  const auto r = squish_run(q(s / "p.yaml") + " --set model=" + q(good_gguf()) + " --set stem=nested");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(s / "nested-report.json"));
  for (const auto& e : fs::directory_iterator(s.path())) EXPECT_EQ(e.path().filename().string().find("${"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Class 11: data errors name the file and say what is wrong with it.
// ---------------------------------------------------------------------------------------------

TEST(BadInputMessages, DataErrorsNameTheFile) {
  Scratch s;
  write_file(s / "empty.txt", "");
  write_file(s / "short.txt", "Once upon");
  fs::create_directory(s / "folder.txt");
  fs::copy_file(good_gguf(), s / "m.gguf");
  fs::create_directory(s / "nofolder");
  s.freeze();
  const std::string ppl = pipeline("perplexity") + " --set model=" + q(s / "m.gguf") + " --set ctx=64 --set text=";
  const std::vector<std::tuple<std::string, int, std::vector<std::string>>> cases = {
      {ppl + q(s / "empty.txt"), 3, {"empty.txt"}},
      {ppl + q(s / "short.txt"), 3, {"short.txt", "short"}},
      {ppl + q(s / "folder.txt"), 3, {"folder.txt", "directory"}},
      {ppl + q(s / "absent.txt"), 3, {"absent.txt"}},
      {compress_cmd(s / "m.gguf", s / "out.gguf"), 3, {"m.gguf", "GGUF"}},
      {compress_cmd(s / "nofolder", s / "out.gguf"), 3, {"nofolder", "config.json"}},
      {pipeline("generate") + " --set model=" + q(kStories) + " --set prompt=Once", 3, {"stories260K"}},
      {pipeline("score") + " --set model=" + q(kStories) + " --set text=" + q(s / "empty.txt") + " --set output=" + q(s / "sc"), 3,
       {"empty.txt"}},
  };
  for (const auto& [cmd, code, mentions] : cases) {
    SCOPED_TRACE(cmd);
    expect_refused(squish_run(cmd), code, mentions);
    s.expect_unchanged();
  }
}
