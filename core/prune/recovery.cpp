#include "core/prune/recovery.hpp"

#include "core/base/error.hpp"
#include "core/linalg/spd.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace squish::prune {

Recovery recovery_from_name(const std::string& name) {
  if (name == "none") return Recovery::None;
  if (name == "bias") return Recovery::Bias;
  if (name == "refit") return Recovery::Refit;
  fail(ExitCode::Usage, "recovery must be none, bias or refit (got '{}')", name);
}

const char* recovery_name(Recovery r) {
  switch (r) {
    case Recovery::None: return "none";
    case Recovery::Bias: return "bias";
    case Recovery::Refit: return "refit";
  }
  return "none";
}

namespace {

// The refit's damping: `ridge` x the kept inputs' mean E[x²] on their diagonal (not on the
// constant's row), at least 1e-10, raised up to 8 times (dead inputs make H singular).
constexpr int kRidgeAttempts = 8;
constexpr const char* kMoments = "input moments";

std::vector<double> cholesky(std::vector<double> a, int k, int damped, double ridge) {
  const double mean_diag = linalg::mean_diagonal(a, k, damped);
  return linalg::damped_cholesky(std::move(a), k, damped, mean_diag, std::max(ridge, 1e-10), kRidgeAttempts, kMoments).lower;
}

// Inverse of a symmetric positive definite matrix (row-major in, full symmetric out).
std::vector<double> inverse(std::vector<double> a, int k, int damped, double ridge) {
  std::vector<double> f = cholesky(std::move(a), k, damped, ridge);
  linalg::inverse_from_cholesky(f, k, kMoments);
  return f;
}

std::vector<int64_t> complement(std::span<const int64_t> keep, int n) {
  std::vector<char> kept(size_t(n), 0);
  for (int64_t c : keep) {
    if (c < 0 || c >= n) fail(ExitCode::Runtime, "kept column {} outside 0..{}", c, n - 1);
    kept[size_t(c)] = 1;
  }
  std::vector<int64_t> r;
  for (int j = 0; j < n; ++j)
    if (!kept[size_t(j)]) r.push_back(j);
  return r;
}

void check_stats(const InputStats& s, int n) {
  if (s.n != n || s.h.size() != size_t(n) * n || s.mean.size() != size_t(n))
    fail(ExitCode::InputData, "input statistics are for {} columns, the projection has {}", s.n, n);
}

}  // namespace

Repair repair(const float* w, int64_t rows, int n, std::span<const int64_t> keep, const InputStats& s, Recovery mode, double damp) {
  check_stats(s, n);
  const std::vector<int64_t> removed = complement(keep, n);
  const int k = static_cast<int>(keep.size()), nr = static_cast<int>(removed.size());
  Repair out;
  out.weight.resize(size_t(rows) * k);
  out.bias.assign(size_t(rows), 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int c = 0; c < k; ++c) out.weight[size_t(i) * k + c] = w[size_t(i) * n + size_t(keep[c])];
  if (mode == Recovery::None || nr == 0) return out;

  if (mode == Recovery::Bias) {
    for (int64_t i = 0; i < rows; ++i) {
      double b = 0;
      for (int64_t j : removed) b += double(w[size_t(i) * n + size_t(j)]) * s.mean[size_t(j)];
      out.bias[size_t(i)] = static_cast<float>(b);
    }
    return out;
  }

  // Refit: X ((k+1) x nr, column j = the regression of x_{R_j} on z) solves (G + λ) X = Tᵀ.
  const int kz = k + 1;
  std::vector<double> g(size_t(kz) * kz);
  for (int a = 0; a < k; ++a) {
    for (int b = 0; b < k; ++b) g[size_t(a) * kz + b] = s.h[size_t(keep[a]) * n + size_t(keep[b])];
    g[size_t(a) * kz + k] = g[size_t(k) * kz + a] = s.mean[size_t(keep[a])];
  }
  g[size_t(k) * kz + k] = 1.0;
  const std::vector<double> f = cholesky(std::move(g), kz, k, damp);
  std::vector<double> x(size_t(kz) * nr);  // column-major: column r is the right-hand side T_r
  for (int r = 0; r < nr; ++r) {
    for (int a = 0; a < k; ++a) x[size_t(r) * kz + a] = s.h[size_t(removed[r]) * n + size_t(keep[a])];
    x[size_t(r) * kz + k] = s.mean[size_t(removed[r])];
  }
  linalg::solve_with_cholesky(f, kz, x.data(), nr, "least-squares refit");
  // [W' b] += W_R Xᵀ: rows x nr times nr x kz.
  std::vector<double> wr(size_t(rows) * nr), delta(size_t(rows) * kz);
  for (int64_t i = 0; i < rows; ++i)
    for (int r = 0; r < nr; ++r) wr[size_t(i) * nr + r] = w[size_t(i) * n + size_t(removed[r])];
  // x is column-major kz x nr, i.e. row-major nr x kz: exactly Xᵀ's layout.
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), kz, nr, 1.0, wr.data(), nr, x.data(), kz, 0.0, delta.data(), kz);
  for (int64_t i = 0; i < rows; ++i) {
    for (int c = 0; c < k; ++c) out.weight[size_t(i) * k + c] += static_cast<float>(delta[size_t(i) * kz + c]);
    out.bias[size_t(i)] = static_cast<float>(delta[size_t(i) * kz + k]);
  }
  return out;
}

std::vector<double> reconstruction_error(const float* w, int64_t rows, int n, std::span<const int64_t> keep, const Repair& r,
                                         const InputStats& s) {
  check_stats(s, n);
  const size_t k = keep.size();
  if (r.weight.size() != size_t(rows) * k || r.bias.size() != size_t(rows))
    fail(ExitCode::Runtime, "reconstruction_error: repair has the wrong shape");
  // Δ_i over the n inputs and the constant: e_i = Δ_i·x + β_i with β_i = -b_i.
  std::vector<double> d(size_t(rows) * n), dh(size_t(rows) * n), h(s.h.begin(), s.h.end());
  for (int64_t i = 0; i < rows; ++i) {
    double* di = d.data() + size_t(i) * n;
    for (int j = 0; j < n; ++j) di[j] = w[size_t(i) * n + j];
    for (size_t c = 0; c < k; ++c) di[keep[c]] -= r.weight[size_t(i) * k + c];
  }
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), n, n, 1.0, d.data(), n, h.data(), n, 0.0, dh.data(), n);
  std::vector<double> e(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    double quad = 0, lin = 0;
    for (int j = 0; j < n; ++j) {
      quad += d[size_t(i) * n + j] * dh[size_t(i) * n + j];
      lin += d[size_t(i) * n + j] * s.mean[size_t(j)];
    }
    const double beta = -double(r.bias[size_t(i)]);
    e[size_t(i)] = std::max(0.0, quad + 2 * beta * lin + beta * beta);
  }
  return e;
}

RemovalCost::RemovalCost(const float* w, int64_t rows, int n, const InputStats& s, std::span<const float> g, Recovery mode,
                         double damp)
    : n_(n), mode_(mode) {
  check_stats(s, n);
  if (g.size() != size_t(rows)) fail(ExitCode::InputData, "{} output weights for a projection of {} rows", g.size(), rows);
  std::vector<double> wg(size_t(rows) * n);
  for (int64_t i = 0; i < rows; ++i) {
    const double sg = std::sqrt(std::max(0.0f, g[size_t(i)]));
    for (int j = 0; j < n; ++j) wg[size_t(i) * n + j] = sg * w[size_t(i) * n + j];
  }
  a_.assign(size_t(n) * n, 0.0);
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, int(rows), 1.0, wg.data(), n, 0.0, a_.data(), n);
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) a_[size_t(j) * n + i] = a_[size_t(i) * n + j];
  m_.assign(size_t(n) * n, 0.0);
  switch (mode) {
    case Recovery::None:
      for (size_t i = 0; i < m_.size(); ++i) m_[i] = s.h[i];
      break;
    case Recovery::Bias:
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) m_[size_t(i) * n + j] = double(s.h[size_t(i) * n + j]) - double(s.mean[size_t(i)]) * s.mean[size_t(j)];
      break;
    case Recovery::Refit: {
      const int nz = n + 1;
      std::vector<double> g_aug(size_t(nz) * nz);
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) g_aug[size_t(i) * nz + j] = s.h[size_t(i) * n + j];
        g_aug[size_t(i) * nz + n] = g_aug[size_t(n) * nz + i] = s.mean[size_t(i)];
      }
      g_aug[size_t(n) * nz + n] = 1.0;
      const std::vector<double> p = inverse(std::move(g_aug), nz, n, damp);
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) m_[size_t(i) * n + j] = p[size_t(i) * nz + j];
      break;
    }
  }
}

double RemovalCost::single(int64_t j) const {
  const double a = a_[size_t(j) * n_ + size_t(j)], m = m_[size_t(j) * n_ + size_t(j)];
  if (mode_ == Recovery::Refit) return m > 0 ? 0.5 * a / m : 0.0;
  return 0.5 * a * std::max(0.0, m);
}

double RemovalCost::operator()(std::span<const int64_t> removed) const {
  const int r = static_cast<int>(removed.size());
  if (r == 0) return 0;
  std::vector<double> q(size_t(r) * r);
  for (int a = 0; a < r; ++a)
    for (int b = 0; b < r; ++b) q[size_t(a) * r + b] = m_[size_t(removed[a]) * n_ + size_t(removed[b])];
  if (mode_ == Recovery::Refit) q = inverse(std::move(q), r, 0, 0);  // (P_RR)⁻¹; P is positive definite
  double t = 0;
  for (int a = 0; a < r; ++a)
    for (int b = 0; b < r; ++b) t += a_[size_t(removed[a]) * n_ + size_t(removed[b])] * q[size_t(b) * r + a];
  return 0.5 * std::max(0.0, t);
}

}  // namespace squish::prune
