// The AVX2 quantizers and dequantizers agree with the scalar references (identical bytes and
// bit-identical floats), and the dot kernels with the exact dot, on random data shaped like
// weights (including outliers, zero groups and tiny values that exercise the searches' edges).
#include "core/base/error.hpp"
#include "core/quant/blocks.hpp"
#include "core/quant/qgemm.hpp"
#include "core/quant/row_panels.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/vec_dot.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace squish {
namespace {

const GGMLType kTypes[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0,
                           GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K,
                           GGMLType::IQ4_NL, GGMLType::IQ4_XS, GGMLType::IQ3_XXS, GGMLType::IQ3_S,
                           GGMLType::IQ2_XXS, GGMLType::IQ2_XS, GGMLType::IQ2_S,
                           GGMLType::IQ1_S,   GGMLType::IQ1_M};

// n values: mostly gaussian, some heavy outliers, an all-zero 256-block, a constant block, a block
// of tiny values and a block of positives only.
std::vector<float> weights_like(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 0.02f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = u(rng) < 0.01f ? g(rng) * 20.f : g(rng);
  if (n >= 4 * 256) {
    std::fill(x.begin(), x.begin() + 256, 0.f);
    std::fill(x.begin() + 256, x.begin() + 512, 0.0125f);
    for (int i = 512; i < 768; ++i) x[i] = g(rng) * 1e-6f;
    for (int i = 768; i < 1024; ++i) x[i] = std::fabs(x[i]);
  }
  return x;
}

std::vector<float> importance(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::lognormal_distribution<float> d(0.f, 1.5f);
  std::vector<float> w(n);
  for (auto& v : w) v = d(rng);
  return w;
}

// An importance row for the types that need one (IQ2_XXS, IQ2_XS, IQ1_S); nullptr for the others.
const float* importance_if_needed(GGMLType t, int64_t n) {
  static std::vector<float> qw;
  if (!needs_importance(t)) return nullptr;
  qw = importance(n, 77);
  return qw.data();
}

class QuantSimd : public ::testing::TestWithParam<GGMLType> {
 protected:
  void SetUp() override {
    if (!quant_simd_enabled()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU (or SQUISH_NO_SIMD set)";
  }
};

// The SIMD levels this CPU runs above the scalar references, each with its row of the traits table.
std::vector<std::pair<const char*, const GGMLTypeTraits*>> simd_rows(GGMLType t) {
  std::vector<std::pair<const char*, const GGMLTypeTraits*>> v{{"AVX2", ggml_type_traits(t, SimdLevel::Avx2)}};
  if (simd_level() == SimdLevel::Avx512) v.emplace_back("AVX-512", ggml_type_traits(t, SimdLevel::Avx512));
  return v;
}
const GGMLTypeTraits& scalar_row(GGMLType t) { return *ggml_type_traits(t, SimdLevel::Scalar); }

TEST_P(QuantSimd, QuantizeBytesIdentical) {
  const GGMLType t = GetParam();
  const int64_t n = 4096, rows = 6;
  for (int weighted = 0; weighted < 2; ++weighted) {
    const auto x = weights_like(n * rows, 1234 + weighted);
    const auto qw = importance(n, 99);
    const float* imat = weighted ? qw.data() : nullptr;
    const size_t rs = ggml_row_size(t, n);
    if (!imat && needs_importance(t)) {  // refused, not garbage
      std::vector<uint8_t> q(rs);
      EXPECT_THROW(ref::quantize_row(t, x.data(), q.data(), n, nullptr), Error) << ggml_type_name(t);
      continue;
    }
    std::vector<uint8_t> a(rs * rows), b(rs * rows);
    for (int64_t r = 0; r < rows; ++r) ref::quantize_row(t, x.data() + r * n, a.data() + r * rs, n, imat);
    for (auto [level, simd] : simd_rows(t)) {
      simd->quantize_rows(simd->self, x.data(), b.data(), rows, n, imat);
      size_t first = a.size();
      for (size_t i = 0; i < a.size(); ++i)
        if (a[i] != b[i]) { first = i; break; }
      EXPECT_EQ(first, a.size()) << ggml_type_name(t) << (weighted ? " weighted" : "") << " " << level << ": first differing byte "
                                 << first << " (block " << first / ggml_type_traits(t)->type_size << ")";
    }
  }
}

TEST_P(QuantSimd, DequantizeIdentical) {
  const GGMLType t = GetParam();
  const int64_t n = 8192;
  const auto x = weights_like(n, 7);
  std::vector<uint8_t> q(ggml_row_size(t, n));
  ref::quantize_row(t, x.data(), q.data(), n, importance_if_needed(t, n));
  std::vector<float> a(n), b(n);
  ref::dequantize_row(t, q.data(), a.data(), n);
  for (auto [level, simd] : simd_rows(t)) {
    simd->dequantize_row(simd->self, q.data(), b.data(), n);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0) << ggml_type_name(t) << " " << level;
  }
}

// The dot kernels: the SIMD path and the scalar reference both equal the exact dot of the
// dequantized weights with the quantized activations (computed in double), up to float
// summation order: |error| <= 1e-5 * sum |w_i x_i| (n <= 4352: a few hundred block terms of
// relative error 2^-24 each). One wrong level, scale or group would be off by far more.
TEST_P(QuantSimd, VecDotAgreesWithDequantizedDot) {
  const GGMLType t = GetParam();
  const GGMLTypeTraits& scalar = scalar_row(t);
  // 4448 = 139 blocks of 32: a tail after the 8-block steps of the Q8_0 / Q4_0 kernels.
  for (int64_t n : {256, 1536, 4096 + 256, 4448}) {
    if (n % ggml_type_traits(t)->block_size) continue;
    const auto w = weights_like(n, 11);
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> x(n);
    for (auto& v : x) v = g(rng);
    std::vector<uint8_t> wq(ggml_row_size(t, n)), xa(activation_row_size(t, n)), xb(activation_row_size(t, n));
    ref::quantize_row(t, w.data(), wq.data(), n, importance_if_needed(t, n));
    ref::quantize_activations(t, x.data(), xa.data(), n);
    // The exact dot of what the kernels see.
    std::vector<float> wd(n), xd(n);
    ref::dequantize_row(t, wq.data(), wd.data(), n);
    ref::dequantize_row(vec_dot_type(t), xa.data(), xd.data(), n);  // F32: a copy; Q8_0, Q8_K: d * q
    double exact = 0, abs_sum = 0;
    for (int64_t i = 0; i < n; ++i) exact += double(wd[i]) * xd[i], abs_sum += std::fabs(double(wd[i]) * xd[i]);
    const double tol = 1e-5 * abs_sum;
    EXPECT_NEAR(scalar.vec_dot(scalar.self, n, wq.data(), xa.data()), exact, tol) << ggml_type_name(t) << " n=" << n << ": scalar reference";
    for (auto [level, simd] : simd_rows(t)) {
      simd->prepare_activation(simd->self, x.data(), xb.data(), n);
      EXPECT_EQ(xa, xb) << ggml_type_name(t) << " " << level << ": activation bytes differ";
      EXPECT_NEAR(simd->vec_dot(simd->self, n, wq.data(), xa.data()), exact, tol) << ggml_type_name(t) << " n=" << n << ": " << level;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, QuantSimd, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

}  // namespace
}  // namespace squish

namespace squish {
namespace {

// The integer GEMM (prefill) computes, for every token and row, the sum vec_dot computes for
// that pair: the same integers, scaled in another order. 37 tokens (a partial tile of 32) by 10
// rows (a partial tile of 4), accumulating into existing values too.
TEST_P(QuantSimd, IntegerGemmMatchesVecDot) {
  const GGMLType t = GetParam();
  if (!quant::qgemm_supported(t)) GTEST_SKIP() << ggml_type_name(t) << ": no integer GEMM (type or CPU)";
  const int64_t K = 512, rows = 10;
  const int T = 37;
  const auto w = weights_like(K * rows, 21);
  std::mt19937 rng(8);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(size_t(T) * K);
  for (auto& v : x) v = g(rng);
  const size_t rs = ggml_row_size(t, K);
  std::vector<uint8_t> wq(rs * rows);
  quantize_rows(t, w.data(), wq.data(), rows, K);
  quant::QActivations qa;
  qa.prepare(t, x.data(), T, K);
  std::vector<float> y(size_t(T) * rows, 1.5f);
  quant::qgemm(t, wq.data(), static_cast<int64_t>(rs), 0, 4, qa, y.data(), rows, true);
  quant::qgemm(t, wq.data(), static_cast<int64_t>(rs), 4, rows, qa, y.data(), rows, true);
  std::vector<uint8_t> xq(activation_row_size(t, K));
  std::vector<float> wd(K);
  for (int tok = 0; tok < T; ++tok) {
    quantize_activations(t, x.data() + size_t(tok) * K, xq.data(), K);
    for (int64_t r = 0; r < rows; ++r) {
      const float want = 1.5f + ref::vec_dot(t, K, wq.data() + r * rs, xq.data());
      dequantize_row(t, wq.data() + r * rs, wd.data(), K);
      double abs_sum = 0;
      for (int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(wd[k]) * x[size_t(tok) * K + k]);
      EXPECT_NEAR(y[size_t(tok) * rows + r], want, 1e-5 * abs_sum + 1e-5) << ggml_type_name(t) << " token " << tok << " row " << r;
    }
  }
}

// Decode's 16-row panels (Q8_0): the scalar reference equals ref::vec_dot row by row (same block
// order and arithmetic); the dispatched kernel agrees within float summation order.
TEST(RowPanels, PanelMatvecMatchesVecDot) {
  const GGMLType t = GGMLType::Q8_0;
  const int64_t K = 1024, rows = quant::kPanelRows;
  const auto w = weights_like(K * rows, 33);
  std::mt19937 rng(9);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(K);
  for (auto& v : x) v = g(rng);
  x[5] = 40.f;  // an outlier: the activation block reaches the int8 extremes
  const size_t rs = ggml_row_size(t, K);
  std::vector<uint8_t> wq(rs * rows);
  quantize_rows(t, w.data(), wq.data(), rows, K);
  std::vector<uint8_t> panel(quant::panel_bytes(t, K));
  EXPECT_EQ(panel.size(), wq.size());  // the same bytes, rearranged
  quant::pack_panel(t, K, wq.data(), rs, panel.data());
  std::vector<uint8_t> xq(activation_row_size(t, K));
  quantize_activations(t, x.data(), xq.data(), K);
  float ref_out[quant::kPanelRows], out[quant::kPanelRows];
  quant::ref::panel_matvec(t, K, panel.data(), xq.data(), ref_out);
  quant::panel_matvec(t, K, panel.data(), xq.data(), out);
  std::vector<float> wd(K);
  for (int64_t r = 0; r < rows; ++r) {
    const float want = ref::vec_dot(t, K, wq.data() + r * rs, xq.data());
    EXPECT_EQ(ref_out[r], want) << "row " << r;
    dequantize_row(t, wq.data() + r * rs, wd.data(), K);
    double abs_sum = 0;
    for (int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(wd[k]) * x[k]);
    EXPECT_NEAR(out[r], want, 1e-5 * abs_sum + 1e-5) << "row " << r;
  }
}

}  // namespace
}  // namespace squish
