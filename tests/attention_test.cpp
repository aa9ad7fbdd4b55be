// The engine's KV cache and attention (core/model/attention.hpp) against a direct double
// precision softmax attention over the same stored keys and values (F16-rounded for an F16
// cache): decode (flash-decoding over spans, SIMD or scalar) and batches, GQA groups of several
// sizes, head sizes that are and are not multiples of 16, sliding windows, several query rows.
#include "core/model/attention.hpp"
#include "core/model/kernels.hpp"
#include "core/base/tensor.hpp"

#include <gtest/gtest.h>
#include <tbb/task_arena.h>

#include <cmath>
#include <random>
#include <vector>

namespace squish::infer {
namespace {

struct Case {
  int head_dim, n_head, n_head_kv, n_ctx, window;
  KVType type;
};

// Forward error bound of float arithmetic with n roundings, unit roundoff u = 2^-24.
double gamma(double n) { return n * 0x1p-24 / (1 - n * 0x1p-24); }

// out[t, h] for query rows at p0.. over keys 0..p0+t (window), in double, and beside it a bound
// on how far any float evaluation may be from it, whatever the order of its sums (SIMD width,
// spans over threads, BLAS kernel). A score is a D-term dot times the scale: off by at most
// d_j = γ(D+1)·scale·Σ_e|q_e k_je| (+ its own rounding); shifting the scores by at most dmax
// moves each weight p_j by a factor within e^{±2dmax}; the exponentials (a few ulps each), the
// normaliser's nk-term sum, flash-decoding's rescaled partial sums (one per 16-key span) and the
// output's nk-term sum add γ(nk + 2(nk/16 + 1) + 8). All of it multiplies Σ_j p_j |v_je|.
struct Reference {
  std::vector<double> out, bound;
};
Reference reference(const Case& c, const std::vector<float>& k, const std::vector<float>& v, const float* q, int p0, int T,
                    float scale) {
  const int D = c.head_dim, G = c.n_head / c.n_head_kv, HK = c.n_head_kv * D, HQ = c.n_head * D;
  auto stored = [&](float x) { return c.type == KVType::F16 ? f16_to_f32(f32_to_f16(x)) : x; };
  Reference r{std::vector<double>(size_t(T) * HQ, 0.0), std::vector<double>(size_t(T) * HQ, 0.0)};
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < c.n_head; ++h) {
      const int g = h / G, pos = p0 + t, lo = kernels::first_visible_key(pos, c.window), nk = pos + 1 - lo;
      std::vector<double> s(pos + 1, 0.0);
      double m = -1e300, dmax = 0;
      for (int j = lo; j <= pos; ++j) {
        double d = 0, mag = 0;
        for (int e = 0; e < D; ++e) {
          const double x = double(q[size_t(t) * HQ + h * D + e]) * stored(k[size_t(j) * HK + g * D + e]);
          d += x, mag += std::fabs(x);
        }
        s[j] = d * scale;
        m = std::max(m, s[j]);
        dmax = std::max(dmax, gamma(D + 1) * scale * mag + 0x1p-24 * std::fabs(s[j]));
      }
      const double rel = std::expm1(2 * dmax) + 8 * 0x1p-24 + gamma(nk + 2 * (nk / 16 + 1) + 8);
      double l = 0;
      for (int j = lo; j <= pos; ++j) l += (s[j] = std::exp(s[j] - m));
      for (int j = lo; j <= pos; ++j)
        for (int e = 0; e < D; ++e) {
          const double x = stored(v[size_t(j) * HK + g * D + e]);
          r.out[size_t(t) * HQ + h * D + e] += s[j] / l * x;
          r.bound[size_t(t) * HQ + h * D + e] += rel * s[j] / l * std::fabs(x);
        }
    }
  return r;
}

void check(const Case& c) {
  arch::ModelArch a;
  a.head_dim = c.head_dim;
  a.layers.resize(2);
  for (auto& L : a.layers) L.n_head = c.n_head, L.n_head_kv = c.n_head_kv;
  const int D = c.head_dim, HK = c.n_head_kv * D, HQ = c.n_head * D, n = c.n_ctx;
  std::mt19937 rng(c.head_dim * 131 + n);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> q(size_t(n) * HQ), k(size_t(n) * HK), v(k.size());
  for (auto& x : q) x = g(rng);
  for (auto& x : k) x = g(rng);
  for (auto& x : v) x = g(rng);
  const float scale = 1.f / std::sqrt(float(D));
  const Reference want = reference(c, k, v, q.data(), 0, n, scale);
  for (int threads : {1, 2}) {
  tbb::task_arena arena(threads);
  arena.execute([&] {
    KVCache cache(a, n, c.type);
    // Layer 1 as a prefill in two chunks (batched attention), layer 0 token by token (decode),
    // the last 5 rows of layer 0 as one 5-row decode call.
    const int half = n / 2;
    std::vector<float> batch(size_t(n) * HQ), step(size_t(n) * HQ);
    cache.store(1, 0, half, k.data(), v.data());
    cache.attend(1, 0, half, q.data(), batch.data(), scale, c.window);
    cache.store(1, half, n - half, k.data() + size_t(half) * HK, v.data() + size_t(half) * HK);
    cache.attend(1, half, n - half, q.data() + size_t(half) * HQ, batch.data() + size_t(half) * HQ, scale, c.window);
    for (int t = 0; t < n - 5; ++t) {
      cache.store(0, t, 1, k.data() + size_t(t) * HK, v.data() + size_t(t) * HK);
      cache.attend(0, t, 1, q.data() + size_t(t) * HQ, step.data() + size_t(t) * HQ, scale, c.window);
    }
    cache.store(0, n - 5, 5, k.data() + size_t(n - 5) * HK, v.data() + size_t(n - 5) * HK);
    cache.attend(0, n - 5, 5, q.data() + size_t(n - 5) * HQ, step.data() + size_t(n - 5) * HQ, scale, c.window);

    // Worst error as a share of the bound (1 = at the bound).
    double worst_batch = 0, worst_step = 0;
    for (size_t i = 0; i < want.out.size(); ++i) {
      worst_batch = std::max(worst_batch, std::fabs(batch[i] - want.out[i]) / want.bound[i]);
      worst_step = std::max(worst_step, std::fabs(step[i] - want.out[i]) / want.bound[i]);
    }
    EXPECT_LE(worst_batch, 1.0) << "batched, D=" << D << " G=" << c.n_head / c.n_head_kv << " n=" << n << " window=" << c.window;
    EXPECT_LE(worst_step, 1.0) << "decode, D=" << D << " G=" << c.n_head / c.n_head_kv << " n=" << n << " window=" << c.window;
  });
  }
}

TEST(Attention, MatchesDirectSoftmaxAttention) {
  for (KVType type : {KVType::F16, KVType::F32}) {
    check({8, 8, 4, 40, 0, type});      // stories260K's heads
    check({32, 16, 4, 300, 0, type});   // coder-28m's
    check({128, 4, 1, 800, 0, type});   // several spans per KV head
    check({24, 10, 2, 270, 0, type});   // D % 16 == 8, five query heads per group
    check({64, 6, 6, 530, 100, type});  // no grouping, sliding window
    check({16, 4, 1, 9, 0, type});      // fewer keys than a block
  }
}

}  // namespace
}  // namespace squish::infer
