// Inference speed of coder-28m next to stock llama.cpp's llama-bench on this machine kind
// (REFERENCE.md): prefill of 512 tokens (pp512) and decode of 128 tokens (tg128) at Q8_0 and
// Q4_K_M with 1 and 2 threads. Counters: tok_per_s (ours), llama_cpp (theirs, where measured),
// bw_bound (decode: weight bytes read per token over the memory bandwidth: 6.6 GB/s with one
// thread, 12.6 GB/s with two).
//
// The Q4_K_M file is llama.cpp's own (Squish writes the same bytes); the Q8_0 file is written
// once into /tmp by the compress pipeline (build/bin/squish-run beside this executable).
#include "core/base/error.hpp"
#include "core/model/generate.hpp"

#include <benchmark/benchmark.h>
#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

using namespace squish;
using namespace squish::infer;
namespace fs = std::filesystem;

namespace {

const std::string kShared = SQUISH_SHARED_DIR;

std::string source_dir() {  // SQUISH_SHARED_DIR is <source>/../shared
  return fs::path(kShared).parent_path().parent_path().string();
}

std::string gguf_for(const std::string& type) {
  if (type == "Q4_K_M") return kShared + "/reference/coder-28m-Q4_K_M.gguf";
  const std::string out = "/tmp/squish_infer_bench_coder-28m-" + type + ".gguf";
  if (!fs::exists(out)) {
    const std::string run = fs::read_symlink("/proc/self/exe").parent_path().string() + "/squish-run";
    const std::string cmd = fmt::format("{} {}/pipelines/compress.yaml --set model={}/models/coder-28m --set preset={} --set output={} > /dev/null",
                                        run, source_dir(), kShared, type, out);
    if (std::system(cmd.c_str()) != 0) fail(ExitCode::Runtime, "bench setup failed: {}", cmd);
  }
  return out;
}

struct Loaded {
  std::shared_ptr<const Model> model;
  std::vector<int32_t> tokens;  // code-humaneval, for realistic inputs
};

const Loaded& loaded(const std::string& type) {
  static std::map<std::string, Loaded> cache;
  auto& l = cache[type];
  if (!l.model) {
    l.model = Model::load(gguf_for(type));
    std::ifstream f(kShared + "/data/code-humaneval.txt");
    std::stringstream ss;
    ss << f.rdbuf();
    l.tokens = tokenizer_of(*l.model).encode(ss.str(), true);
  }
  return l;
}

double llama_cpp(const std::string& type, int threads, bool prefill) {
  if (type == "Q8_0" && threads == 2) return prefill ? 2168 : 527;
  if (type == "Q4_K_M" && threads == 2) return prefill ? 1521 : 592;
  if (type == "Q4_K_M" && threads == 1) return prefill ? 988 : 723;
  return 0;
}

// quantized = true: llama.cpp's arithmetic for the batch too (activations to Q8_0/Q8_K, integer
// dots per token) instead of dequantize + sgemm; kept to show why the sgemm path was chosen.
void BM_Prefill512(benchmark::State& state, std::string type, bool quantized) {
  const int threads = static_cast<int>(state.range(0));
  const Loaded& l = loaded(type);
  Session s(l.model, 512, threads);
  s.set_batch_path(quantized ? BatchPath::Integer : BatchPath::Float);
  std::vector<float> logits;
  const std::span<const int32_t> chunk(l.tokens.data(), 512);
  for (auto _ : state) {
    s.reset();
    s.eval(chunk, 511, logits);  // llama-bench pp: logits of the last token only
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok_per_s"] = benchmark::Counter(512.0 * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["llama_cpp"] = llama_cpp(type, threads, true);
}

void BM_Decode128(benchmark::State& state, std::string type) {
  const int threads = static_cast<int>(state.range(0));
  const Loaded& l = loaded(type);
  Session s(l.model, 129, threads);
  std::vector<float> logits;
  for (auto _ : state) {
    s.reset();
    for (int i = 0; i < 128; ++i) s.eval(std::span(l.tokens).subspan(i, 1), 0, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tok_per_s"] = benchmark::Counter(128.0 * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["llama_cpp"] = llama_cpp(type, threads, false);
  state.counters["bw_bound"] = (threads >= 2 ? 12.6e9 : 6.6e9) / double(l.model->weight_bytes_per_token());
  state.counters["weight_MB"] = double(l.model->weight_bytes_per_token()) / 1e6;
}

}  // namespace

BENCHMARK_CAPTURE(BM_Prefill512, Q8_0, std::string("Q8_0"), false)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill512, Q4_K_M, std::string("Q4_K_M"), false)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill512, Q4_K_M_quantized_path, std::string("Q4_K_M"), true)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode128, Q8_0, std::string("Q8_0"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode128, Q4_K_M, std::string("Q4_K_M"))->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
