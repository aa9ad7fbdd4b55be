#pragma once
// The transformer's math, once: RMSNorm, RoPE, causal (optionally sliding-window) GQA attention
// and SwiGLU, for one row / one head at a time, each op's backward (`*_backward`) right after
// its forward. The float reference model (reference_model.cpp, float and double, forward and
// backward) and the GGUF inference engine (engine.cpp, forward) both call these; what differs
// between them is only where the weights and the KV cache live.
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

// dx += r (w dy) - x r^3 mean((w dy) x): the derivative of y = w x r with r = (mean x^2 + eps)^-1/2
// (r as rms_norm returned it). dx accumulates: the residual stream's gradient arrives in it.
template <class F>
void rms_norm_backward(const F* x, const F* w, F r, const F* dy, F* dx, int n) {
  double dot = 0;
  for (int i = 0; i < n; ++i) dot += double(w[i]) * dy[i] * x[i];
  const F c = F(dot / n) * r * r * r;
  for (int i = 0; i < n; ++i) dx[i] += r * w[i] * dy[i] - c * x[i];
}

template <class F>
F silu(F x) { return x / (F(1) + std::exp(-x)); }

template <class F>
F sigmoid(F x) { return F(1) / (F(1) + std::exp(-x)); }

// h = silu(gate) * up, element-wise.
template <class F>
void swiglu(const F* gate, const F* up, F* h, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] = silu(gate[i]) * up[i];
}

// dgate = dh up silu'(gate), dup = dh silu(gate), with silu(g) = g s and silu'(g) = s (1 + g (1 - s)),
// s = sigmoid(g).
template <class F>
void swiglu_backward(const F* gate, const F* up, const F* dh, F* dgate, F* dup, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const F s = sigmoid(gate[i]);
    dup[i] = dh[i] * gate[i] * s;
    dgate[i] = dh[i] * up[i] * s * (F(1) + gate[i] * (F(1) - s));
  }
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

namespace detail {
// Rotates the rotary pairs by the angles (sign = 1) or back (sign = -1).
template <class F>
void rotate_pairs(F* x, int n_heads, int head_dim, arch::RopeLayout layout, const F* c, const F* s, F sign) {
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
}  // namespace detail

// Rotates the rotary pairs of n_heads consecutive head vectors of one token (c, s: that
// token's row of the table).
template <class F>
void rope(F* x, int n_heads, int head_dim, arch::RopeLayout layout, const F* c, const F* s) {
  detail::rotate_pairs(x, n_heads, head_dim, layout, c, s, F(1));
}

// The backward of a rotation is its transpose, the inverse rotation: dx = R^T dy, in place.
template <class F>
void rope_backward(F* dx, int n_heads, int head_dim, arch::RopeLayout layout, const F* c, const F* s) {
  detail::rotate_pairs(dx, n_heads, head_dim, layout, c, s, F(-1));
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

// Backward of attention_probs for the same rows, S = scale q k^T the scores before the softmax.
// dP [rows, n_kv] holds dL/dP on entry and dL/dS on return: dS = P (dP - sum_j P dP) per row
// (keys a query does not see have P = 0 and get no gradient). Then dq = scale dS k is written
// (rows lddq apart) and dk += scale dS^T q is added (n_kv rows lddk apart). Always BLAS.
template <class F>
void attention_probs_backward(const F* P, F* dP, const F* q, int ldq, const F* k, int ldk, F* dq, int lddq, F* dk,
                              int lddk, int rows, int n_kv, int head_dim, F scale) {
  for (int i = 0; i < rows; ++i) {
    const F* p = P + size_t(i) * n_kv;
    F* dp = dP + size_t(i) * n_kv;
    double dsum = 0;
    for (int j = 0; j < n_kv; ++j) dsum += double(p[j]) * dp[j];
    for (int j = 0; j < n_kv; ++j) dp[j] = p[j] * (dp[j] - F(dsum));
  }
  gemm(false, false, rows, head_dim, n_kv, scale, dP, n_kv, k, ldk, F(0), dq, lddq);
  gemm(true, false, n_kv, head_dim, rows, scale, dP, n_kv, q, ldq, F(1), dk, lddk);
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

// Backward of attention_apply: dP = dO v^T is written ([rows, n_kv]), dv += P^T dO is added
// (n_kv rows lddv apart); dO rows are ldo apart. Always BLAS.
template <class F>
void attention_apply_backward(const F* P, const F* v, int ldv, const F* dO, int ldo, F* dP, F* dv, int lddv, int rows,
                              int n_kv, int head_dim) {
  gemm(false, true, rows, n_kv, head_dim, F(1), dO, ldo, v, ldv, F(0), dP, n_kv);
  gemm(true, false, n_kv, head_dim, rows, F(1), P, n_kv, dO, ldo, F(1), dv, lddv);
}

}  // namespace squish::kernels
