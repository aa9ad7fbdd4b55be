// The engine's three ways to multiply by quantized weights give the same model, for every type a
// recipe can choose: one token at a time (activations quantized to the weight's dot type,
// integer SIMD dots: llama.cpp's arithmetic), a batch through the same integer dots
// (BatchPath::Integer: the AVX-512 integer GEMM, or per-token dots), and a batch through
// dequantized weights times the rounded activations (BatchPath::Float: sgemm). And all of them agree with dequantize-then-float: the same weights
// expanded to F32 in a GGUF of their own, run with float activations. Agreement is stated as
// the mean KL divergence of the next-token distributions (see the test for why not max |diff|).
//
// coder-28m with every 2-D weight at one type (recipe), 48 tokens of code, F32 KV cache.
#include "core/gguf/gguf.hpp"
#include "core/model/engine.hpp"
#include "core/model/perplexity.hpp"
#include "core/quant/quantize.hpp"
#include "core/base/error.hpp"
#include "test_util.hpp"

#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

using namespace squish;
using namespace squish::infer;

namespace {

// Not IQ1_S/IQ1_M: at 1.6-1.75 bits coder-28m is so far from its float model that the paths'
// rounding differences pass the fixed KL margins below; their dots are checked against the scalar
// references in quant_simd_test.
const char* const kTypes[] = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_S", "F16"};

// A copy of `src` with every tensor dequantized to F32 (same metadata, same names).
void write_dequantized(const std::string& src, const std::string& dst) {
  const gguf::Reader r = gguf::Reader::open(src);
  std::vector<gguf::TensorDecl> decls;
  for (const auto& t : r.tensors()) decls.push_back({t.name, t.ne, GGMLType::F32});
  gguf::Writer w(dst, r.metadata(), decls);
  for (const auto& t : r.tensors()) {
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    std::vector<float> f(static_cast<size_t>(n));
    const int64_t row = t.ne[0], rows = n / row;
    const size_t row_bytes = ggml_row_size(t.type, row);
    for (int64_t i = 0; i < rows; ++i) dequantize_row(t.type, t.data.data() + i * row_bytes, f.data() + i * row, row);
    w.write_tensor(t.name, std::as_bytes(std::span(f)));
  }
  w.commit();
}

std::vector<float> logits(const std::string& gguf, const std::vector<int32_t>& tokens, int mode) {
  auto model = Model::load(gguf);
  Session s(model, static_cast<int>(tokens.size()), 2, KVType::F32);
  std::vector<float> all, row;
  if (mode == 0) {  // one token at a time
    for (int32_t t : tokens) {
      s.eval(std::span(&t, 1), 0, row);
      all.insert(all.end(), row.begin(), row.end());
    }
  } else {
    s.set_batch_path(mode == 2 ? BatchPath::Integer : BatchPath::Float);
    s.eval(tokens, 0, all);
  }
  return all;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

// Mean over positions of KL(softmax(a) || softmax(b)), n_vocab logits per position.
double mean_kl(const std::vector<float>& a, const std::vector<float>& b, int n_vocab) {
  EXPECT_EQ(a.size(), b.size());
  const size_t rows = a.size() / n_vocab;
  double total = 0;
  for (size_t r = 0; r < rows; ++r) {
    const float* x = a.data() + r * n_vocab;
    const float* y = b.data() + r * n_vocab;
    const double mx = *std::max_element(x, x + n_vocab), my = *std::max_element(y, y + n_vocab);
    double zx = 0, zy = 0;
    for (int i = 0; i < n_vocab; ++i) zx += std::exp(x[i] - mx), zy += std::exp(y[i] - my);
    double kl = 0;
    for (int i = 0; i < n_vocab; ++i) {
      const double lp = x[i] - mx - std::log(zx), lq = y[i] - my - std::log(zy);
      kl += std::exp(lp) * (lp - lq);
    }
    total += kl;
  }
  return total / double(rows);
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

}  // namespace

class QuantizedPaths : public ::testing::TestWithParam<const char*> {};

TEST_P(QuantizedPaths, DecodeBatchedAndDequantizedAgree) {
  SQUISH_REQUIRE_SHARED();
  const std::string type = GetParam();
  test::TempDir tmp;
  const std::string recipe = tmp / "recipe.json", q = tmp / "q.gguf", f = tmp / "f.gguf";
  std::ofstream(recipe) << fmt::format(R"({{"name": "all {0}", "tensors": [{{"match": "*.weight", "type": "{0}", "reason": "test"}}]}})", type);
  const auto r = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set output={}",
                                              test::source_dir(), test::shared("models/coder-28m"), recipe, q));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  write_dequantized(q, f);

  auto ids = read_token_ids(test::shared("reference/tokens/coder-28m.code-humaneval.ids"));
  ids.resize(48);  // >= kBatchThreshold: the batch takes the sgemm path
  const auto decode = logits(q, ids, 0), batched = logits(q, ids, 1), integer = logits(q, ids, 2), dequant = logits(f, ids, 1);
  const double scale = max_abs(dequant);
  const double d_int = max_diff(decode, integer), d_batch = max_diff(decode, batched), d_float = max_diff(decode, dequant);
  const int V = static_cast<int>(decode.size() / ids.size());
  const double k_int = mean_kl(decode, integer, V), k_batch = mean_kl(decode, batched, V), k_float = mean_kl(dequant, decode, V);
  std::printf("%s: max |logit| %.2f; decode vs integer batch %.2e (KL %.2e), vs sgemm batch %.2e (KL %.2e), vs dequantize-then-float %.2e (KL %.2e)\n",
              type.c_str(), scale, d_int, k_int, d_batch, k_batch, d_float, k_float);
  // Paths that round activations to 8 bits differ by more than float summation order: a last-bit
  // difference upstream (attention, summation order) moves an activation across a rounding
  // boundary, a whole quantization step. Measured on coder-28m: mean KL 2e-5..8e-4 between the
  // three quantized paths, 2e-4..1.2e-3 from dequantize-then-float, the same with the scalar
  // kernels (SQUISH_SIMD=scalar); a kernel error on one group scale costs more than the whole
  // Q2_K quantization (KL ~0.07). No bound exists for such flips, so these limits are margins over
  // the measured worst cases (2.5-4x over Haswell/SkylakeX BLAS kernels, scalar/AVX2/AVX-512 and
  // 1-2 threads). F16 weights keep float activations: summation order only.
  if (type == "F16") {
    EXPECT_LT(d_int, 1e-4 * scale);
    EXPECT_LT(d_batch, 1e-4 * scale);
    EXPECT_LT(d_float, 1e-4 * scale);
  } else {
    EXPECT_LT(k_int, 2e-3) << type << ": decode vs the same integer dots batched";
    EXPECT_LT(k_batch, 2e-3) << type << ": decode vs dequantized weights x rounded activations";
    EXPECT_LT(k_float, 5e-3) << type << ": dequantize-then-float vs decode";
  }
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizedPaths, ::testing::ValuesIn(kTypes), [](const auto& info) { return std::string(info.param); });
