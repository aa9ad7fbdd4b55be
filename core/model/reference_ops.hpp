#pragma once
// The float reference model's ops on a chunk of T tokens (rows), each op's backward right after
// its forward: linear layers as GEMMs split by shape over TBB, RMSNorm, RoPE and SwiGLU row by
// row (the one-row kernels of kernels.hpp), the scalar masks on heads, channels and branches,
// and the column sums the statistics read. Row-major throughout; weights are [out, in], so a
// linear layer is Y = X W^T. Internal to core/model (reference_model.cpp).
#include "core/model/kernels.hpp"
#include "core/model/parallel.hpp"

#include <algorithm>
#include <vector>

namespace squish::reference_ops {

using kernels::gemm;

// One thread pool only: OpenBLAS runs single-threaded (core/cli/process_startup.cpp) and large
// products are split here into single-threaded sgemm calls on the TBB threads, along the larger
// output dimension. Two pools on two cores (OpenBLAS's spinning workers beside TBB's) cost
// ~20% of the time in sched_yield.
//
// The split depends on the shape only, never on the thread count: OpenBLAS may sum an element's
// K products in another order for another tile shape (edge kernels, small-matrix paths), so a
// thread-dependent split made one process and N MPI ranks (or 1 and 2 threads) disagree in the
// last float bits. With fixed tiles every element is computed by the same call on any machine
// of the same OpenBLAS kernel, whatever the threads, and the score statistics match exactly
// up to the order of the per-chunk sums (tests/score_scale_test.cpp).
template <class F>
void gemm_mt(bool ta, bool tb, int M, int N, int K, F alpha, const F* A, int lda, const F* B, int ldb, F beta, F* C,
             int ldc) {
  const double work = double(M) * N * K;
  if (work < 1e6) return gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  // Tiles of at least 128 rows or columns (narrower ones lose 5-15% of sgemm's rate to
  // re-packing the shared operand), at most 16 of them, an even number where there are several
  // so that two threads (a laptop, CI) get equal shares.
  const auto step_of = [](int n) {
    int tiles = std::clamp(n / 128, 1, 16);
    if (tiles > 1) tiles &= ~1;
    return std::max(1, ((n + tiles - 1) / tiles + 15) / 16 * 16);
  };
  if (N >= M) {  // columns of C <-> columns of op(B)
    const int step = step_of(N), tiles = (N + step - 1) / step;
    par_for_balanced(tiles, work / tiles, [&](int p) {
      const int j0 = p * step, n = std::min(N, j0 + step) - j0;
      const F* Bj = tb ? B + size_t(j0) * ldb : B + j0;
      gemm(ta, tb, M, n, K, alpha, A, lda, Bj, ldb, beta, C + j0, ldc);
    });
  } else {  // rows of C <-> rows of op(A)
    const int step = step_of(M), tiles = (M + step - 1) / step;
    par_for_balanced(tiles, work / tiles, [&](int p) {
      const int i0 = p * step, m = std::min(M, i0 + step) - i0;
      const F* Ai = ta ? A + i0 : A + size_t(i0) * lda;
      gemm(ta, tb, m, N, K, alpha, Ai, lda, B, ldb, beta, C + size_t(i0) * ldc, ldc);
    });
  }
}

// Y[T,N] = X[T,K] W[N,K]^T (+ bias)
template <class F>
void linear(const F* X, const F* W, const F* bias, F* Y, int T, int K, int N) {
  gemm_mt(false, true, T, N, K, F(1), X, K, W, K, F(0), Y, N);
  if (bias)
    par_for_balanced(T, N, [&](int t) {
      for (int n = 0; n < N; ++n) Y[size_t(t) * N + n] += bias[n];
    });
}

// dX[T,K] (+)= dY[T,N] W[N,K] (weights are frozen: no dW)
template <class F>
void linear_backward(const F* dY, const F* W, F* dX, int T, int K, int N, bool accumulate) {
  gemm_mt(false, false, T, K, N, F(1), dY, N, W, K, accumulate ? F(1) : F(0), dX, K);
}

// y = w * x / rms(x) per row; keeps 1/rms per row for the backward.
template <class F>
void rmsnorm(const F* x, const F* w, F* y, F* rstd, int T, int D, double eps) {
  par_for_balanced(T, 3 * D, [&](int t) { rstd[t] = kernels::rms_norm(x + size_t(t) * D, w, y + size_t(t) * D, D, eps); });
}

// dx += dL/dx of every row (dx holds the residual stream's gradient).
template <class F>
void rmsnorm_backward(const F* x, const F* w, const F* rstd, const F* dy, F* dx, int T, int D) {
  par_for_balanced(T, 6 * D, [&](int t) {
    kernels::rms_norm_backward(x + size_t(t) * D, w, rstd[t], dy + size_t(t) * D, dx + size_t(t) * D, D);
  });
}

// RoPE on T tokens of n_heads heads, in HF's rotate-half layout (the checkpoint's q/k rows);
// cos_t / sin_t: kernels::rope_table rows of the T positions.
template <class F>
void rope(F* x, int T, int n_heads, int hd, const std::vector<F>& cos_t, const std::vector<F>& sin_t) {
  const int half = hd / 2;
  par_for_balanced(T, 3 * n_heads * hd, [&](int t) {
    kernels::rope(x + size_t(t) * n_heads * hd, n_heads, hd, arch::RopeLayout::HalfSplit, cos_t.data() + size_t(t) * half,
                  sin_t.data() + size_t(t) * half);
  });
}

// dx = R^T dx in place, every token.
template <class F>
void rope_backward(F* dx, int T, int n_heads, int hd, const std::vector<F>& cos_t, const std::vector<F>& sin_t) {
  const int half = hd / 2;
  par_for_balanced(T, 3 * n_heads * hd, [&](int t) {
    kernels::rope_backward(dx + size_t(t) * n_heads * hd, n_heads, hd, arch::RopeLayout::HalfSplit,
                           cos_t.data() + size_t(t) * half, sin_t.data() + size_t(t) * half);
  });
}

// a = silu(g) * u, [T, FF].
template <class F>
void swiglu(const F* g, const F* u, F* a, int T, int FF) {
  par_for_balanced(T, 20 * FF, [&](int t) {
    const size_t row = size_t(t) * FF;
    kernels::swiglu(g + row, u + row, a + row, FF);
  });
}

template <class F>
void swiglu_backward(const F* g, const F* u, const F* da, F* dg, F* du, int T, int FF) {
  par_for_balanced(T, 20 * FF, [&](int t) {
    const size_t row = size_t(t) * FF;
    kernels::swiglu_backward(g + row, u + row, da + row, dg + row, du + row, FF);
  });
}

// Sum over rows of a[t,c]*b[t,c] per column c, added to out[c] (gradients of per-column scales).
template <class F>
void col_dot(const F* a, const F* b, int T, int C, double* out) {
  constexpr int kCols = 64;
  par_for_balanced((C + kCols - 1) / kCols, double(T) * kCols, [&](int blk) {
    const int c0 = blk * kCols, c1 = std::min(C, c0 + kCols);
    for (int t = 0; t < T; ++t)
      for (int c = c0; c < c1; ++c) out[c] += double(a[size_t(t) * C + c]) * b[size_t(t) * C + c];
  });
}

// h[t,c] = a[t,c] * m[c]: the FFN channel masks.
template <class F>
void scale_channels(const F* a, const F* m, F* h, int T, int FF) {
  par_for_balanced(T, FF, [&](int t) {
    const size_t row = size_t(t) * FF;
    for (int c = 0; c < FF; ++c) h[row + c] = a[row + c] * m[c];
  });
}

// dm[c] += sum_t dh[t,c] a[t,c]; then dh *= m in place (dh becomes da).
template <class F>
void scale_channels_backward(F* dh, const F* a, const F* m, int T, int FF, double* dm) {
  col_dot(dh, a, T, FF, dm);
  par_for_balanced(T, FF, [&](int t) {
    const size_t row = size_t(t) * FF;
    for (int c = 0; c < FF; ++c) dh[row + c] *= m[c];
  });
}

// att[t, h*hd + i] = o[t, h*hd + i] * m[h]: one scale per head's output.
template <class F>
void scale_heads(const F* o, const F* m, F* att, int T, int n_heads, int hd) {
  const int Q = n_heads * hd;
  par_for_balanced(T, Q, [&](int t) {
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd; ++i) {
        const size_t idx = size_t(t) * Q + size_t(h) * hd + i;
        att[idx] = o[idx] * m[h];
      }
  });
}

// dm[h] = sum over the head's outputs of datt o (written); then datt *= m in place (datt
// becomes do).
template <class F>
void scale_heads_backward(F* datt, const F* o, const F* m, int T, int n_heads, int hd, double* dm) {
  const int Q = n_heads * hd;
  par_for_balanced(n_heads, double(T) * hd, [&](int h) {
    double acc = 0;
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < hd; ++i) {
        const size_t idx = size_t(t) * Q + size_t(h) * hd + i;
        acc += double(datt[idx]) * o[idx];
      }
    dm[h] = acc;
  });
  par_for_balanced(T, Q, [&](int t) {
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd; ++i) datt[size_t(t) * Q + size_t(h) * hd + i] *= m[h];
  });
}

template <class F>
double dot_all(const F* a, const F* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}

// out = x + m * y: a branch (attention or MLP) added to the residual stream under its mask.
template <class F>
void add_branch(const F* x, F m, const F* y, F* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + m * y[i];
}

// dL/dx = dL/dout passes through unchanged; dy = m dout (written); returns dL/dm = <dout, y>.
template <class F>
double add_branch_backward(const F* dout, F m, const F* y, F* dy, size_t n) {
  const double dm = dot_all(dout, y, n);
  for (size_t i = 0; i < n; ++i) dy[i] = m * dout[i];
  return dm;
}

// Column sums of x (or of x^2: imatrix statistics) over T rows, in double.
template <class F, bool kSquare = true>
std::vector<double> col_sum_sq(const F* x, int T, int D) {
  std::vector<double> s(D, 0.0);
  constexpr int kCols = 64;
  par_for_balanced((D + kCols - 1) / kCols, double(T) * kCols, [&](int b) {
    const int d0 = b * kCols, d1 = std::min(D, d0 + kCols);
    for (int t = 0; t < T; ++t) {
      const F* xr = x + size_t(t) * D;
      for (int d = d0; d < d1; ++d) s[d] += kSquare ? double(xr[d]) * xr[d] : double(xr[d]);
    }
  });
  return s;
}

template <class F>
std::vector<double> col_sum(const F* x, int T, int D) { return col_sum_sq<F, false>(x, T, D); }

}  // namespace squish::reference_ops
