// Error-compensating quantization into ggml blocks:
//  - the level view of a block (core/quant/levels.hpp) is exact: the dequantizer's value of every
//    weight is its grid value, and writing the levels back gives the same bytes;
//  - GPTQ's blocks decode the same with the scalar and the AVX2 dequantizers, are deterministic,
//    and have a lower output error tr((W - Q) H (W - Q)ᵀ) than ggml's importance-weighted
//    rounding of the same types, on a layer whose inputs are correlated.
#include "core/quant/gptq.hpp"
#include "core/quant/levels.hpp"
#include "core/quant/quantize.hpp"

#include <gtest/gtest.h>

#include <cblas.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace squish {
namespace {

const GGMLType kTypes[] = {GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q2_K, GGMLType::Q3_K,
                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};

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

std::string type_name(const ::testing::TestParamInfo<GGMLType>& i) { return ggml_type_name(i.param); }
INSTANTIATE_TEST_SUITE_P(Types, Levels, ::testing::ValuesIn(kTypes), type_name);
INSTANTIATE_TEST_SUITE_P(Types, Gptq, ::testing::ValuesIn(kTypes), type_name);

}  // namespace
}  // namespace squish
