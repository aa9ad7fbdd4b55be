// Test-only plugins: a well-formed one with probe nodes, and deliberately broken ones
// (built from this file with different macros) for the plugin host's error paths.
#include "core/io/atomic_file.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace squish {
namespace {

std::atomic<int64_t> g_live{0}, g_max_live{0}, g_live_bytes{0}, g_max_live_bytes{0};

void raise_to(std::atomic<int64_t>& max, int64_t v) {
  int64_t m = max.load();
  while (v > m && !max.compare_exchange_weak(m, v)) {}
}

// Emits `count` tensors of `bytes` (every `big_every`-th of `big_bytes`) and tracks how many,
// and how many bytes, are alive at once (through their tickets).
class CounterSource final : public Node {
 public:
  explicit CounterSource(const NodeContext& c)
      : count_(c.params["count"].get<int64_t>()),
        fail_at_(c.params["fail_at"].get<int64_t>()),
        needs_(c.params["needs_documents"].get<int64_t>()),
        bytes_(c.params["bytes"].get<int64_t>()),
        big_bytes_(c.params["big_bytes"].get<int64_t>()),
        big_every_(c.params["big_every"].get<int64_t>()) {}
  // Documents on input edges (a gated source) arrive before the first produce().
  void consume(const Message& in, Emitter&) override {
    if (!in.is_tensor()) ++documents_;
  }
  bool produce(Message& out) override {
    if (documents_ < needs_) fail(ExitCode::InputData, "counter source: started after {} of {} documents", documents_, needs_);
    if (next_ >= count_) return false;
    if (next_ == fail_at_) fail(ExitCode::InputData, "counter source: planned failure at message {}", next_);
    const int64_t bytes = big_every_ > 0 && next_ % big_every_ == 0 ? big_bytes_ : bytes_;
    Tensor t;
    t.name = fmt::format("t{}", next_++);
    t.dtype = DType::F32;
    t.shape = {bytes / 4};
    t.data = Buffer::owned(std::vector<std::byte>(size_t(bytes / 4 * 4)));
    raise_to(g_max_live, ++g_live);
    raise_to(g_max_live_bytes, g_live_bytes += bytes);
    out = Message::of(std::move(t), std::shared_ptr<void>(nullptr, [bytes](void*) { --g_live, g_live_bytes -= bytes; }));
    return true;
  }
  uint64_t expected_count() const override { return count_; }

 private:
  int64_t count_, fail_at_, needs_, bytes_, big_bytes_, big_every_, next_ = 0, documents_ = 0;
};

// Counts what it consumes; when finished, announces the count as a document.
class Announce final : public Node {
 public:
  explicit Announce(const NodeContext&) {}
  void consume(const Message&, Emitter&) override { ++seen_; }
  void finish(Emitter& out) override { out.emit(Message::of(Document{"announce", {{"seen", seen_}}})); }

 private:
  int64_t seen_ = 0;
};

// Consumes slowly, then writes what it saw: messages received and the maximum alive at once.
class SlowSink final : public Node {
 public:
  explicit SlowSink(const NodeContext& c) : output_(c.params["output"].get<std::string>()), sleep_us_(c.params["sleep_us"].get<int64_t>()) {}
  void consume(const Message& in, Emitter&) override {
    if (!in.is_tensor()) {
      ++documents_;
      if (received_ > 0) documents_after_tensors_ = true;
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    ++received_;
  }
  void finish(Emitter&) override {
    write_file_atomic(output_, nlohmann::json{{"received", received_.load()},
                                              {"max_live", g_max_live.load()},
                                              {"max_live_bytes", g_max_live_bytes.load()},
                                              {"documents", documents_.load()},
                                              {"documents_after_tensors", documents_after_tensors_.load()}}
                                   .dump());
  }

 private:
  std::string output_;
  int64_t sleep_us_;
  std::atomic<int64_t> received_{0}, documents_{0};
  std::atomic<bool> documents_after_tensors_{false};
};

[[maybe_unused]] void register_nodes(NodeRegistry& r) {
#ifdef TESTKIT_DUPLICATE_KIND
  r.add({"io.passthrough", "clashes with the io plugin", NodeRole::Transform, false, {},
         [](const NodeContext&) -> std::unique_ptr<Node> { return nullptr; }});
#else
  r.add({"testkit.counter_source", "emit N small tensors, tracking how many are alive", NodeRole::Source, false,
         {{"count", ParamType::Int, false, 100, ""},
          {"fail_at", ParamType::Int, false, -1, "throw at this message"},
          {"needs_documents", ParamType::Int, false, 0, "fail unless this many documents arrived before the first message"},
          {"bytes", ParamType::Int, false, 16, "bytes of each tensor"},
          {"big_bytes", ParamType::Int, false, 0, "bytes of every big_every-th tensor"},
          {"big_every", ParamType::Int, false, 0, "0 = all tensors of `bytes`"}},
         [](const NodeContext& c) { return std::make_unique<CounterSource>(c); }});
  r.add({"testkit.announce", "count messages; emit the count as a document when finished", NodeRole::Transform, false, {},
         [](const NodeContext& c) { return std::make_unique<Announce>(c); }});
  r.add({"testkit.slow_sink", "consume slowly; write counts at the end", NodeRole::Sink, true,
         {{"output", ParamType::Output, true, nullptr, ""}, {"sleep_us", ParamType::Int, false, 200, ""}},
         [](const NodeContext& c) { return std::make_unique<SlowSink>(c); }});
#endif
}

}  // namespace
}  // namespace squish

#if defined(TESTKIT_NO_ENTRY)
extern "C" int not_the_entry_point() { return 0; }
#elif defined(TESTKIT_BAD_ABI)
// A plugin from a future major ABI: the host must refuse it from its file's metadata, before
// loading it, so none of its code runs (this constructor leaves a mark when it does), and would
// refuse it from its entry point before reading past abi_minor.
#include <fstream>
__attribute__((section(SQUISH_PLUGIN_SECTION), used)) static const squish_plugin_metadata squish_plugin_metadata_ = {
    {'S', 'Q', 'U', 'I', 'S', 'H', 'P', 'L'}, SQUISH_ABI_MAJOR + 41, 0, sizeof(squish_plugin_metadata), 1, SQUISH_CXX_BUILD};
__attribute__((constructor)) static void leave_a_mark() {
  if (const char* path = std::getenv("SQUISH_TESTKIT_CTOR_MARK")) std::ofstream(path) << "ran\n";
}
extern "C" SQUISH_PLUGIN_EXPORT const squish_plugin_info* squish_plugin_entry() {
  static const squish_plugin_info info{SQUISH_ABI_MAJOR + 41, 0, sizeof(squish_plugin_info), "badabi", "0", "wrong ABI", nullptr,
                                       SQUISH_CXX_BUILD, nullptr};
  return &info;
}
#elif defined(TESTKIT_DUPLICATE_KIND)
SQUISH_PLUGIN("dupkind", "0", "registers a kind the io plugin owns", squish::register_nodes)
#else
SQUISH_PLUGIN("testkit", "0", "probe nodes for runtime tests", squish::register_nodes)
#endif
