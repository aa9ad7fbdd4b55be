#pragma once
// This machine's sgemm limit, measured in the run that quotes a fraction of it (shared by the
// benchmarks that report sgemm_fraction).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <thread>
#include <vector>

namespace squish::bench {

// FLOP/s of single-threaded sgemm instances, one per thread, on the prefill's shape.
inline double sgemm_rate(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  const int M = 512, N = 2048, K = 2048;
  openblas_set_num_threads(1);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> a(size_t(M) * K), b(size_t(N) * K);
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  // Best of at least 3 repetitions and 1 s: one short run on a shared machine can land on a
  // busy moment or a cold core.
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int rep = 0; rep < 3 || std::chrono::steady_clock::now() - start < std::chrono::seconds(1); ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&] {
        std::vector<float> c(size_t(M) * N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N);
      });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * M * N * K * threads / s);
  }
  return cache[threads] = best;
}

}  // namespace squish::bench
