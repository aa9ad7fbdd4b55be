// Quantizer, dequantizer and dot-kernel throughput per ggml type, in bytes of F32 data per second
// (quantize: F32 input; dequantize: F32 output; dot: F32-equivalent weights). Single thread and
// two threads (rows split between two std::threads). Set SQUISH_NO_SIMD=1 for the scalar paths.
#include "core/quant/quantize.hpp"
#include "core/quant/vec_dot.hpp"

#include <benchmark/benchmark.h>

#include <random>
#include <thread>
#include <vector>

namespace {
using squish::GGMLType;

constexpr int64_t kN = 4096;   // row length
constexpr int64_t kRows = 64;  // 1 MiB of F32 per iteration

const std::vector<float>& data() {
  static const std::vector<float> x = [] {
    std::mt19937 rng(1);
    std::normal_distribution<float> g(0.f, 0.02f);
    std::vector<float> v(kN * kRows);
    for (auto& f : v) f = g(rng);
    return v;
  }();
  return x;
}

const std::vector<float>& imatrix() {
  static const std::vector<float> w = [] {
    std::mt19937 rng(2);
    std::lognormal_distribution<float> d(0.f, 1.f);
    std::vector<float> v(kN);
    for (auto& f : v) f = d(rng);
    return v;
  }();
  return w;
}

// args: type id, threads, weighted (imatrix)
void BM_Quantize(benchmark::State& state) {
  const auto t = static_cast<GGMLType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const float* qw = state.range(2) ? imatrix().data() : nullptr;
  const auto& x = data();
  const size_t rs = squish::ggml_row_size(t, kN);
  std::vector<uint8_t> q(rs * kRows);
  for (auto _ : state) {
    if (threads == 1) {
      squish::quantize_rows(t, x.data(), q.data(), kRows, kN, qw);
    } else {
      std::vector<std::thread> pool;
      const int64_t per = kRows / threads;
      for (int i = 0; i < threads; ++i)
        pool.emplace_back([&, i] { squish::quantize_rows(t, x.data() + i * per * kN, q.data() + i * per * rs, per, kN, qw); });
      for (auto& th : pool) th.join();
    }
    benchmark::DoNotOptimize(q.data());
  }
  state.SetBytesProcessed(state.iterations() * kN * kRows * sizeof(float));
  state.SetLabel(std::string(squish::ggml_type_name(t)) + (qw ? "+imatrix" : "") + (squish::quant_simd_enabled() ? " avx2" : " scalar"));
}

void BM_Dequantize(benchmark::State& state) {
  const auto t = static_cast<GGMLType>(state.range(0));
  const auto& x = data();
  const size_t rs = squish::ggml_row_size(t, kN);
  std::vector<uint8_t> q(rs * kRows);
  squish::quantize_rows(t, x.data(), q.data(), kRows, kN);
  std::vector<float> y(kN);
  for (auto _ : state) {
    for (int64_t r = 0; r < kRows; ++r) squish::dequantize_row(t, q.data() + r * rs, y.data(), kN);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kN * kRows * sizeof(float));
  state.SetLabel(squish::ggml_type_name(t));
}

// A matrix-vector product over kRows rows (activations quantized once per iteration).
void BM_VecDot(benchmark::State& state) {
  const auto t = static_cast<GGMLType>(state.range(0));
  const auto& x = data();
  const size_t rs = squish::ggml_row_size(t, kN);
  std::vector<uint8_t> q(rs * kRows), xq(squish::activation_row_size(t, kN));
  squish::quantize_rows(t, x.data(), q.data(), kRows, kN);
  std::vector<float> out(kRows);
  for (auto _ : state) {
    squish::quantize_activations(t, x.data(), xq.data(), kN);
    squish::matvec(t, kRows, kN, q.data(), xq.data(), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * kN * kRows * sizeof(float));
  state.counters["weight_bytes/s"] = benchmark::Counter(static_cast<double>(rs * kRows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(squish::ggml_type_name(t));
}

const GGMLType kTypes[] = {GGMLType::F16,  GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q2_K,
                           GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::IQ4_NL, GGMLType::IQ4_XS};

void QuantArgs(benchmark::internal::Benchmark* b) {
  for (GGMLType t : kTypes)
    for (int threads : {1, 2}) b->Args({static_cast<int64_t>(t), threads, 0});
  for (GGMLType t : {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K})
    b->Args({static_cast<int64_t>(t), 1, 1});
}
void TypeArgs(benchmark::internal::Benchmark* b) {
  b->Arg(static_cast<int64_t>(GGMLType::F32));
  for (GGMLType t : kTypes) b->Arg(static_cast<int64_t>(t));
}

BENCHMARK(BM_Quantize)->Apply(QuantArgs)->ArgNames({"type", "threads", "imatrix"})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Dequantize)->Apply(TypeArgs)->ArgName("type")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VecDot)->Apply(TypeArgs)->ArgName("type")->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
