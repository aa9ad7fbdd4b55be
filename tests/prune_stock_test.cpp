// Pruned GGUFs in stock llama.cpp: the recipe resolver writes the family's own architecture when
// llama.cpp's loader of it takes the file (unpruned files are unchanged), "deci" (per-layer head
// counts and FFN widths, interleaved rope) when that one does, and otherwise the family's with a
// squish.compat key saying why stock llama.cpp cannot load it. Squish reads all of them back:
// a deci file computes exactly what the float model does with the removed structures masked.
#include "core/arch/architecture.hpp"
#include "core/gguf/gguf.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/safetensors.hpp"
#include "core/arch/synthetic_checkpoint.hpp"
#include "core/model/generate.hpp"
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"
#include "core/recipe/recipe.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

using namespace squish;
using namespace squish::recipe;

namespace {

std::string stories() { return test::source_dir() + "/models/stories260K"; }  // bundled: no ../shared needed

const std::string* meta_string(const std::vector<gguf::KeyValue>& kv, const std::string& key) {
  for (const auto& [k, v] : kv)
    if (k == key) return &v.as_string();
  return nullptr;
}

std::string compat_of(const CompressPlan& p) {
  const std::string* s = meta_string(p.metadata, "squish.compat");
  return s ? *s : "";
}

CompressPlan plan_of(const nlohmann::json& recipe, const std::string& model) {
  return resolve(CompressionRecipe::from_json(recipe, "test"), model);
}

std::string compress(const std::string& model, const nlohmann::json& recipe, const test::TempDir& tmp, const std::string& name) {
  test::write_file(tmp / (name + ".json"), recipe.dump());
  const std::string out = tmp / (name + ".gguf");
  auto r = test::squish_run(fmt::format("--set model={} --set recipe={} --set output={} {}/pipelines/compress.yaml", model,
                                        tmp / (name + ".json"), out, test::source_dir()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return out;
}

// The engine's perplexity of a GGUF, and the float transformer's of the source checkpoint with
// `masks`, over the same chunks (llama-perplexity protocol, BOS as the GGUF's tokenizer says).
std::pair<PerplexityResult, PerplexityResult> engine_and_masked_float(const std::string& gguf, const std::string& source,
                                                                      const MaskSet& masks, const std::string& text, int n_ctx,
                                                                      int chunks) {
  auto model = infer::Model::load(gguf);
  const Tokenizer tok = infer::tokenizer_of(*model);
  const auto tokens = tok.encode(test::read_file(text), /*add_special=*/true);
  PerplexityOptions opt;
  opt.n_ctx = n_ctx;
  opt.threads = 2;
  opt.max_chunks = chunks;
  // An F32 cache, as the float reference keeps k and v: the default F16 cache rounds them, which
  // moves the perplexity far more than the order of float sums this check is about.
  opt.kv_type = infer::KVType::F32;
  opt = infer::with_bos(opt, tok);
  const PerplexityResult engine = perplexity(model, tokens, opt);
  Transformer ref(SafetensorsWeights::open(source), {.threads = 2});
  const ChunkNll masked = [&](std::span<const int32_t> chunk, int first, std::vector<double>& nll) {
    ref.loss(chunk, first, &masks, nullptr, &nll);
  };
  return {engine, perplexity(masked, tokens, opt)};
}

// A small qwen2 (q/k/v biases, rotate-half rope in HF and in qwen2 GGUFs), seeded.
void write_qwen2(const std::string& dir) {
  SyntheticOptions so;
  so.tokenizer_from = stories();
  so.seed = 11;
  so.bf16 = false;
  write_synthetic_checkpoint(dir, {{"model_type", "qwen2"}, {"hidden_size", 64}, {"intermediate_size", 128},
                                   {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                   {"vocab_size", 512}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-6},
                                   {"tie_word_embeddings", true}, {"bos_token_id", 1}, {"eos_token_id", 2}},
                             so);
}

std::vector<int> first_channels(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

}  // namespace

// "deci" is read from GGUFs only: no config.json model_type selects it.
TEST(PruneStock, DeciIsAGgufAliasOfTheLlamaGraph) {
  const auto* deci = arch::family_by_gguf_arch("deci");
  ASSERT_NE(deci, nullptr);
  EXPECT_EQ(deci->gguf_rope, arch::RopeLayout::Interleaved);
  EXPECT_TRUE(deci->permute_qk);
  EXPECT_EQ(arch::family_by_model_type("deci"), nullptr);
  EXPECT_EQ(arch::supported_model_types(), "llama, mistral, qwen2");
  EXPECT_TRUE(gguf::needs_qk_permute("deci", "blk.0.attn_q.bias"));
  EXPECT_TRUE(gguf::needs_qk_permute("deci", "blk.0.attn_k.weight"));
  EXPECT_FALSE(gguf::needs_qk_permute("qwen2", "blk.0.attn_q.weight"));
  try {
    ModelConfig::from_json({{"model_type", "deci"}, {"hidden_size", 64}}, "cfg");
    FAIL() << "model_type deci accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported model_type 'deci'"), std::string::npos) << e.what();
  }
}

// Unpruned and uniformly pruned llama models stay "llama" (stock llama.cpp's llama loader takes
// one set of counts); an unpruned file gets no squish.compat key, so its bytes are today's.
TEST(PruneStock, UnprunedAndUniformKeepTheFamilyArchitecture) {
  auto plain = plan_of({{"preset", "F32"}}, stories());
  EXPECT_EQ(plain.output_arch.arch, "llama");
  EXPECT_EQ(*meta_string(plain.metadata, "general.architecture"), "llama");
  EXPECT_EQ(meta_string(plain.metadata, "squish.compat"), nullptr);

  nlohmann::json uniform{{"preset", "F32"}, {"attention", nlohmann::json::object()}};
  for (int l = 0; l < 5; ++l) uniform["attention"][std::to_string(l)] = {{"kv_groups", {0, 1}}};
  auto u = plan_of(uniform, stories());
  EXPECT_EQ(u.output_arch.arch, "llama");
  EXPECT_EQ(*meta_string(u.metadata, "general.architecture"), "llama");
  EXPECT_NE(compat_of(u).find("stock llama.cpp loads this file as llama"), std::string::npos) << compat_of(u);
  for (const auto& pt : u.tensors)  // q/k still permuted (llama), over the kept heads
    if (pt.gguf_name == "blk.0.attn_q.weight") {
      EXPECT_EQ(pt.permute_heads, 4);
    }
}

// stories260K with different counts per layer is written as deci: per-layer arrays under deci.
// keys, rope.dimension_count = head_dim, q/k permuted per layer; Squish's engine computes what
// the float model computes with the removed heads / groups / channels masked to 0.
TEST(PruneStock, Stories260KNonUniformIsDeciAndEqualsMaskedFloatModel) {
  test::TempDir tmp;
  // 8 q heads in 4 KV groups (2 per group), head_dim 8, n_ff 172. Layer 0 keeps group 0,
  // layer 2 keeps one q head per group (0, 2, 4, 6), layer 3 keeps FFN channels 0..95.
  nlohmann::json rec{{"preset", "F32"},
                     {"attention", {{"0", {{"kv_groups", {0}}}}, {"2", {{"q_heads", {0, 2, 4, 6}}}}}},
                     {"ffn_channels", {{"3", first_channels(96)}}}};
  auto plan = plan_of(rec, stories());
  EXPECT_EQ(plan.output_arch.arch, "deci");
  EXPECT_NE(compat_of(plan).find("stock llama.cpp loads this file as deci"), std::string::npos) << compat_of(plan);
  EXPECT_NE(compat_of(plan).find("not as llama: llama reads one head count"), std::string::npos) << compat_of(plan);
  for (const auto& pt : plan.tensors) {
    if (pt.gguf_name == "blk.0.attn_q.weight") {
      EXPECT_EQ(pt.permute_heads, 2);
    } else if (pt.gguf_name == "blk.0.attn_k.weight") {
      EXPECT_EQ(pt.permute_heads, 1);
    } else if (pt.gguf_name == "blk.2.attn_q.weight") {
      EXPECT_EQ(pt.permute_heads, 4);
    }
  }

  const std::string out = compress(stories(), rec, tmp, "deci");
  auto g = gguf::Reader::open(out);
  EXPECT_EQ(g.get_string("general.architecture", ""), "deci");
  EXPECT_EQ(g.get("llama.block_count"), nullptr);
  EXPECT_EQ(g.get_int("deci.block_count", 0), 5);
  EXPECT_EQ(g.get_int("deci.rope.dimension_count", 0), 8);
  EXPECT_EQ(g.get_int("deci.attention.key_length", 0), 8);
  EXPECT_EQ(gguf::per_layer_values(g, "deci.attention.head_count", 5, -1), (std::vector<int>{2, 8, 4, 8, 8}));
  EXPECT_EQ(gguf::per_layer_values(g, "deci.attention.head_count_kv", 5, -1), (std::vector<int>{1, 4, 4, 4, 4}));
  EXPECT_EQ(gguf::per_layer_values(g, "deci.feed_forward_length", 5, -1), (std::vector<int>{172, 172, 172, 96, 172}));
  EXPECT_EQ(g.get_string("squish.compat", ""), compat_of(plan));

  MaskSet masks = MaskSet::ones(SafetensorsWeights::open(stories())->arch());
  for (int gr = 1; gr < 4; ++gr) masks.kv[0][gr] = 0;
  for (int h : {1, 3, 5, 7}) masks.head[2][h] = 0;
  for (int c = 96; c < 172; ++c) masks.ffn[3][c] = 0;
  const auto [engine, ref] = engine_and_masked_float(out, stories(), masks, stories() + "/calibration.txt", 128, 4);
  ASSERT_EQ(engine.scored, ref.scored);
  ASSERT_GT(engine.scored, 0);
  EXPECT_TRUE(std::isfinite(engine.ppl));
  // Same arithmetic up to the order of float sums (engine sgemm/dots vs the reference's GEMMs, on
  // any BLAS kernel, SIMD level and thread count): measured within 0.4% of this tolerance on
  // Haswell and SkylakeX kernels, scalar/AVX2/AVX-512 and 1-2 threads; a real mistake in the
  // pruned shapes moves it by orders of magnitude more (the next check).
  EXPECT_NEAR(engine.ppl, ref.ppl, ref.ppl * 1e-4) << "masked float reference " << ref.ppl;  // as above
  const MaskSet ones = MaskSet::ones(SafetensorsWeights::open(stories())->arch());
  const double unpruned = engine_and_masked_float(out, stories(), ones, stories() + "/calibration.txt", 128, 4).second.ppl;
  EXPECT_GT(std::fabs(unpruned - ref.ppl), 1e-3 * ref.ppl);  // the pruning changed the model

  // verify (architecture, shapes against the plan, finite values) accepts the deci file.
  auto v = test::squish_run(fmt::format("--set model={} --set source={} --set report={} {}/pipelines/verify.yaml", out, stories(),
                                        tmp / "verify.json", test::source_dir()));
  EXPECT_EQ(v.exit_code, 0) << v.err << v.out;
}

// qwen2 with only its FFN widths pruned (differently per layer) is written as deci: q/k rows AND
// q/k biases permuted from rotate-half to interleaved, as llama.cpp's converter permutes
// q_proj/k_proj .weight and .bias; the engine then equals the masked float model.
TEST(PruneStock, Qwen2FfnPrunedIsDeciWithPermutedBiases) {
  test::TempDir tmp;
  const std::string model = tmp / "qwen2";
  write_qwen2(model);
  nlohmann::json rec{{"preset", "F32"}, {"ffn_channels", {{"1", first_channels(64)}}}};
  auto plan = plan_of(rec, model);
  EXPECT_EQ(plan.output_arch.arch, "deci");
  EXPECT_NE(compat_of(plan).find("q/k rows and biases permuted"), std::string::npos) << compat_of(plan);
  EXPECT_NE(compat_of(plan).find("not as qwen2"), std::string::npos) << compat_of(plan);

  const std::string out = compress(model, rec, tmp, "q");
  auto g = gguf::Reader::open(out);
  EXPECT_EQ(g.get_string("general.architecture", ""), "deci");
  EXPECT_EQ(g.get_int("deci.rope.dimension_count", 0), 16);
  auto st = SafetensorsModel::open(model);
  for (const char* name : {"attn_q.bias", "attn_k.bias", "attn_q.weight", "attn_k.weight"}) {
    SCOPED_TRACE(name);
    const std::string gg = fmt::format("blk.2.{}", name);
    const auto src = st.load(*gguf::gguf_to_hf_name(gg)).to_f32();
    const bool is_q = std::string(name).starts_with("attn_q");
    const int64_t rows = is_q ? 64 : 32, row_len = static_cast<int64_t>(src.size()) / rows;
    std::vector<float> want(src.size());
    gguf::permute_qk_rows(src.data(), want.data(), rows, row_len, is_q ? 4 : 2);
    const auto& t = g.at(gg);
    ASSERT_EQ(t.data.size(), want.size() * sizeof(float));
    EXPECT_EQ(std::memcmp(t.data.data(), want.data(), t.data.size()), 0);
    EXPECT_NE(std::memcmp(t.data.data(), src.data(), t.data.size()), 0);  // really permuted
  }

  MaskSet masks = MaskSet::ones(SafetensorsWeights::open(model)->arch());
  for (int c = 64; c < 128; ++c) masks.ffn[1][c] = 0;
  test::write_file(tmp / "text.txt", test::read_file(stories() + "/calibration.txt"));
  const auto [engine, ref] = engine_and_masked_float(out, model, masks, tmp / "text.txt", 64, 4);
  ASSERT_GT(engine.scored, 0);
  EXPECT_NEAR(engine.ppl, ref.ppl, ref.ppl * 1e-4) << "masked float reference " << ref.ppl;
}

// qwen2 with pruned q heads cannot run in stock llama.cpp: qwen2 fixes attn_q to n_embd rows and
// deci fixes attn_q.bias to n_embd. The file stays qwen2 (Squish's engine runs it) and says why.
// Recovery biases (attn_output / ffn_down) rule out qwen2 too, but deci takes them.
TEST(PruneStock, Qwen2QHeadPruningExplainsWhyStockCannotLoadIt) {
  test::TempDir tmp;
  const std::string model = tmp / "qwen2";
  write_qwen2(model);
  nlohmann::json rec{{"preset", "F32"}, {"attention", {{"1", {{"kv_groups", {1}}}}}}};
  auto plan = plan_of(rec, model);
  EXPECT_EQ(plan.output_arch.arch, "qwen2");
  EXPECT_EQ(*meta_string(plan.metadata, "general.architecture"), "qwen2");
  const std::string c = compat_of(plan);
  EXPECT_NE(c.find("stock llama.cpp cannot load this file"), std::string::npos) << c;
  EXPECT_NE(c.find("layer 1 has an attn_q.bias of 32 values, and deci fixes it to n_embd 64"), std::string::npos) << c;
  for (const auto& pt : plan.tensors) EXPECT_EQ(pt.permute_heads, 0) << pt.gguf_name;  // qwen2: rotate-half kept

  // Uniform q-head pruning: the same, even though every layer agrees.
  nlohmann::json uni{{"preset", "F32"}, {"attention", nlohmann::json::object()}};
  for (int l = 0; l < 3; ++l) uni["attention"][std::to_string(l)] = {{"kv_groups", {0}}};
  const std::string cu = compat_of(plan_of(uni, model));
  EXPECT_NE(cu.find("as qwen2, layer 0 has 2 q heads x 16 = 32 attn_q rows, and qwen2 fixes attn_q and attn_output to n_embd 64"),
            std::string::npos) << cu;

  // The engine runs the qwen2 file with its per-layer counts.
  const std::string out = compress(model, rec, tmp, "qh");
  auto m = infer::Model::load(out);
  EXPECT_EQ(m->dims(1).n_head, 2);
  EXPECT_EQ(m->architecture().gguf_rope(), arch::RopeLayout::HalfSplit);
  EXPECT_EQ(gguf::Reader::open(out).get_string("squish.compat", ""), c);

  // Pruning-recovery biases: qwen2's loader has no ffn_down.bias, deci's does (uniform widths,
  // so only the bias rules qwen2 out); llama's takes it, so a uniform llama stays llama.
  nlohmann::json ffn{{"preset", "F32"}, {"recovery", "bias"}, {"ffn_channels", nlohmann::json::object()}};
  for (int l = 0; l < 3; ++l) ffn["ffn_channels"][std::to_string(l)] = first_channels(96);
  auto rb = plan_of(ffn, model);
  EXPECT_TRUE(rb.output_arch.down_bias);
  EXPECT_EQ(rb.output_arch.arch, "deci");
  EXPECT_NE(compat_of(rb).find("not as qwen2: qwen2 has no ffn_down.bias"), std::string::npos) << compat_of(rb);
  for (int l = 0; l < 5; ++l) ffn["ffn_channels"][std::to_string(l)] = first_channels(96);
  auto lb = plan_of(ffn, stories());
  EXPECT_TRUE(lb.output_arch.down_bias);
  EXPECT_EQ(lb.output_arch.arch, "llama");
  EXPECT_NE(compat_of(lb).find("takes the recovery biases"), std::string::npos) << compat_of(lb);

  // Unpruned qwen2: its own architecture, no squish.compat.
  auto plain = plan_of({{"preset", "F32"}}, model);
  EXPECT_EQ(plain.output_arch.arch, "qwen2");
  EXPECT_EQ(meta_string(plain.metadata, "squish.compat"), nullptr);
}
