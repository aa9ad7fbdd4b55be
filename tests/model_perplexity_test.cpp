// coder-28m perplexity on HumanEval against Hugging Face transformers (float32 ground truth).
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

using namespace squish;

TEST(ModelPerplexity, Coder28mHumanEvalMatchesTransformers) {
  SQUISH_REQUIRE_SHARED();
  auto ids = read_token_ids(test::shared("reference/tokens/coder-28m.code-humaneval.ids"));
  ASSERT_EQ(ids.size(), 34967u);  // REFERENCE.md token count
  auto weights = SafetensorsWeights::open(test::shared("models/coder-28m"));
  EXPECT_EQ(weights->arch().arch, "qwen2");
  EXPECT_EQ(weights->arch().layers[0].n_head, 16);
  EXPECT_EQ(weights->arch().layers[0].n_head_kv, 4);
  Transformer model(weights, {.threads = 2});
  auto t0 = std::chrono::steady_clock::now();
  auto r = perplexity(model, ids, {.n_ctx = 512});  // qwen2: llama.cpp adds no BOS
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.n_chunks, 68);
  EXPECT_EQ(r.n_predictions, 68 * 255);
  const double reference = 10.4546;  // REFERENCE.md, transformers float32
  EXPECT_NEAR(r.ppl, reference, reference * 1e-3) << "nll " << r.nll;
  RecordProperty("ppl", std::to_string(r.ppl));
  std::printf("coder-28m code-humaneval PPL %.4f (+/- nll %.5f) in %.1f s\n", r.ppl, r.nll_stderr, secs);
}
