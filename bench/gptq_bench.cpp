// GPTQ's per-tensor cost against the machine's GEMM rate and against ggml-style rounding.
// A tensor of `rows` x `cols` costs about rows·cols² flops of error propagation (the lazy-batch
// GEMMs) plus ~4/3·cols³ (double) for the Cholesky factor of H⁻¹; the counters give the rate
// reached on those flops and its fraction of OpenBLAS's single-core sgemm (~90 GFLOP/s here,
// ~180 on two cores). Shapes: coder-28m-sized attention (512 x 512) and a 512 x 1536 FFN matrix, and
// a 1B-class down_proj (2048 x 5632).
#include "core/quant/gptq.hpp"
#include "core/quant/quantize.hpp"

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <oneapi/tbb/global_control.h>

#include <map>
#include <random>
#include <vector>

namespace {
using squish::GGMLType;

struct Case {
  std::vector<float> w, h;
};

const Case& make(int64_t rows, int64_t cols) {
  static std::map<std::pair<int64_t, int64_t>, Case> cache;
  auto& c = cache[{rows, cols}];
  if (c.w.empty()) {
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0.f, 1.f);
    const int64_t n = 2 * cols;  // samples
    std::vector<float> x(size_t(n * cols));
    for (auto& v : x) v = g(rng);
    c.h.assign(size_t(cols * cols), 0.f);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(cols), int(n), 1.f / float(n), x.data(), int(cols), 0.f, c.h.data(), int(cols));
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < i; ++j) c.h[size_t(i * cols + j)] = c.h[size_t(j * cols + i)];
    c.w.resize(size_t(rows * cols));
    for (auto& v : c.w) v = 0.02f * g(rng);
  }
  return c;
}

void set_rate(benchmark::State& st, int64_t rows, int64_t cols, int threads) {
  const double flops = double(rows) * double(cols) * double(cols) + 4.0 / 3.0 * double(cols) * cols * cols;
  st.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["of_sgemm_limit"] = benchmark::Counter(flops * 1e-9 / (threads == 1 ? 90.0 : 180.0), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Gptq(benchmark::State& st) {
  const auto type = static_cast<GGMLType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2);
  const int threads = static_cast<int>(st.range(3));
  oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism, threads);
  const Case& c = make(rows, cols);
  for (auto _ : st) benchmark::DoNotOptimize(squish::quant::gptq_quantize(type, c.w.data(), rows, cols, c.h.data(), nullptr));
  set_rate(st, rows, cols, threads);
  st.SetLabel(ggml_type_name(type));
}

// The same tensor with ggml's importance-weighted rounding, for the ratio.
void BM_Rounding(benchmark::State& st) {
  const auto type = static_cast<GGMLType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2);
  const Case& c = make(rows, cols);
  std::vector<float> diag(static_cast<size_t>(cols));
  for (int64_t i = 0; i < cols; ++i) diag[size_t(i)] = c.h[size_t(i * cols + i)];
  std::vector<std::byte> out(ggml_row_size(type, cols) * size_t(rows));
  for (auto _ : st) squish::quantize_rows(type, c.w.data(), out.data(), rows, cols, diag.data());
  st.SetLabel(ggml_type_name(type));
}

void shapes(benchmark::internal::Benchmark* b, bool threads) {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{512, 512}, {512, 1536}, {2048, 5632}})
    for (int t : threads ? std::vector<int>{1, 2} : std::vector<int>{1}) b->Args({int64_t(GGMLType::Q4_K), r, c, t});
  b->Args({int64_t(GGMLType::Q3_K), 512, 1536, 1});
  b->Args({int64_t(GGMLType::Q2_K), 512, 1536, 1});
}

}  // namespace

BENCHMARK(BM_Gptq)->Apply([](auto* b) { shapes(b, true); })->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Rounding)->Apply([](auto* b) { shapes(b, false); })->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
