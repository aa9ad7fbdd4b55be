// Quantizer accuracy: round-trip error per type on random data, dequantization of llama.cpp's own
// bytes against the original weights, importance-weighted quantization beating the unweighted one
// on the weighted error, and the dot kernels against dequantize + float dot.
#include "core/gguf/gguf.hpp"
#include "core/io/safetensors.hpp"
#include "core/quant/quantize.hpp"
#include "core/base/error.hpp"
#include "core/quant/vec_dot.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

namespace squish {
namespace {

std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  return x;
}

// sqrt(mean (a-b)^2) / sqrt(mean a^2)
double rel_rmse(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(a[i]) * a[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<float> round_trip(GGMLType t, const std::vector<float>& x, int64_t n_per_row, const float* imatrix = nullptr) {
  const int64_t rows = static_cast<int64_t>(x.size()) / n_per_row;
  const size_t rs = ggml_row_size(t, n_per_row);
  std::vector<uint8_t> q(rs * rows);
  quantize_rows(t, x.data(), q.data(), rows, n_per_row, imatrix);
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, q.data() + r * rs, y.data() + r * n_per_row, n_per_row);
  return y;
}

// Relative RMSE bounds on N(0,1) data: about 1.3x what each type achieves (an error in the
// scales or packing shows up far above these).
const std::map<GGMLType, double> kMaxRelRmse = {
    {GGMLType::F32, 0.0},    {GGMLType::F16, 4e-4},   {GGMLType::BF16, 3e-3},  {GGMLType::Q8_0, 0.01},
    {GGMLType::Q6_K, 0.03},  {GGMLType::Q5_K, 0.05},  {GGMLType::Q4_K, 0.1},   {GGMLType::Q4_0, 0.13},
    {GGMLType::Q3_K, 0.22},  {GGMLType::Q2_K, 0.45},  {GGMLType::IQ4_NL, 0.1},  {GGMLType::IQ4_XS, 0.1},
    {GGMLType::IQ3_S, 0.22},  {GGMLType::IQ3_XXS, 0.28}, {GGMLType::IQ2_S, 0.35},  {GGMLType::IQ2_XS, 0.39},
    {GGMLType::IQ2_XXS, 0.45}, {GGMLType::IQ1_S, 0.63}, {GGMLType::IQ1_M, 0.76},
};

TEST(Quant, RoundTripErrorWithinTypeBounds) {
  const int64_t n = 4096, rows = 16;
  const auto x = gaussian(n * rows, 42);
  std::map<GGMLType, double> err;
  for (const auto& [t, bound] : kMaxRelRmse) {
    const std::vector<float> ones(n, 1.f);  // the types that need an importance matrix get a flat one
    const auto y = round_trip(t, x, n, needs_importance(t) ? ones.data() : nullptr);
    err[t] = rel_rmse(x.data(), y.data(), x.size());
    EXPECT_LE(err[t], bound) << ggml_type_name(t);
    if (t != GGMLType::F32) {
      EXPECT_GT(err[t], bound / 20) << ggml_type_name(t) << ": suspiciously exact";
    }
    std::printf("  %-5s rel. RMSE %.5f\n", ggml_type_name(t), err[t]);
  }
  EXPECT_EQ(err[GGMLType::F32], 0.0);
  // More bits, less error.
  EXPECT_LT(err[GGMLType::Q8_0], err[GGMLType::Q6_K]);
  EXPECT_LT(err[GGMLType::Q6_K], err[GGMLType::Q5_K]);
  EXPECT_LT(err[GGMLType::Q5_K], err[GGMLType::Q4_K]);
  EXPECT_LT(err[GGMLType::Q4_K], err[GGMLType::Q3_K]);
  EXPECT_LT(err[GGMLType::Q3_K], err[GGMLType::Q2_K]);
}

TEST(Quant, RejectsBadShapesAndTypes) {
  std::vector<float> x(300, 1.f);
  std::vector<uint8_t> q(1024);
  EXPECT_THROW(quantize_rows(GGMLType::Q4_K, x.data(), q.data(), 1, 300), Error);
  EXPECT_THROW(quantize_rows(GGMLType::Q5_0, x.data(), q.data(), 1, 256), Error);
  EXPECT_FALSE(quantize_supported(GGMLType::Q8_K));
}

// llama.cpp's bytes decode to the original weights within each type's error.
TEST(Quant, DequantizeReferenceGgufMatchesOriginalWeights) {
  SQUISH_REQUIRE_SHARED();
  const auto model = SafetensorsModel::open(test::shared("models/coder-28m"));
  std::map<GGMLType, int> seen;
  for (const char* file : {"reference/coder-28m-Q4_K_M.gguf", "reference/coder-28m-Q2_K.gguf",
                           "reference/coder-28m-Q3_K_S.gguf", "reference/coder-28m-Q5_K_M.gguf"}) {
    const auto reader = gguf::Reader::open(test::shared(file));
    for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.7.attn_v.weight",
                             "blk.5.ffn_up.weight"}) {
      const auto& t = reader.at(name);
      const std::string hf = std::string(name) == "token_embd.weight" ? "model.embed_tokens.weight"
                             : std::string(name) == "blk.0.attn_q.weight" ? "model.layers.0.self_attn.q_proj.weight"
                             : std::string(name) == "blk.3.ffn_down.weight" ? "model.layers.3.mlp.down_proj.weight"
                             : std::string(name) == "blk.7.attn_v.weight" ? "model.layers.7.self_attn.v_proj.weight"
                                                                           : "model.layers.5.mlp.up_proj.weight";
      const auto w = model.load(hf).to_f32();
      std::vector<float> y(w.size());
      const size_t rs = ggml_row_size(t.type, t.ne[0]);
      for (int64_t r = 0; r < t.n_rows(); ++r)
        dequantize_row(t.type, t.data.data() + r * rs, y.data() + r * t.ne[0], t.ne[0]);
      const double e = rel_rmse(w.data(), y.data(), w.size());
      EXPECT_LE(e, kMaxRelRmse.at(t.type)) << file << " " << name << " " << ggml_type_name(t.type);
      EXPECT_GT(e, 0.0);
      ++seen[t.type];
    }
  }
  for (GGMLType t : {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K})
    EXPECT_GT(seen[t], 0) << ggml_type_name(t) << " not covered";
}

// With an importance vector, the importance-weighted squared error is lower than what the
// unweighted (reference) quantizer achieves on the same rows.
TEST(Quant, ImatrixLowersWeightedError) {
  const int64_t n = 2048, rows = 32;
  const auto x = gaussian(n * rows, 3);
  std::mt19937 rng(8);
  std::lognormal_distribution<float> d(0.f, 2.f);
  std::vector<float> imatrix(n);
  for (auto& v : imatrix) v = d(rng);
  auto weighted_err = [&](const std::vector<float>& y) {
    double e = 0;
    for (int64_t i = 0; i < n * rows; ++i) e += imatrix[i % n] * double(x[i] - y[i]) * (x[i] - y[i]);
    return e;
  };
  for (GGMLType t : {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::Q4_0,
                     GGMLType::IQ4_NL, GGMLType::IQ4_XS, GGMLType::IQ3_XXS, GGMLType::IQ3_S, GGMLType::IQ2_S, GGMLType::IQ1_M}) {
    const double plain = weighted_err(round_trip(t, x, n));
    const double weighted = weighted_err(round_trip(t, x, n, imatrix.data()));
    EXPECT_LT(weighted, plain) << ggml_type_name(t);
    std::printf("  %-5s weighted error: plain %.4g, with imatrix %.4g (%.1f%% lower)\n", ggml_type_name(t), plain,
                weighted, 100 * (1 - weighted / plain));
  }
}

// A group the imatrix gives no weight (dead channels) cannot steer the fit: IQ1_S, IQ1_M and
// IQ2_XXS store it as zeros and keep it out of the super-block's scale (ggml aborts there), so
// huge weights in it do not coarsen the other groups. Weighted error with group 0 of every block
// 100x larger vs with it normal: about the same (it is 0 on group 0 either way). Without the
// rule IQ1_S's error grows 600x; IQ1_M's d refit and IQ2_XXS's NaN fit happened to hide it.
TEST(Quant, WeightlessGroupDoesNotSetTheScale) {
  const int64_t n = 2048, rows = 8;
  const auto base = gaussian(n * rows, 21);
  std::vector<float> imatrix(n, 1.f);
  for (int64_t i = 0; i < n; ++i)
    if (i % 256 < 32) imatrix[i] = 0;
  auto huge = base;
  for (int64_t i = 0; i < n * rows; ++i)
    if (i % 256 < 32) huge[i] *= 100;
  for (GGMLType t : {GGMLType::IQ1_S, GGMLType::IQ1_M, GGMLType::IQ2_XXS}) {
    auto weighted_err = [&](const std::vector<float>& x) {
      const auto y = round_trip(t, x, n, imatrix.data());
      double e = 0;
      for (int64_t i = 0; i < n * rows; ++i) {
        EXPECT_TRUE(std::isfinite(y[i])) << ggml_type_name(t);
        e += imatrix[i % n] * double(x[i] - y[i]) * (x[i] - y[i]);
      }
      return e;
    };
    const double normal = weighted_err(base), with_huge = weighted_err(huge);
    std::printf("  %-7s weighted error, group 0 normal %.4g, 100x %.4g\n", ggml_type_name(t), normal, with_huge);
    EXPECT_LT(with_huge, 1.5 * normal) << ggml_type_name(t);
  }
}

// vec_dot (activations quantized to Q8_0/Q8_K) agrees with dequantize + exact dot within the
// activation rounding error; the float types agree to float precision.
TEST(Quant, VecDotMatchesDequantizedDot) {
  const int64_t n = 4096;
  for (GGMLType t : {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q2_K,
                     GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::IQ4_NL, GGMLType::IQ4_XS,
                     GGMLType::IQ3_XXS, GGMLType::IQ3_S, GGMLType::IQ2_XXS, GGMLType::IQ2_XS, GGMLType::IQ2_S,
                     GGMLType::IQ1_S, GGMLType::IQ1_M}) {
    for (uint32_t seed = 0; seed < 4; ++seed) {
      const auto w = gaussian(n, 100 + seed, 0.05f);
      const auto x = gaussian(n, 200 + seed, 2.f);
      std::vector<uint8_t> wq(ggml_row_size(t, n)), xq(activation_row_size(t, n));
      const std::vector<float> ones(n, 1.f);
      quantize_rows(t, w.data(), wq.data(), 1, n, needs_importance(t) ? ones.data() : nullptr);
      std::vector<float> wd(n);
      dequantize_row(t, wq.data(), wd.data(), n);
      double exact = 0, wn = 0, xn = 0;
      for (int64_t i = 0; i < n; ++i) {
        exact += double(wd[i]) * x[i];
        wn += double(wd[i]) * wd[i];
        xn += double(x[i]) * x[i];
      }
      quantize_activations(t, x.data(), xq.data(), n);
      const float got = vec_dot(t, n, wq.data(), xq.data());
      // Rounding x to 8 bits perturbs each x_i by at most half a step (amax/254 per block):
      // a random-sign sum, so about ||w|| * step/sqrt(12); allow 6x that.
      const bool float_acts = vec_dot_type(t) == GGMLType::F32;
      const double step = float_acts ? 0 : 2.0 * 4.5 / 254;  // amax of N(0,2) blocks is < ~4.5 sigma
      const double tol = 6 * std::sqrt(wn) * step / std::sqrt(12.0) + 1e-5 * std::sqrt(wn * xn);
      EXPECT_NEAR(got, exact, tol) << ggml_type_name(t) << " seed " << seed;
    }
  }
  // The tolerance is meaningful: a dot with the wrong scales is far outside it.
  const auto w = gaussian(n, 1, 0.05f), x = gaussian(n, 2, 2.f);
  std::vector<uint8_t> wq(ggml_row_size(GGMLType::Q4_K, n)), xq(activation_row_size(GGMLType::Q4_K, n));
  quantize_rows(GGMLType::Q4_K, w.data(), wq.data(), 1, n);
  quantize_activations(GGMLType::Q4_K, x.data(), xq.data(), n);
  const float a = vec_dot(GGMLType::Q4_K, n, wq.data(), xq.data());
  wq[0] ^= 0x40;  // perturb the first block's d
  EXPECT_GT(std::fabs(vec_dot(GGMLType::Q4_K, n, wq.data(), xq.data()) - a), 1e-3);
}

TEST(Quant, MatvecEqualsRowDots) {
  const int64_t n = 512, rows = 7;
  const auto w = gaussian(n * rows, 4, 0.1f), x = gaussian(n, 5);
  for (GGMLType t : {GGMLType::Q4_K, GGMLType::Q8_0, GGMLType::F16}) {
    const size_t rs = ggml_row_size(t, n);
    std::vector<uint8_t> wq(rs * rows), xq(activation_row_size(t, n));
    quantize_rows(t, w.data(), wq.data(), rows, n);
    quantize_activations(t, x.data(), xq.data(), n);
    std::vector<float> out(rows);
    matvec(t, rows, n, wq.data(), xq.data(), out.data());
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(out[r], vec_dot(t, n, wq.data() + r * rs, xq.data())) << ggml_type_name(t);
  }
}

}  // namespace
}  // namespace squish
