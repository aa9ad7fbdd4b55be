// Inference at real sizes: decode and prefill of any GGUF, with the fraction of this machine's
// limits each reaches, measured in the same run:
//   - read bandwidth: one pass over a 1 GiB buffer, 8 independent AVX2 accumulators per thread;
//   - sgemm rate: OpenBLAS on the prefill's shape (512 x 2048 x 2048), one instance per thread;
//   - decode at depth d: the cache is first filled with d tokens, then tokens are decoded one at
//     a time; bw_fraction = weight bytes read per token x tok/s / read bandwidth (the KV cache
//     read at depth is reported apart as kv_MB, not counted as weights);
//   - prefill: 512-token chunks; sgemm_fraction = 2 x weight values x tok/s / sgemm rate.
//
//   scale_bench --model=FILE.gguf [--model=...] [--threads=1,2] [--depths=0,2048,8192] [--n=64]
//               [benchmark flags, e.g. --benchmark_repetitions=3]
// Synthetic models of any size: build/bin/squish-synth (README, "Inference at real sizes").
#include "core/model/engine.hpp"
#include "core/quant/ggml_types.hpp"
#include "bench/sgemm_rate.hpp"

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <fmt/core.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <thread>

using namespace squish;
using namespace squish::infer;
using squish::bench::sgemm_rate;

namespace {

std::vector<int> int_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
  return v;
}

// ---- the machine's limits -------------------------------------------------------------------

__attribute__((target("avx2"))) float read_slice(const float* p, size_t n) {
  __m256 a[8];
  for (auto& x : a) x = _mm256_setzero_ps();
  for (size_t i = 0; i + 64 <= n; i += 64)
    for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_load_ps(p + i + 8 * k));
  for (int k = 1; k < 8; ++k) a[0] = _mm256_add_ps(a[0], a[k]);
  float out[8];
  _mm256_storeu_ps(out, a[0]);
  return out[0];
}

// Bytes per second one pass over `bytes` reaches with `threads` threads, each on its own slice.
double read_bandwidth(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  const size_t bytes = size_t(1) << 30, n = bytes / sizeof(float);
  float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
  std::memset(buf, 1, bytes);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::atomic<float> sink{0};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] { sink = sink + read_slice(buf + n / threads * t, n / threads); });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(bytes) / s);
  }
  std::free(buf);
  return cache[threads] = best;
}

void BM_ReadBandwidth(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(read_bandwidth(static_cast<int>(state.range(0))));
  state.counters["GB_per_s"] = read_bandwidth(static_cast<int>(state.range(0))) / 1e9;
}

void BM_SgemmRate(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(sgemm_rate(static_cast<int>(state.range(0))));
  state.counters["GFLOP_per_s"] = sgemm_rate(static_cast<int>(state.range(0))) / 1e9;
}

// ---- the model ------------------------------------------------------------------------------

std::shared_ptr<const Model> model_of(const std::string& path) {
  static std::map<std::string, std::shared_ptr<const Model>> cache;
  auto& m = cache[path];
  if (!m) m = Model::load(path);
  return m;
}

// Deterministic token ids spread over the vocabulary (speed does not depend on them).
std::vector<int32_t> tokens_for(const Model& m, int n) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = static_cast<int32_t>((1 + 7919ull * i) % m.n_vocab());
  return t;
}

// The default (F16) cache's bytes per cached token.
size_t kv_bytes_per_token(const Model& m) { return size_t(KVCache::bytes_needed(m.architecture(), 1024, KVType::F16) / 1024); }

void BM_Decode(benchmark::State& state, const std::string& path, int n) {
  const int threads = static_cast<int>(state.range(0)), depth = static_cast<int>(state.range(1));
  auto m = model_of(path);
  Session s(m, depth + n + 1, threads);
  const auto toks = tokens_for(*m, depth + n);
  std::vector<float> logits;
  for (int i = 0; i < depth; i += 512) s.eval(std::span(toks).subspan(i, std::min(512, depth - i)), std::min(512, depth - i), logits);
  for (int i = 0; i < 4; ++i) s.eval(std::span(toks).subspan(depth + i, 1), 0, logits);  // warm-up: pages mapped
  for (auto _ : state) {
    s.rewind(depth);
    for (int i = 0; i < n; ++i) s.eval(std::span(toks).subspan(depth + i, 1), 0, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  const double bw = read_bandwidth(threads);
  const double wb = double(m->weight_bytes_per_token());
  state.counters["tok_per_s"] = benchmark::Counter(double(n) * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["weight_MB"] = wb / 1e6;
  state.counters["kv_MB"] = double(kv_bytes_per_token(*m)) * (depth + n / 2.0) / 1e6;
  state.counters["bw_bound_tok_per_s"] = bw / wb;
  state.counters["bw_fraction"] = benchmark::Counter(double(n) * state.iterations() * wb / bw, benchmark::Counter::kIsRate);
}

void BM_Prefill512(benchmark::State& state, const std::string& path) {
  const int threads = static_cast<int>(state.range(0));
  auto m = model_of(path);
  Session s(m, 512, threads);
  const auto toks = tokens_for(*m, 512);
  std::vector<float> logits;
  s.eval(std::span(toks).first(64), 63, logits);  // warm-up: pages mapped, buffers sized
  for (auto _ : state) {
    s.reset();
    s.eval(toks, 511, logits);  // as llama-bench pp512: logits of the last token only
    benchmark::DoNotOptimize(logits.data());
  }
  // Weight values multiplied per token (every matrix once; the embedding is a lookup).
  double values = 0;
  for (const auto& L : m->layers())
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) values += double(w->n_in) * w->n_out;
  state.counters["tok_per_s"] = benchmark::Counter(512.0 * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["sgemm_fraction"] =
      benchmark::Counter(512.0 * state.iterations() * 2 * values / sgemm_rate(threads), benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models;
  std::vector<int> threads = {1, 2}, depths = {0};
  int n = 64;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* k) { return a.rfind(k, 0) == 0 ? a.substr(std::strlen(k)) : std::string(); };
    if (!val("--model=").empty()) models.push_back(val("--model="));
    else if (!val("--threads=").empty()) threads = int_list(val("--threads="));
    else if (!val("--depths=").empty()) depths = int_list(val("--depths="));
    else if (!val("--n=").empty()) n = std::stoi(val("--n="));
    else rest.push_back(argv[i]);
  }
  for (int t : threads) {
    benchmark::RegisterBenchmark("ReadBandwidth", BM_ReadBandwidth)->Arg(t)->Iterations(1);
    benchmark::RegisterBenchmark("SgemmRate", BM_SgemmRate)->Arg(t)->Iterations(1);
  }
  for (const auto& path : models) {
    const std::string name = std::filesystem::path(path).stem().string();
    auto* d = benchmark::RegisterBenchmark(("Decode/" + name).c_str(), BM_Decode, path, n);
    auto* p = benchmark::RegisterBenchmark(("Prefill512/" + name).c_str(), BM_Prefill512, path);
    d->ArgNames({"threads", "depth"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1);
    p->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1);
    for (int t : threads) {
      p->Arg(t);
      for (int dep : depths) d->Args({t, dep});
    }
  }
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rc, rest.data())) return 2;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scale_bench: %s\n", e.what());
    return 3;
  }
  benchmark::Shutdown();
  return 0;
}
