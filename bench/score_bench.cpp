// Scoring at scale: the score stage (forward + backward to every mask, activation statistics)
// on any Hugging Face folder, whole in memory or layer-major under memory bounds, with the
// fraction of this machine's sgemm rate it reaches (measured in the same run), peak RSS and
// scratch bytes.
//
//   score_bench [--model=DIR] [--text=FILE] [--tokens=N] [--memory=0,1G,...] [--threads=N]
//               [benchmark flags]
// Defaults: coder-28m, calib-code.txt, 4096 tokens, memory 0 (whole model) and 128M, 2 threads.
// Synthetic models of any size: build/bin/squish-synth --tokenizer <folder with tokenizer.json>.
// FLOPs per token: 3 passes over the layers' matrices (forward, recompute, input gradients;
// weights are frozen, so no weight gradients), 2 x weights each, plus the output head forward and
// backward (4 x vocab x hidden); attention is left out (small at ctx 512), so the fraction is a
// slight underestimate.
#include "core/model/transformer.hpp"
#include "core/base/error.hpp"
#include "core/runtime/events.hpp"
#include "core/base/memory.hpp"
#include "stages/score/scorer.hpp"
#include "bench/sgemm_rate.hpp"

#include <benchmark/benchmark.h>
#include <fmt/core.h>

#include <algorithm>
#include <optional>
#include <sstream>

using namespace squish;

namespace {

std::string g_model = SQUISH_SHARED_DIR "/models/coder-28m";
std::string g_text = SQUISH_SHARED_DIR "/data/calib-code.txt";
int64_t g_tokens = 4096;
int g_threads = 2;
std::vector<std::string> g_memory = {"0", "128M"};
double g_sgemm = 0;  // GFLOP/s, this run

// The limit: single-threaded OpenBLAS sgemm instances, one per thread (the model splits its
// products over TBB the same way).
void BM_Sgemm(benchmark::State& state) {
  double rate = 0;
  for (auto _ : state) rate = bench::sgemm_rate(g_threads);
  g_sgemm = rate / 1e9;
  state.counters["GFLOP/s"] = g_sgemm;
}

double flops_per_token(const ModelArch& a) {
  double w = 0;
  for (const auto& s : a.layers) {
    const double D = a.n_embd, Q = double(s.n_head) * a.head_dim, KV = double(s.n_head_kv) * a.head_dim, FF = s.n_ff;
    w += D * (2 * Q + 2 * KV) + 3 * D * FF;
  }
  return 3 * 2 * w + 4.0 * a.n_vocab * a.n_embd;
}

void BM_Score(benchmark::State& state, std::string memory) {
  score::ScoreOptions opt;
  opt.ctx = 512;
  opt.max_tokens = g_tokens;
  opt.threads = g_threads;
  opt.memory = parse_byte_size(memory).value_or(0);
  opt.scratch_dir.assign(1, '.');  // the current folder; `= "."` trips GCC 12's -Wrestrict (GCC bug 105329)
  const bool reset = reset_peak_rss();
  score::ScoreResult r;
  try {
    for (auto _ : state) r = score::score_model(g_model, g_text, opt);
  } catch (const Error& e) {
    return state.SkipWithError(e.what());
  }
  const double tok_s = r.scores["tokens_per_s"].get<double>();
  const auto arch = SafetensorsWeights::open(g_model, false)->arch();
  const double gflops = flops_per_token(arch) * tok_s / 1e9;
  state.counters["tok/s"] = tok_s;
  state.counters["GFLOP/s"] = gflops;
  if (g_sgemm > 0) state.counters["sgemm_fraction"] = gflops / g_sgemm;
  state.counters["peak_rss_MiB"] = double(r.run["peak_rss_bytes"][0].get<uint64_t>()) / (1 << 20);
  state.counters["scratch_MiB"] = double(r.run["scratch_bytes_peak"][0].get<uint64_t>()) / (1 << 20);
  state.counters["scratch_moved_MiB"] = double(r.run["scratch_bytes_moved"][0].get<uint64_t>()) / (1 << 20);
  state.SetLabel(fmt::format("{} {}{}", r.run["mode"].get<std::string>(), memory, reset ? "" : " (peak RSS not reset: includes earlier runs)"));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&](const char* flag) -> std::optional<std::string> {
      const std::string f = std::string(flag) + "=";
      return a.rfind(f, 0) == 0 ? std::optional(a.substr(f.size())) : std::nullopt;
    };
    if (auto v = value("--model")) g_model = *v;
    else if (auto v = value("--text")) g_text = *v;
    else if (auto v = value("--tokens")) g_tokens = std::stoll(*v);
    else if (auto v = value("--threads")) g_threads = std::stoi(*v);
    else if (auto v = value("--memory")) {
      g_memory.clear();
      std::stringstream ss(*v);
      for (std::string m; std::getline(ss, m, ',');) g_memory.push_back(m);
    } else rest.push_back(argv[i]);
  }
  for (const auto& m : g_memory)
    if (!parse_byte_size(m)) {
      fmt::print(stderr, "score_bench: --memory {}: not a size\n", m);
      return 2;
    }
  benchmark::RegisterBenchmark("Sgemm/one_per_thread", BM_Sgemm)->Unit(benchmark::kMillisecond)->Iterations(1);
  // Bounded runs first: the process's RSS at their start (inside the bound) must not hold the
  // allocator's leftovers of a whole model.
  std::stable_sort(g_memory.begin(), g_memory.end(), [](const std::string& a, const std::string& b) {
    return *parse_byte_size(a) != 0 && *parse_byte_size(b) == 0;
  });
  for (const auto& m : g_memory)
    benchmark::RegisterBenchmark(("Score/memory:" + m).c_str(), BM_Score, m)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
