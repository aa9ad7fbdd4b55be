// Reference transformer throughput on coder-28m (ctx 512) and the machine's sgemm peak, so the
// fraction of BLAS speed the model reaches can be reported.
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <filesystem>
#include <random>

using namespace squish;

namespace {

constexpr int kThreads = 2;
constexpr int kCtx = 512;

std::shared_ptr<SafetensorsWeights> coder() {
  static auto w = SafetensorsWeights::open(SQUISH_SHARED_DIR "/models/coder-28m");
  return w;
}

std::vector<int32_t> chunk() {
  auto ids = read_token_ids(SQUISH_SHARED_DIR "/reference/tokens/coder-28m.code-humaneval.ids");
  return std::vector<int32_t>(ids.begin(), ids.begin() + kCtx);
}

bool have_shared() { return std::filesystem::exists(SQUISH_SHARED_DIR "/models/coder-28m"); }

void BM_Sgemm1024(benchmark::State& state) {
  const int n = 1024;
  const int threads = static_cast<int>(state.range(0));
  std::vector<float> a(size_t(n) * n), b(a.size()), c(a.size());
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  openblas_set_num_threads(threads);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Sgemm1024)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// Forward + loss over all 512 positions (what calibration scoring runs without the backward).
void BM_Forward(benchmark::State& state) {
  if (!have_shared()) return state.SkipWithError("../shared missing");
  Transformer model(coder(), {.threads = kThreads});
  auto tokens = chunk();
  model.loss(tokens, 0);  // warm-up: converts the bf16 layers, sizes the buffers
  for (auto _ : state) benchmark::DoNotOptimize(model.loss(tokens, 0).nll_sum);
  state.counters["tok/s"] = benchmark::Counter(kCtx, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Forward)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);

// One perplexity chunk (second half scored, lm_head on 255 rows).
void BM_PerplexityChunk(benchmark::State& state) {
  if (!have_shared()) return state.SkipWithError("../shared missing");
  Transformer model(coder(), {.threads = kThreads});
  auto tokens = chunk();
  model.loss(tokens, kCtx / 2);  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(model.loss(tokens, kCtx / 2).nll_sum);
  state.counters["tok/s"] = benchmark::Counter(kCtx, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PerplexityChunk)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);

// Forward with layer checkpoints + backward to every mask (the score stage's unit of work).
void BM_ForwardBackward(benchmark::State& state) {
  if (!have_shared()) return state.SkipWithError("../shared missing");
  Transformer model(coder(), {.threads = kThreads});
  auto tokens = chunk();
  const MaskSet ones = MaskSet::ones(model.arch());
  MaskSet grads;
  model.loss_and_mask_grads(tokens, 0, ones, grads);  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(model.loss_and_mask_grads(tokens, 0, ones, grads).nll_sum);
  state.counters["tok/s"] = benchmark::Counter(kCtx, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);

}  // namespace

BENCHMARK_MAIN();
