// Error-compensating quantization into ggml blocks:
//  - the level view of a block (core/quant/levels.hpp) is exact: the dequantizer's value of every
//    weight is its grid value, and writing the levels back gives the same bytes;
//  - GPTQ's blocks decode the same with the scalar and the AVX2 dequantizers, are deterministic,
//    and have a lower output error tr((W - Q) H (W - Q)ᵀ) than ggml's importance-weighted
//    rounding of the same types, on a layer whose inputs are correlated;
//  - the factor of H⁻¹ (blocked, parallel Cholesky and triangular inverse, in float and double)
//    is within the backward-error bounds of those algorithms, and GPTQ takes the float one only
//    when it is as accurate as kFloatFactorTolerance says (else the double one, which is).
#include "core/linalg/spd.hpp"
#include "core/quant/gptq.hpp"
#include "core/quant/levels.hpp"
#include "core/quant/quantize.hpp"

#include <gtest/gtest.h>

#include <cblas.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace squish {
namespace {

const GGMLType kTypes[] = {GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q2_K, GGMLType::Q3_K,
                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::IQ4_NL, GGMLType::IQ4_XS};

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  return x;
}

class Levels : public ::testing::TestWithParam<GGMLType> {};

TEST_P(Levels, GridIsTheDequantizerAndRoundTripsTheBytes) {
  const GGMLType t = GetParam();
  const int64_t n = 4096;
  std::vector<float> x = gaussian(n, 7, 0.02f);
  for (int i = 0; i < 256; ++i) x[i] = 0;  // an all-zero block: zero scales
  for (int i = 256; i < 512; ++i) x[i] = std::fabs(x[i]);
  std::vector<float> imp = gaussian(n, 8, 1.f);
  for (auto& v : imp) v = v * v;
  const auto* tr = ggml_type_traits(t);
  for (const float* qw : {static_cast<const float*>(nullptr), static_cast<const float*>(imp.data())}) {
    std::vector<std::byte> q(ggml_row_size(t, n));
    quantize_rows(t, x.data(), q.data(), 1, n, qw);
    std::vector<float> deq(n);
    ref::dequantize_row(t, q.data(), deq.data(), n);
    for (int64_t b = 0; b < n / tr->block_size; ++b) {
      std::byte* blk = q.data() + b * tr->type_size;
      quant::Grid g;
      uint8_t lv[256];
      quant::read_levels(t, blk, g, lv);
      for (int e = 0; e < tr->block_size; ++e) {
        ASSERT_LE(lv[e], g.level_max);
        ASSERT_EQ(g.value(e, lv[e]), deq[b * tr->block_size + e]) << "block " << b << " weight " << e;
        ASSERT_EQ(g.nearest(e, deq[b * tr->block_size + e]), g.step[e] == 0 ? g.zero : lv[e]);
      }
      std::vector<std::byte> copy(blk, blk + tr->type_size);
      quant::write_levels(t, copy.data(), lv);
      ASSERT_EQ(std::memcmp(copy.data(), blk, tr->type_size), 0) << "block " << b;
    }
  }
}

// A layer y = W x with inputs that share factors (as activations do): x = A z, H = E[x xᵀ].
struct Layer {
  int64_t rows = 64, cols = 1024;
  std::vector<float> W, H;
};

Layer correlated_layer(uint32_t seed) {
  Layer L;
  const int64_t n = 4096, k = 48;  // samples, shared factors
  const auto z = gaussian(size_t(n * k), seed, 1.f);
  const auto a = gaussian(size_t(k * L.cols), seed + 1, 1.f);
  auto x = gaussian(size_t(n * L.cols), seed + 2, 0.3f);  // each column's own noise
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(L.cols), int(k), 1.f, z.data(), int(k), a.data(), int(L.cols), 1.f,
              x.data(), int(L.cols));
  std::mt19937 rng(seed + 3);
  std::lognormal_distribution<float> scale(0.f, 1.f);  // outlier channels
  for (int64_t c = 0; c < L.cols; ++c) {
    const float s = scale(rng);
    for (int64_t i = 0; i < n; ++i) x[i * L.cols + c] *= s;
  }
  L.H.assign(size_t(L.cols * L.cols), 0.f);
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(L.cols), int(n), 1.f / float(n), x.data(), int(L.cols), 0.f, L.H.data(), int(L.cols));
  for (int64_t i = 0; i < L.cols; ++i)
    for (int64_t j = 0; j < i; ++j) L.H[i * L.cols + j] = L.H[j * L.cols + i];
  L.W = gaussian(size_t(L.rows * L.cols), seed + 4, 0.02f);
  return L;
}

class Gptq : public ::testing::TestWithParam<GGMLType> {};

TEST_P(Gptq, LowerOutputErrorThanRoundingValidAndDeterministic) {
  const GGMLType t = GetParam();
  const Layer L = correlated_layer(11);
  std::vector<float> diag(size_t(L.cols));
  for (int64_t i = 0; i < L.cols; ++i) diag[i] = L.H[i * L.cols + i];
  std::vector<std::byte> rtn(ggml_row_size(t, L.cols) * L.rows);
  quantize_rows(t, L.W.data(), rtn.data(), L.rows, L.cols, diag.data());
  const auto g = quant::gptq_quantize(t, L.W.data(), L.rows, L.cols, L.H.data(), nullptr);
  ASSERT_EQ(g.size(), rtn.size());
  const double e_rtn = quant::output_error(t, L.W.data(), rtn.data(), L.rows, L.cols, L.H.data());
  const double e_gptq = quant::output_error(t, L.W.data(), g.data(), L.rows, L.cols, L.H.data());
  std::printf("%s: output error rounding %.4g, GPTQ %.4g (%.1f%%)\n", ggml_type_name(t), e_rtn, e_gptq, 100.0 * e_gptq / e_rtn);
  EXPECT_LT(e_gptq, 0.9 * e_rtn);

  // Valid blocks: both dequantizers agree, every value finite.
  std::vector<float> a(size_t(L.cols)), b(size_t(L.cols));
  const size_t rb = ggml_row_size(t, L.cols);
  for (int64_t r = 0; r < L.rows; ++r) {
    ref::dequantize_row(t, g.data() + r * rb, a.data(), L.cols);
    dequantize_row(t, g.data() + r * rb, b.data(), L.cols);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "row " << r;
    for (float v : a) ASSERT_TRUE(std::isfinite(v));
  }
  EXPECT_EQ(quant::gptq_quantize(t, L.W.data(), L.rows, L.cols, L.H.data(), nullptr), g);

  // GPTQ's own account of its error (the OBS identity, damping taken out) is the explicit
  // tr((W - Q) H (W - Q)ᵀ), to the accuracy of the factor: exact for an exact U, so off by the
  // factor's relative error (at most kFloatFactorTolerance, what the float factor is accepted
  // at) times the damped error it is a share of, plus the float updates' rounding, relative
  // u·|W|/|W - Q| (~5e-6 at Q8_0, well inside).
  for (bool in_double : {false, true}) {
    quant::GptqOptions o;
    o.double_factor = in_double;
    const auto f = quant::gptq_factor(L.H.data(), L.cols, o);
    std::vector<double> rows;
    const auto q = quant::gptq_quantize(t, L.W.data(), L.rows, L.cols, f, nullptr, o, &rows);
    double own = 0, damped = 0;
    for (double r : rows) own += r;
    own /= double(L.rows);
    const double explicit_error = quant::output_error(t, L.W.data(), q.data(), L.rows, L.cols, L.H.data());
    std::vector<float> d(size_t(L.cols));
    for (int64_t r = 0; r < L.rows; ++r) {
      dequantize_row(t, q.data() + r * ggml_row_size(t, L.cols), d.data(), L.cols);
      for (int64_t j = 0; j < L.cols; ++j) damped += f.ridge * (L.W[r * L.cols + j] - d[j]) * (L.W[r * L.cols + j] - d[j]);
    }
    damped = damped / double(L.rows) + explicit_error;
    const double tol = quant::kFloatFactorTolerance * damped;
    std::printf("%s %s factor: own error %.6g, explicit %.6g (diff %.2g of the damped error)\n", ggml_type_name(t), in_double ? "double" : "float",
                own, explicit_error, std::fabs(own - explicit_error) / damped);
    EXPECT_NEAR(own, explicit_error, tol);
  }

  // Act-order (static blocks, columns by decreasing H_ii): also well below rounding, and the
  // blocks keep the original column order (decoded errors are measured against W as is).
  quant::GptqOptions ao;
  ao.act_order = true;
  const auto act = quant::gptq_quantize(t, L.W.data(), L.rows, L.cols, L.H.data(), nullptr, ao);
  const double e_act = quant::output_error(t, L.W.data(), act.data(), L.rows, L.cols, L.H.data());
  std::printf("%s: act-order %.4g (%.1f%%)\n", ggml_type_name(t), e_act, 100.0 * e_act / e_rtn);
  EXPECT_LT(e_act, 0.9 * e_rtn);
}

// Inputs that never fire (H_ii = 0) and a singular H still quantize, without NaNs.
TEST(GptqEdges, DeadInputsAndSingularStatistics) {
  Layer L = correlated_layer(5);
  for (int64_t j = 0; j < L.cols; ++j) L.H[3 * L.cols + j] = L.H[j * L.cols + 3] = 0;  // dead input 3
  for (int64_t j = 0; j < L.cols; ++j) L.H[9 * L.cols + j] = L.H[8 * L.cols + j];       // 9 duplicates 8
  for (int64_t j = 0; j < L.cols; ++j) L.H[j * L.cols + 9] = L.H[j * L.cols + 8];
  const auto g = quant::gptq_quantize(GGMLType::Q4_K, L.W.data(), L.rows, L.cols, L.H.data(), nullptr);
  std::vector<float> d(size_t(L.cols * L.rows));
  dequantize_row(GGMLType::Q4_K, g.data(), d.data(), L.cols * L.rows);
  for (float v : d) ASSERT_TRUE(std::isfinite(v));
  EXPECT_THROW(quant::gptq_quantize(GGMLType::F16, L.W.data(), L.rows, L.cols, L.H.data(), nullptr), std::exception);
}

// ‖Uᵀ U H_d − I‖_F / √n in double, H_d = H + damp·mean(diag)·I: the factor's error as GPTQ
// applies it (RMS over unit vectors).
double exact_residual(const std::vector<float>& U, const std::vector<float>& H, int64_t n, double damp) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += H[i * n + i];
  mean /= double(n);
  std::vector<double> u(U.begin(), U.end()), h(H.begin(), H.end()), uh(size_t(n * n)), r(size_t(n * n));
  for (int64_t i = 0; i < n; ++i) h[i * n + i] += damp * mean;
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0, u.data(), int(n), h.data(), int(n), 0.0, uh.data(), int(n));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(n), int(n), int(n), 1.0, u.data(), int(n), uh.data(), int(n), 0.0, r.data(), int(n));
  double e = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) e += (r[i * n + j] - (i == j)) * (r[i * n + j] - (i == j));
  return std::sqrt(e / double(n));
}

// The blocked Cholesky and triangular inverse (several tiles, a ragged last one) within the
// componentwise backward-error bounds (Higham, Accuracy and Stability, Thm 10.3 and §14.2, with
// γ_k = k u / (1 − k u), u the unit roundoff of T): |L Lᵀ − A| <= γ_{n+1} |L| |Lᵀ| for Cholesky
// in any summation order, and |X L − I| <= c_n u |X| |L| for the blocked inverse, taken here as
// γ_{3n}.
template <typename T>
void check_blocked_factor() {
  Layer L = correlated_layer(21);
  const int n = 700;  // 5 tiles of 128 and a ragged one, from the layer's 1024 inputs
  std::vector<T> a(size_t(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) a[size_t(i) * n + j] = T(L.H[size_t(i) * L.cols + j]) + (i == j ? T(0.05) : T(0));
  std::vector<T> f = a;
  ASSERT_TRUE(linalg::cholesky_lower(f.data(), n));
  auto l = [&](int r, int c) { return r >= c ? double(f[size_t(r) + size_t(c) * n]) : 0.0; };  // column-major
  const double u = std::numeric_limits<T>::epsilon() / 2;
  auto gamma = [u](double k) { return k * u / (1 - k * u); };
  double worst = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j <= i; ++j) {
      long double s = 0, abs = 0;  // the check itself well below T's rounding
      for (int k = 0; k <= j; ++k) s += (long double)l(i, k) * l(j, k), abs += std::fabs((long double)l(i, k) * l(j, k));
      const double bound = gamma(n + 1) * double(abs), e = std::fabs(double(s - (long double)a[size_t(i) * n + j]));
      ASSERT_LE(e, bound) << i << "," << j;
      worst = std::max(worst, e / bound);
    }
  std::printf("%s Cholesky: worst error %.3g of the bound\n", sizeof(T) == 4 ? "float" : "double", worst);
  std::vector<T> x = f;
  linalg::invert_lower(x.data(), n);
  auto xi = [&](int r, int c) { return r >= c ? double(x[size_t(r) + size_t(c) * n]) : 0.0; };
  worst = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j <= i; ++j) {
      long double s = 0, abs = 0;
      for (int k = j; k <= i; ++k) s += (long double)xi(i, k) * l(k, j), abs += std::fabs((long double)xi(i, k) * l(k, j));
      const double bound = gamma(3 * n) * double(abs), e = std::fabs(double(s - (i == j)));
      ASSERT_LE(e, bound) << i << "," << j;
      worst = std::max(worst, e / bound);
    }
  std::printf("%s inverse: worst error %.3g of the bound\n", sizeof(T) == 4 ? "float" : "double", worst);
  std::vector<T> indefinite = a;
  indefinite[size_t(n / 2) * n + n / 2] = T(-1);
  EXPECT_FALSE(linalg::cholesky_lower(indefinite.data(), n));
}
TEST(BlockedFactor, FloatWithinBackwardErrorBounds) { check_blocked_factor<float>(); }
TEST(BlockedFactor, DoubleWithinBackwardErrorBounds) { check_blocked_factor<double>(); }

// GPTQ's factor: the float form where it is accurate to kFloatFactorTolerance (checked exactly
// here, in double, not by the probes it uses), the double form where float is not enough, and
// that one accurate to it too.
TEST(FloatFactor, TakenOnlyWhenAccurate) {
  const Layer L = correlated_layer(23);
  const auto f = quant::gptq_factor(L.H.data(), L.cols);
  EXPECT_FALSE(f.in_double);
  const double r = exact_residual(f.U, L.H, L.cols, quant::kDefaultDamp);
  std::printf("float factor: probe residual %.3g, exact %.3g\n", f.float_residual, r);
  EXPECT_LE(r, quant::kFloatFactorTolerance);
  quant::GptqOptions ref;
  ref.double_factor = true;
  const auto d = quant::gptq_factor(L.H.data(), L.cols, ref);
  EXPECT_TRUE(d.in_double);
  EXPECT_LE(exact_residual(d.U, L.H, L.cols, quant::kDefaultDamp), r);

  // Nearly singular (rank 48 + tiny noise, damping 1e-9): float cannot hold H⁻¹ to 1e-3.
  Layer S = correlated_layer(25);
  quant::GptqOptions tiny;
  tiny.damp = 1e-9;
  std::vector<float> h(S.H.size());
  const int64_t n = S.cols;
  const auto z = gaussian(size_t(n * 48), 26, 1.f);
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, int(n), 48, 1.f, z.data(), 48, 0.f, h.data(), int(n));
  for (int64_t i = 0; i < n; ++i) {
    h[i * n + i] += 1e-6f;
    for (int64_t j = 0; j < i; ++j) h[i * n + j] = h[j * n + i];
  }
  const auto s = quant::gptq_factor(h.data(), n, tiny);
  std::printf("near-singular: float residual %.3g, in double %d, ridge %.3g x mean diagonal\n", s.float_residual, int(s.in_double),
              s.ridge / s.mean_diag);
  EXPECT_TRUE(s.in_double);
  for (float v : s.U) ASSERT_TRUE(std::isfinite(v));

  // Between the two: damped enough to be positive definite in float, too ill-conditioned for the
  // float factor (its error grows with n u κ), not for the double one, whose U is off by little
  // more than its rounding to float (u κ). κ here ≈ λmax / ridge ≈ (√n + √48)² / (damp · 48)
  // ≈ 32 / damp, 6e4 at 5e-4, chosen so that each side is ~4x from the tolerance (as measured:
  // float 4.1e-3, double 2.1e-4), slack for another CPU's BLAS kernels.
  quant::GptqOptions mid;
  mid.damp = 5e-4;
  const auto m = quant::gptq_factor(h.data(), n, mid);
  const double rm = exact_residual(m.U, h, n, m.ridge / m.mean_diag);
  std::printf("ill-conditioned: float residual %.3g, in double %d, exact residual then %.3g\n", m.float_residual, int(m.in_double), rm);
  EXPECT_GT(m.float_residual, quant::kFloatFactorTolerance);
  EXPECT_TRUE(m.in_double);
  EXPECT_DOUBLE_EQ(m.ridge, mid.damp * m.mean_diag);
  EXPECT_LE(rm, quant::kFloatFactorTolerance);
}

std::string type_name(const ::testing::TestParamInfo<GGMLType>& i) { return ggml_type_name(i.param); }
INSTANTIATE_TEST_SUITE_P(Types, Levels, ::testing::ValuesIn(kTypes), type_name);
INSTANTIATE_TEST_SUITE_P(Types, Gptq, ::testing::ValuesIn(kTypes), type_name);

}  // namespace
}  // namespace squish
