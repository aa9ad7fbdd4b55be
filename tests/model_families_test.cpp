// One architecture description, one transformer math: the float reference model (HF layout,
// score stage) and the GGUF inference engine (infer / verify) give the same logits, on coder-28m
// and on synthetic checkpoints of the families users bring: Mistral (sliding-window attention)
// and Llama 3 (rope_scaling llama3, written as llama.cpp's converter writes it: rope_freqs).
#include "core/arch/architecture.hpp"
#include "core/gguf/gguf.hpp"
#include "core/arch/synthetic_checkpoint.hpp"
#include "core/model/engine.hpp"
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"
#include "core/base/error.hpp"
#include "test_util.hpp"

#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>

using namespace squish;

namespace {

// Compresses an HF folder to a GGUF with squish-run (the shipped pipeline).
void compress(const std::string& model, const std::string& preset, const std::string& out) {
  const auto r = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set preset={} --set output={}",
                                              test::source_dir(), model, preset, out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Logits of the engine for `tokens`, batched (one eval) or one token at a time (F32 KV cache:
// the comparisons here are with float math).
std::vector<float> engine_logits(const std::string& gguf, const std::vector<int32_t>& tokens, bool one_at_a_time) {
  auto model = infer::Model::load(gguf);
  infer::Session s(model, static_cast<int>(tokens.size()), 2, infer::KVType::F32);
  std::vector<float> all, row;
  if (!one_at_a_time) {
    s.eval(tokens, 0, all);
    return all;
  }
  for (int32_t t : tokens) {
    s.eval(std::span(&t, 1), 0, row);
    all.insert(all.end(), row.begin(), row.end());
  }
  return all;
}

std::vector<int32_t> stories_ids(size_t n) {
  auto ids = read_token_ids(test::shared("reference/tokens/stories260K.TinyStories-valid.sample.ids"));
  ids.resize(std::min(ids.size(), n));
  return ids;
}

// A small config of the llama graph; the tokenizer is the bundled stories260K's (512 tokens).
nlohmann::json small_config(const std::string& model_type) {
  return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", model_type}, {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"head_dim", 16}, {"vocab_size", 512}, {"max_position_embeddings", 512},
          {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"hidden_act", "silu"},
          {"bos_token_id", 1}, {"eos_token_id", 2}};
}

std::string synthesize(const test::TempDir& tmp, const std::string& name, const nlohmann::json& config) {
  SyntheticOptions o;
  o.tokenizer_from = test::source_dir() + "/models/stories260K";
  o.seed = 7;
  write_synthetic_checkpoint(tmp / name, config, o);
  return tmp / name;
}

double float_ppl(const std::string& dir, const std::vector<int32_t>& ids, int ctx) {
  Transformer model(SafetensorsWeights::open(dir), {.threads = 2});
  PerplexityOptions opt;
  opt.n_ctx = ctx;
  opt.bos_token = 1;
  return perplexity(model, ids, opt).ppl;
}

// With an F32 cache, as the float model keeps k and v, so the two differ only in the order of
// float sums (F16 rounding of the cache would move the perplexity more than that).
double engine_ppl(const std::string& gguf, const std::vector<int32_t>& ids, int ctx) {
  PerplexityOptions opt;
  opt.n_ctx = ctx;
  opt.bos_token = 1;
  opt.max_chunks = 0;
  opt.threads = 2;
  opt.kv_type = infer::KVType::F32;
  return perplexity(infer::Model::load(gguf), ids, opt).ppl;
}

// A feature (window, rope scaling) as both implementations see it: the float model on the HF
// folders and the engine on their F32 GGUFs agree with and without it, and it changes the PPL.
void expect_feature_agrees(const char* what, const std::string& with_dir, const std::string& with_gguf,
                           const std::string& without_dir, const std::string& without_gguf) {
  const auto ids = stories_ids(8 * 128);
  const double f = float_ppl(with_dir, ids, 128), e = engine_ppl(with_gguf, ids, 128);
  const double f0 = float_ppl(without_dir, ids, 128), e0 = engine_ppl(without_gguf, ids, 128);
  std::printf("%s, ctx 128: PPL float %.5f engine %.5f; without: float %.5f engine %.5f\n", what, f, e, f0, e0);
  // Summation order only: measured within 3% of this on every BLAS kernel and SIMD level tried;
  // the feature itself moves the PPL by more than 10x this (the last check).
  EXPECT_NEAR(e, f, 1e-4 * f);
  EXPECT_NEAR(e0, f0, 1e-4 * f0);
  EXPECT_GT(std::fabs(f - f0), 1e-3 * f0);
}

}  // namespace

// coder-28m at F32: the engine reads the GGUF (q/k in GGUF layout, its own matmul paths), the
// float model the bf16 safetensors (HF layout). Same weights, so the same logits up to float
// summation order: |Δlogit| ≤ 1e-4 of the largest logit, batched and one token at a time.
TEST(ModelFamilies, FloatModelAndEngineAgreeOnCoder28m) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  compress(test::shared("models/coder-28m"), "F32", tmp / "f32.gguf");
  auto ids = read_token_ids(test::shared("reference/tokens/coder-28m.code-humaneval.ids"));
  ids.resize(160);
  Transformer model(SafetensorsWeights::open(test::shared("models/coder-28m")), {.threads = 2});
  const std::vector<float> ref = model.logits(ids);
  const double scale = max_abs(ref);
  const double batched = max_abs_diff(engine_logits(tmp / "f32.gguf", ids, false), ref);
  const double decode = max_abs_diff(engine_logits(tmp / "f32.gguf", ids, true), ref);
  std::printf("coder-28m F32, 160 tokens: max |logit| %.3f, max diff batched %.3g, decode %.3g\n", scale, batched, decode);
  EXPECT_LT(batched, 1e-4 * scale);
  EXPECT_LT(decode, 1e-4 * scale);

  // The KL divergence of the engine from the float model: ~0 for the same weights; for
  // llama.cpp's Q4_K_M, near what llama-perplexity --kl-divergence reports over the whole file
  // (0.00962; two chunks here, so a band rather than a figure).
  // With an F32 cache the F32 file's logits are the float model's up to summation order, as
  // checked above: |δ| <= Δ = 1e-4 * scale for every logit. KL(p||q) = log E_p[e^δ] - E_p[δ] <=
  // (range of δ)²/8 <= Δ²/2 (Hoeffding's lemma), whatever the CPU.
  auto all = read_token_ids(test::shared("reference/tokens/coder-28m.code-humaneval.ids"));
  PerplexityOptions two;
  two.n_ctx = 512;
  two.bos_token = -1;
  two.max_chunks = 2;
  two.threads = 2;
  PerplexityOptions two_f32 = two;
  two_f32.kv_type = infer::KVType::F32;
  const KlResult same = kl_divergence(infer::Model::load(tmp / "f32.gguf"), model, all, two_f32);
  EXPECT_LT(same.kl_mean, 0.5 * std::pow(1e-4 * scale, 2));
  // The top token flips only where the float model's top two logits are within 2Δ; the smallest
  // such gap measured over these positions is ~500Δ.
  EXPECT_GT(same.same_top_p, 0.999);
  const KlResult q4 = kl_divergence(infer::Model::load(test::shared("reference/coder-28m-Q4_K_M.gguf")), model, all, two);
  std::printf("KL vs float, 2 chunks: F32 %.3g, Q4_K_M %.5f (99%% %.4f)\n", same.kl_mean, q4.kl_mean, q4.kl_p99);
  EXPECT_GT(q4.kl_mean, 0.004);
  EXPECT_LT(q4.kl_mean, 0.025);
  EXPECT_GT(q4.kl_p99, q4.kl_mean);
}

// Mistral: written as llama (as llama.cpp's converter does) plus the window, which Squish's
// engine honours: both implementations agree with a window shorter than the context, and the
// window changes the result (so it is applied, not ignored).
TEST(ModelFamilies, MistralSlidingWindow) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto cfg = small_config("mistral");
  cfg["architectures"] = {"MistralForCausalLM"};
  cfg["sliding_window"] = 24;
  const std::string windowed = synthesize(tmp, "mistral", cfg);
  cfg["sliding_window"] = nullptr;
  const std::string full = synthesize(tmp, "mistral-full", cfg);
  compress(windowed, "F32", tmp / "mistral.gguf");
  compress(full, "F32", tmp / "mistral-full.gguf");
  {
    const auto r = gguf::Reader::open(tmp / "mistral.gguf");
    EXPECT_EQ(r.get_string("general.architecture", ""), "llama");
    EXPECT_EQ(r.get_int("llama.attention.sliding_window", 0), 24);
    EXPECT_EQ(gguf::Reader::open(tmp / "mistral-full.gguf").get("llama.attention.sliding_window"), nullptr);
  }
  expect_feature_agrees("mistral window 24", windowed, tmp / "mistral.gguf", full, tmp / "mistral-full.gguf");
  // Within the window the two models are the same model.
  const auto ids = stories_ids(8 * 128);
  const double f = engine_ppl(tmp / "mistral-full.gguf", ids, 24);
  EXPECT_EQ(engine_ppl(tmp / "mistral.gguf", ids, 24), f);  // the same arithmetic
  // Logits too, one token at a time through the KV cache (the window slides over the cache).
  std::vector<int32_t> few(ids.begin(), ids.begin() + 60);
  Transformer model(SafetensorsWeights::open(windowed), {.threads = 2});
  const auto ref = model.logits(few);
  EXPECT_LT(max_abs_diff(engine_logits(tmp / "mistral.gguf", few, true), ref), 1e-4 * max_abs(ref));
}

// Llama 3: rope_scaling llama3 becomes rope_freqs.weight (F32, one factor per rotary pair, the
// converter's formula); the engine divides each frequency by it, as the float model does from
// config.json, and as stock llama.cpp does with the same tensor.
TEST(ModelFamilies, Llama3RopeScaling) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto cfg = small_config("llama");
  const std::string plain = synthesize(tmp, "llama", cfg);
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 64}};
  const std::string scaled = synthesize(tmp, "llama3", cfg);
  compress(scaled, "F32", tmp / "llama3.gguf");
  compress(plain, "F32", tmp / "llama.gguf");

  // head_dim 16, theta 1e4: pair i has wavelength 2π·10^(i/2) = 6.28, 19.87, 62.83, 198.7, ...
  // Below 64/4 = 16 (i = 0): 1; above 64/1 (i >= 3): the full factor 8; in between smoothed,
  // s = (64/wavelength - 1)/3, factor 1/((1 - s)/8 + s): i = 1: s = 0.7404, 1.2940;
  // i = 2: s = 0.006197, 7.6674.
  const auto r = gguf::Reader::open(tmp / "llama3.gguf");
  const auto* t = r.find("rope_freqs.weight");
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->type, GGMLType::F32);
  ASSERT_EQ(t->ne, std::vector<int64_t>{8});
  const float* f = reinterpret_cast<const float*>(t->data.data());
  const auto factor = [](int i) {  // the formula above, in double
    const double wavelength = 2 * std::numbers::pi * std::pow(10.0, i / 2.0), s = (64 / wavelength - 1) / 3;
    return 1 / ((1 - s) / 8 + s);
  };
  EXPECT_FLOAT_EQ(f[0], 1.f);
  EXPECT_FLOAT_EQ(f[1], float(factor(1)));
  EXPECT_FLOAT_EQ(f[2], float(factor(2)));
  for (int i = 3; i < 8; ++i) EXPECT_FLOAT_EQ(f[i], 8.f);
  EXPECT_EQ(gguf::Reader::open(tmp / "llama.gguf").find("rope_freqs.weight"), nullptr);

  expect_feature_agrees("llama3 rope scaling", scaled, tmp / "llama3.gguf", plain, tmp / "llama.gguf");
}

// What is not supported is refused with the file and the reason.
TEST(ModelFamilies, UnsupportedConfigsAreRefused) {
  test::TempDir tmp;
  auto refused = [&](nlohmann::json cfg, const std::string& what) {
    try {
      write_synthetic_checkpoint(tmp / "x", cfg, {});
      ADD_FAILURE() << "accepted: " << cfg.dump();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::InputData);
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto cfg = small_config("gemma");
  refused(cfg, "unsupported model_type 'gemma' (supported: llama, mistral, qwen2)");
  cfg = small_config("llama");
  cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  refused(cfg, "rope scaling 'yarn' is not supported");
  cfg = small_config("llama");
  cfg["rms_norm_eps"] = 0;
  refused(cfg, "rms_norm_eps must be in (0, 1)");
  cfg = small_config("qwen2");
  cfg["use_sliding_window"] = true;
  cfg["sliding_window"] = 64;
  refused(cfg, "use_sliding_window");
}
