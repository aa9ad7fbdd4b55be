// GPTQ's per-tensor cost against this machine's sgemm rate, measured in the same run
// (bench/sgemm_rate.hpp), and against ggml-style rounding. A tensor of `rows` x `cols` costs
// rows·cols² flops of error propagation (the lazy-batch GEMMs) plus 2/3·cols³ for the float
// factor of H⁻¹ (a Cholesky and a triangular inverse, n³/3 each); BM_GptqFactor times the factor
// alone. of_sgemm_limit is the rate reached on those flops over the sgemm rate of as many
// threads. Shapes: coder-28m's attention (512 x 512) and FFN (512 x 1536), a 1B down_proj
// (2048 x 5632), Qwen2.5-7B's (3584 x 18944) and Qwen2.5-32B's (5120 x 27648: H alone is 3 GB).
#include "core/quant/gptq.hpp"
#include "core/quant/quantize.hpp"
#include "bench/sgemm_rate.hpp"

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

// H = XᵀX/m + D: m = 512 random samples (the low-rank part real activations have) over a
// diagonal of varied size, so H is full rank and as ill-conditioned as real second moments.
const Case& make(int64_t rows, int64_t cols) {
  static std::map<std::pair<int64_t, int64_t>, Case> cache;
  auto& c = cache[{rows, cols}];
  if (c.w.empty()) {
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0.f, 1.f);
    std::uniform_real_distribution<float> u(0.01f, 0.1f);
    const int m = 512;
    std::vector<float> x(size_t(m * cols));
    for (auto& v : x) v = g(rng);
    c.h.assign(size_t(cols * cols), 0.f);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(cols), m, 1.f / float(m), x.data(), int(cols), 0.f, c.h.data(), int(cols));
    for (int64_t i = 0; i < cols; ++i) {
      c.h[size_t(i * cols + i)] += u(rng);
      for (int64_t j = 0; j < i; ++j) c.h[size_t(i * cols + j)] = c.h[size_t(j * cols + i)];
    }
    c.w.resize(size_t(rows * cols));
    for (auto& v : c.w) v = 0.02f * g(rng);
  }
  return c;
}

void set_rate(benchmark::State& st, double flops, int threads) {
  st.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["of_sgemm_limit"] = benchmark::Counter(flops / squish::bench::sgemm_rate(threads), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_GptqFactor(benchmark::State& st) {
  const int64_t cols = st.range(0);
  const int threads = static_cast<int>(st.range(1));
  oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism, threads);
  const Case& c = make(cols, cols);
  squish::quant::GptqFactor f;
  for (auto _ : st) f = squish::quant::gptq_factor(c.h.data(), cols);
  set_rate(st, 2.0 / 3.0 * double(cols) * cols * cols, threads);
  st.counters["float_residual"] = f.float_residual;
  st.SetLabel(f.in_double ? "double" : "float");
}

void BM_Gptq(benchmark::State& st) {
  const auto type = static_cast<GGMLType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2);
  const int threads = static_cast<int>(st.range(3));
  oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism, threads);
  const Case& c = make(rows, cols);
  for (auto _ : st) benchmark::DoNotOptimize(squish::quant::gptq_quantize(type, c.w.data(), rows, cols, c.h.data(), nullptr));
  set_rate(st, double(rows) * cols * cols + 2.0 / 3.0 * double(cols) * cols * cols, threads);
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
  for (auto [r, c] : {std::pair<int64_t, int64_t>{512, 512}, {512, 1536}, {2048, 5632}, {3584, 18944}, {5120, 27648}})
    for (int t : threads ? std::vector<int>{1, 2} : std::vector<int>{1}) b->Args({int64_t(GGMLType::Q4_K), r, c, t});
  b->Args({int64_t(GGMLType::Q3_K), 512, 1536, 1});
  b->Args({int64_t(GGMLType::Q2_K), 512, 1536, 1});
}

}  // namespace

BENCHMARK(BM_GptqFactor)->ArgsProduct({{5632, 18944}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_Gptq)->Apply([](auto* b) { shapes(b, true); })->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_Rounding)->Apply([](auto* b) { shapes(b, false); })->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
