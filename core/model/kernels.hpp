#pragma once
// The transformer's math, once: RMSNorm, RoPE, causal (optionally sliding-window) GQA attention
// and SwiGLU, for one row / one head at a time. The float reference model (transformer.cpp,
// float and double, with its backward pass) and the GGUF inference engine (engine.cpp) both
// call these; what differs between them is only where the weights and the KV cache live.
#include "core/arch/architecture.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace squish::kernels {

// Row-major C[M,N] = alpha op(A) op(B) + beta C on the calling thread (OpenBLAS is kept
// single-threaded: parallelism comes from TBB).
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B,
              ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B, int ldb,
                 double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B,
              ldb, beta, C, ldc);
}

// y = w * x / rms(x), rms = sqrt(mean(x^2) + eps); returns 1/rms (the backward needs it).
template <class F>
F rms_norm(const F* x, const F* w, F* y, int n, double eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const F r = F(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
  return r;
}

template <class F>
F silu(F x) { return x / (F(1) + std::exp(-x)); }

// h = silu(gate) * up, element-wise.
template <class F>
void swiglu(const F* gate, const F* up, F* h, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] = silu(gate[i]) * up[i];
}

// cos / sin of position pos * inv_freq[i] for the head_dim/2 rotary pairs, rows for positions
// pos0 .. pos0 + n - 1. Angles in double: positions reach 10^5 and more.
template <class F>
void rope_table(const std::vector<float>& inv_freq, int pos0, int n, std::vector<F>& cos_t, std::vector<F>& sin_t) {
  const size_t half = inv_freq.size();
  cos_t.resize(size_t(n) * half);
  sin_t.resize(size_t(n) * half);
  for (int t = 0; t < n; ++t)
    for (size_t i = 0; i < half; ++i) {
      const double a = double(pos0 + t) * inv_freq[i];
      cos_t[t * half + i] = F(std::cos(a));
      sin_t[t * half + i] = F(std::sin(a));
    }
}

// Rotates the rotary pairs of n_heads consecutive head vectors of one token (c, s: that
// token's row of the table). sign = -1 applies the inverse rotation (the backward).
template <class F>
void rope(F* x, int n_heads, int head_dim, arch::RopeLayout layout, const F* c, const F* s, F sign = F(1)) {
  const int half = head_dim / 2;
  const bool interleaved = layout == arch::RopeLayout::Interleaved;
  for (int h = 0; h < n_heads; ++h) {
    F* v = x + size_t(h) * head_dim;
    for (int i = 0; i < half; ++i) {
      const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
      const F x0 = v[a], x1 = v[b], si = sign * s[i];
      v[a] = x0 * c[i] - x1 * si;
      v[b] = x1 * c[i] + x0 * si;
    }
  }
}

// First key a query at position pos may see: causal, and within the sliding window if any.
inline int first_visible_key(int pos, int window) { return window > 0 ? std::max(0, pos - window + 1) : 0; }

// Attention probabilities of one head for `rows` queries at positions q_pos0 .. q_pos0+rows-1
// over keys 0 .. n_kv-1 (the first query's causal horizon is q_pos0 + 1 keys):
// P[i, j] = softmax_j(scale q_i . k_j) over the keys query i sees, 0 for the others. P has
// leading dimension n_kv; q rows are ldq apart, k rows ldk apart.
template <class F>
void attention_probs(F* P, const F* q, int ldq, const F* k, int ldk, int rows, int q_pos0, int n_kv, int head_dim,
                     F scale, int window) {
  if (rows >= 8) {
    gemm(false, true, rows, n_kv, head_dim, scale, q, ldq, k, ldk, F(0), P, n_kv);
  } else {  // a few rows (decode): plain dots cost less than BLAS packing
    for (int i = 0; i < rows; ++i)
      for (int j = first_visible_key(q_pos0 + i, window); j <= std::min(n_kv - 1, q_pos0 + i); ++j) {
        const F* qi = q + size_t(i) * ldq;
        const F* kj = k + size_t(j) * ldk;
        F d = 0;
        for (int e = 0; e < head_dim; ++e) d += qi[e] * kj[e];
        P[size_t(i) * n_kv + j] = d * scale;
      }
  }
  for (int i = 0; i < rows; ++i) {
    F* p = P + size_t(i) * n_kv;
    const int lo = first_visible_key(q_pos0 + i, window), hi = std::min(n_kv, q_pos0 + i + 1);
    F mx = p[lo];
    for (int j = lo + 1; j < hi; ++j) mx = std::max(mx, p[j]);
    double sum = 0;
    for (int j = lo; j < hi; ++j) sum += (p[j] = std::exp(p[j] - mx));
    const F inv = F(1.0 / sum);
    for (int j = 0; j < lo; ++j) p[j] = 0;
    for (int j = lo; j < hi; ++j) p[j] *= inv;
    for (int j = hi; j < n_kv; ++j) p[j] = 0;
  }
}

// O[rows, head_dim] = P[rows, n_kv] V[n_kv, head_dim] (o rows ldo apart, v rows ldv apart).
template <class F>
void attention_apply(const F* P, const F* v, int ldv, F* o, int ldo, int rows, int n_kv, int head_dim) {
  if (rows >= 8) return gemm(false, false, rows, head_dim, n_kv, F(1), P, n_kv, v, ldv, F(0), o, ldo);
  for (int i = 0; i < rows; ++i) {
    F* oi = o + size_t(i) * ldo;
    std::fill(oi, oi + head_dim, F(0));
    for (int j = 0; j < n_kv; ++j) {
      const F p = P[size_t(i) * n_kv + j];
      if (p == F(0)) continue;  // masked (or underflowed) keys add nothing
      const F* vj = v + size_t(j) * ldv;
      for (int e = 0; e < head_dim; ++e) oi[e] += p * vj[e];
    }
  }
}

}  // namespace squish::kernels
