#include "core/quant/gptq.hpp"

#include "core/quant/blocks.hpp"
#include "core/quant/levels.hpp"
#include "core/quant/quantize.hpp"
#include "core/base/error.hpp"
#include "core/base/memory.hpp"
#include "core/linalg/spd.hpp"

#include <cblas.h>
#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace squish::quant {

bool gptq_supported(GGMLType type) { return has_levels(type); }

namespace {

// U, upper triangular with H⁻¹ = Uᵀ U, for H damped by `damp` x mean(diag); row-major floats.
// A matrix that is not positive definite even so gets 10x the damping, up to 4 times. A dead
// input (H_ii <= 0) gets no coupling and unit curvature (the mean diagonal).
constexpr int kDampAttempts = 5;
constexpr const char* kWhat = "GPTQ: the input statistics are";

struct Damping {
  double mean_diag = 1;
  std::vector<bool> dead;
};
Damping damping_of(const float* H, int n) {
  Damping d;
  d.dead.resize(size_t(n));
  double s = 0;
  for (int i = 0; i < n; ++i) s += H[size_t(i) * n + i], d.dead[size_t(i)] = H[size_t(i) * n + i] <= 0;
  s = n ? s / n : 0;
  d.mean_diag = s > 0 ? s : 1;  // no signal at all: the ridge sets the scale
  return d;
}

// U through one Cholesky and one triangular inverse (2/3 n³ flops, blocked and parallel) instead
// of a Cholesky, an inverse and a second Cholesky: with J the reversal of the index order,
// J H J = L Lᵀ gives H = (J L J)(J L J)ᵀ, J L J upper, so U = J L⁻¹ J. Leaves X = L⁻¹ of the
// damped J H J in `a` (n x n, column-major, lower triangle), in T = float (the fast form, kept
// when its residual is small) or double (when float is not accurate enough). False when the
// damped J H J is not positive definite in T.
template <typename T>
bool reversed_inverse_factor(const float* H, int n, double ridge, const Damping& dm, T* a) {
  const auto rev = [n](int i) { return n - 1 - i; };
  tbb::parallel_for(0, n, [&](int c) {  // lower triangle of J H J, column-major: column c, rows c..n-1
    const int hc = rev(c);
    T* col = a + size_t(c) * n;
    if (dm.dead[size_t(hc)]) {  // a dead input: no coupling, unit curvature (the mean diagonal)
      std::fill(col + c, col + n, T(0));
    } else {
      const float* hrow = H + size_t(hc) * n;  // H symmetric: row hc is column hc
      for (int r = c; r < n; ++r) col[r] = dm.dead[size_t(rev(r))] ? T(0) : T(hrow[rev(r)]);
    }
    col[c] = T(dm.dead[size_t(hc)] ? dm.mean_diag : double(H[size_t(hc) * n + hc])) + T(ridge);
  });
  if (!linalg::cholesky_lower(a, n)) return false;
  linalg::invert_lower(a, n);
  return true;
}

// U(i, j) = X(n-1-i, n-1-j) in place: a swap of position i n + j with (n-1-j) n + (n-1-i) (an
// involution), in tiles for the cache; below the diagonal, zeros.
void reverse_in_place(std::vector<float>& u, int n) {
  const auto rev = [n](int i) { return n - 1 - i; };
  constexpr int T = 64;
  tbb::parallel_for(0, (n + T - 1) / T, [&](int bi) {
    for (int bj = 0; bj < (n + T - 1) / T; ++bj)
      for (int i = bi * T; i < std::min(n, bi * T + T); ++i)
        for (int j = bj * T; j < std::min(n, bj * T + T); ++j) {
          const size_t k = size_t(i) * n + j, s = size_t(rev(j)) * n + rev(i);
          if (k < s) std::swap(u[k], u[s]);
        }
  });
  tbb::parallel_for(1, n, [&](int i) { std::fill_n(u.data() + size_t(i) * n, i, 0.0f); });
}

// The float form, in place in u. False when the damped J H J is not positive definite in float.
bool inverse_cholesky_upper_float(const float* H, int n, double damp, const Damping& dm, std::vector<float>& u) {
  u = large_zeroed<float>(size_t(n) * n);
  if (!reversed_inverse_factor(H, n, damp * dm.mean_diag, dm, u.data())) return false;
  reverse_in_place(u, n);
  return true;
}

// The double form, for where float is not accurate enough (H ill-conditioned): twice the memory
// and about twice the time of the float form. A matrix that is not positive definite even in
// double gets 10x the damping, up to kDampAttempts times in all. `u` is reused when it has the size.
void inverse_cholesky_upper_double(const float* H, int n, double damp, const Damping& dm, std::vector<float>& u, double* ridge_used) {
  std::vector<double> x = large_zeroed<double>(size_t(n) * n);
  double ridge = damp * dm.mean_diag;
  for (int attempt = 0;; ++attempt, ridge *= 10) {
    if (reversed_inverse_factor(H, n, ridge, dm, x.data())) break;
    if (attempt + 1 == kDampAttempts) fail(ExitCode::InputData, "{} not positive definite even with damping", kWhat);
  }
  *ridge_used = ridge;
  if (u.size() != size_t(n) * n) u = large_zeroed<float>(size_t(n) * n);
  tbb::parallel_for(0, n, [&](int c) {  // X in float, in the float form's layout; then as there
    for (size_t k = size_t(c) * n; k < size_t(c + 1) * n; ++k) u[k] = static_cast<float>(x[k]);
  });
  reverse_in_place(u, n);
}

// || Uᵀ U H_d v - v || / || v || for two fixed ±1 probes v (H_d: H as damped): how far the float
// factor is from the inverse it stands for, as GPTQ applies it.
double factor_residual(const float* H, int n, const std::vector<float>& u, double damp, const Damping& dm) {
  double worst = 0;
  std::vector<float> v(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int probe = 0; probe < 2; ++probe) {
    for (int i = 0; i < n; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      v[size_t(i)] = dm.dead[size_t(i)] ? 0.0f : ((state >> 63) ? 1.0f : -1.0f);
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, n, 1.0f, H, n, v.data(), 1, 0.0f, y.data(), 1);
    for (int i = 0; i < n; ++i) {
      if (dm.dead[size_t(i)]) v[size_t(i)] = 1.0f, y[size_t(i)] = static_cast<float>(dm.mean_diag);
      y[size_t(i)] += static_cast<float>(damp * dm.mean_diag) * v[size_t(i)];
    }
    cblas_strmv(CblasRowMajor, CblasUpper, CblasNoTrans, CblasNonUnit, n, u.data(), n, y.data(), 1);
    cblas_strmv(CblasRowMajor, CblasUpper, CblasTrans, CblasNonUnit, n, u.data(), n, y.data(), 1);
    double e = 0, s = 0;
    for (int i = 0; i < n; ++i) e += (double(y[size_t(i)]) - v[size_t(i)]) * (double(y[size_t(i)]) - v[size_t(i)]), s += double(v[size_t(i)]) * v[size_t(i)];
    worst = std::max(worst, s > 0 ? std::sqrt(e / s) : 0.0);
  }
  return worst;
}

// The float form when its residual is within kFloatFactorTolerance, else the double form.
std::vector<float> inverse_cholesky_upper(const float* H, int n, const GptqOptions& opt, GptqFactor& f) {
  const Damping dm = damping_of(H, n);
  f.mean_diag = dm.mean_diag;
  std::vector<float> u;
  if (!opt.double_factor) {
    if (inverse_cholesky_upper_float(H, n, opt.damp, dm, u)) {
      f.float_residual = factor_residual(H, n, u, opt.damp, dm);
      f.ridge = opt.damp * dm.mean_diag;
      if (f.float_residual <= kFloatFactorTolerance) return u;
    }
  }
  f.in_double = true;
  inverse_cholesky_upper_double(H, n, opt.damp, dm, u, &f.ridge);
  return u;
}

}  // namespace

GptqFactor gptq_factor(const float* H, int64_t cols, const GptqOptions& opt) {
  if (!(opt.damp >= 0)) fail(ExitCode::Usage, "GPTQ: damp must be >= 0");
  const int n = static_cast<int>(cols);
  GptqFactor f;
  f.n = n;
  f.act_order = opt.act_order;
  f.damp = opt.damp;
  f.diag.resize(size_t(n));
  for (int i = 0; i < n; ++i) f.diag[size_t(i)] = std::max(0.0f, H[size_t(i) * n + i]);
  if (!opt.act_order) {
    f.U = inverse_cholesky_upper(H, n, opt, f);
    return f;
  }
  f.perm.resize(size_t(n));
  for (int i = 0; i < n; ++i) f.perm[size_t(i)] = i;
  std::stable_sort(f.perm.begin(), f.perm.end(), [&](int a, int b) { return H[size_t(a) * n + a] > H[size_t(b) * n + b]; });
  std::vector<float> hp(size_t(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) hp[size_t(i) * n + j] = H[size_t(f.perm[i]) * n + f.perm[j]];
  f.U = inverse_cholesky_upper(hp.data(), n, opt, f);
  return f;
}

std::vector<std::byte> gptq_quantize(GGMLType type, const float* W, int64_t rows, int64_t cols, const float* H,
                                     const float* imatrix, const GptqOptions& opt) {
  return gptq_quantize(type, W, rows, cols, gptq_factor(H, cols, opt), imatrix, opt);
}

std::vector<std::byte> gptq_quantize(GGMLType type, const float* W, int64_t rows, int64_t cols, const GptqFactor& f,
                                     const float* imatrix, const GptqOptions& opt, std::vector<double>* row_error) {
  if (!gptq_supported(type)) fail(ExitCode::Usage, "GPTQ: {} is not supported (Q8_0, Q4_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS are)", ggml_type_name(type));
  const auto* tr = ggml_type_traits(type);
  const int bs = tr->block_size;
  if (cols % bs != 0) fail(ExitCode::Runtime, "GPTQ: {} columns are not a multiple of {}'s block of {}", cols, ggml_type_name(type), bs);
  if (opt.batch < 1) fail(ExitCode::Usage, "GPTQ: batch must be >= 1");
  if (f.n != cols || f.act_order != opt.act_order) fail(ExitCode::Runtime, "GPTQ: the factor is for another input or options");
  const int n = static_cast<int>(cols);
  std::vector<float> qw(static_cast<size_t>(cols));  // the scale search's weights
  for (int64_t i = 0; i < cols; ++i) qw[i] = imatrix ? imatrix[i] : f.diag[size_t(i)];

  const size_t row_bytes = ggml_row_size(type, cols);
  const size_t block_bytes = tr->type_size;
  const int B = opt.batch;
  const std::vector<float>& U = f.U;
  const bool static_blocks = f.act_order;
  auto col = [&](int i) { return static_blocks ? f.perm[size_t(i)] : i; };  // processing position -> column
  std::vector<std::byte> out = large_zeroed<std::byte>(row_bytes * static_cast<size_t>(rows));
  if (row_error) row_error->assign(size_t(rows), 0.0);
  constexpr int64_t kRowsPerTask = 128;
  // Each thread's working rows, allocated once per call (fresh pages cost a fault each).
  struct Scratch {
    std::vector<float> w, step, mn, err;  // weights in processing order (updated), each weight's grid, a batch's errors
    std::vector<uint8_t> lv;              // each weight's level, at its own column
  };
  tbb::enumerable_thread_specific<Scratch> scratch([&] {
    const size_t cap = size_t(std::min(kRowsPerTask, rows)) * size_t(n);
    return Scratch{large_zeroed<float>(cap), large_zeroed<float>(cap), large_zeroed<float>(cap),
                   std::vector<float>(size_t(std::min(kRowsPerTask, rows)) * size_t(B)), large_zeroed<uint8_t>(cap)};
  });
  oneapi::tbb::parallel_for(int64_t(0), (rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
    const int64_t r0 = task * kRowsPerTask, nr = std::min(kRowsPerTask, rows - r0);
    std::byte* rows_out = out.data() + size_t(r0) * row_bytes;
    Scratch& s = scratch.local();
    std::vector<float>&step = s.step, &mn = s.mn, &w = s.w, &err = s.err;
    std::vector<uint8_t>& lv = s.lv;
    Grid g;
    auto take_block = [&](int64_t r, int b) {  // the block's scales as its bytes now hold them
      tr->read_levels(rows_out + size_t(r) * row_bytes + size_t(b) * block_bytes, g, lv.data() + size_t(r) * n + size_t(b) * bs);
      for (int e = 0; e < bs; ++e) step[size_t(r) * n + b * bs + e] = g.step[e], mn[size_t(r) * n + b * bs + e] = g.min[e];
    };
    if (static_blocks) {  // act-order: all scales first, from the original weights
      quantize_rows(type, W + r0 * cols, rows_out, nr, cols, qw.data());
      for (int64_t r = 0; r < nr; ++r)
        for (int b = 0; b < n / bs; ++b) take_block(r, b);
    }
    for (int64_t r = 0; r < nr; ++r)
      for (int i = 0; i < n; ++i) w[size_t(r) * n + i] = W[(r0 + r) * cols + col(i)];
    for (int b0 = 0; b0 < n; b0 += B) {
      const int b1 = std::min(n, b0 + B);
      for (int i = b0; i < b1; ++i) {
        if (!static_blocks && i % bs == 0)  // a new block: ggml's scale search on the weights as they are now
          for (int64_t r = 0; r < nr; ++r) {
            quantize_rows(type, w.data() + size_t(r) * n + i, rows_out + size_t(r) * row_bytes + size_t(i / bs) * block_bytes, 1, bs,
                          qw.data() + i);
            take_block(r, i / bs);
          }
        const float d = U[size_t(i) * n + i];
        const float* urow = U.data() + size_t(i) * n;
        for (int64_t r = 0; r < nr; ++r) {
          float* wr = w.data() + size_t(r) * n;
          const size_t at = size_t(r) * n + col(i);
          int l = g.zero;
          float q;
          if (g.table) {  // non-uniform levels (IQ4): the nearest of them
            for (int k = 1; k <= g.level_max; ++k)
              if (std::fabs(wr[i] - step[at] * float(g.table[k])) < std::fabs(wr[i] - step[at] * float(g.table[l]))) l = k;
            q = step[at] * static_cast<float>(g.table[l]);
          } else {
            if (step[at] != 0.0f) l = std::clamp(nearest_int((wr[i] + mn[at]) / step[at]) + g.zero, 0, g.level_max);
            q = step[at] * static_cast<float>(l - g.zero) - mn[at];
          }
          lv[at] = static_cast<uint8_t>(l);
          const float ei = (wr[i] - q) / d;
          err[size_t(r) * B + (i - b0)] = ei;
          if (row_error) (*row_error)[size_t(r0 + r)] += double(ei) * ei;
          for (int j = i + 1; j < b1; ++j) wr[j] -= ei * urow[j];
        }
      }
      if (b1 < n)  // lazy batch: the columns after it take the whole batch's errors at once
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nr), n - b1, b1 - b0, -1.0f, err.data(), B,
                    U.data() + size_t(b0) * n + b1, n, 1.0f, w.data() + b1, n);
    }
    for (int64_t r = 0; r < nr; ++r)
      for (int b = 0; b < n / bs; ++b) tr->write_levels(rows_out + size_t(r) * row_bytes + size_t(b) * block_bytes, lv.data() + size_t(r) * n + size_t(b) * bs);
    if (!row_error) return;
    // Σ e² is the error on H_d = H + ridge·I (dead inputs: mean_diag + ridge where H has 0):
    // take the damping's share, Σ_j (ridge + [dead j]·mean_diag) (w_j − q_j)², back out.
    std::vector<float> q(static_cast<size_t>(n));
    for (int64_t r = 0; r < nr; ++r) {
      dequantize_row(type, rows_out + size_t(r) * row_bytes, q.data(), cols);
      double damped_share = 0;
      for (int j = 0; j < n; ++j) {
        const double d = double(W[(r0 + r) * cols + j]) - q[size_t(j)];
        damped_share += (f.ridge + (f.diag[size_t(j)] > 0 ? 0.0 : f.mean_diag)) * d * d;
      }
      (*row_error)[size_t(r0 + r)] -= damped_share;
    }
  });
  return out;
}

double output_error(GGMLType type, const float* W, const std::byte* q, int64_t rows, int64_t cols, const float* H) {
  const size_t row_bytes = ggml_row_size(type, cols);
  std::vector<float> d(static_cast<size_t>(cols)), hd(static_cast<size_t>(cols));
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(type, q + size_t(r) * row_bytes, d.data(), cols);
    for (int64_t c = 0; c < cols; ++c) d[c] = W[r * cols + c] - d[c];
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(cols), static_cast<int>(cols), 1.0f, H, static_cast<int>(cols), d.data(), 1, 0.0f,
                hd.data(), 1);
    for (int64_t c = 0; c < cols; ++c) total += double(d[c]) * hd[c];
  }
  return rows ? total / double(rows) : 0.0;
}

}  // namespace squish::quant
