// The compress stage against stock llama.cpp: same weights + same preset => same tensor bytes
// and the same metadata; pruning recipes => consistent shapes and head-count metadata.
#include "core/base/error.hpp"
#include "core/gguf/gguf.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/io/safetensors.hpp"
#include "core/quant/quantize.hpp"
#include "core/recipe/recipe.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

using namespace squish;
using namespace squish::recipe;
namespace fs = std::filesystem;

namespace {

std::string compress_cmd(const std::string& model, const std::string& how, const std::string& out) {
  return fmt::format("--set model={} --set {} --set output={} {}/pipelines/compress.yaml", model, how, out, test::source_dir());
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

// Keys only Squish writes.
bool squish_key(const std::string& k) { return k.starts_with("squish."); }

}  // namespace

class PresetMatchesLlamaCpp : public ::testing::TestWithParam<const char*> {};

TEST_P(PresetMatchesLlamaCpp, EveryTensorAndKeyIdentical) {
  SQUISH_REQUIRE_SHARED();
  const std::string preset = GetParam();
  test::TempDir tmp;
  const std::string out = tmp / "out.gguf";
  auto r = test::squish_run(compress_cmd(test::shared("models/coder-28m"), "preset=" + preset, out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto mine = gguf::Reader::open(out);
  auto ref = gguf::Reader::open(test::shared("reference/coder-28m-" + preset + ".gguf"));

  ASSERT_EQ(mine.tensors().size(), ref.tensors().size());
  for (size_t i = 0; i < ref.tensors().size(); ++i) {
    const auto& a = mine.tensors()[i];
    const auto& b = ref.tensors()[i];
    SCOPED_TRACE(b.name);
    EXPECT_EQ(a.name, b.name);  // same order as llama.cpp
    EXPECT_EQ(a.ne, b.ne);
    EXPECT_EQ(a.type, b.type) << ggml_type_name(a.type) << " vs " << ggml_type_name(b.type);
    EXPECT_TRUE(same_bytes(a.data, b.data)) << "tensor bytes differ";
  }
  // Metadata: every reference key present with an equal value, in the same order; extra keys are Squish's own.
  std::vector<std::string> my_keys;
  for (const auto& [k, v] : mine.metadata())
    if (!squish_key(k)) my_keys.push_back(k);
  std::vector<std::string> ref_keys;
  for (const auto& [k, v] : ref.metadata()) {
    ref_keys.push_back(k);
    const auto* mv = mine.get(k);
    ASSERT_NE(mv, nullptr) << k;
    EXPECT_TRUE(*mv == v) << k << ": " << mv->to_string() << " vs " << v.to_string();
  }
  EXPECT_EQ(my_keys, ref_keys);
  EXPECT_NE(mine.get("squish.recipe"), nullptr);
  // Byte-identical tensors and metadata leave only Squish's keys to differ in size.
  EXPECT_GT(mine.file_size(), ref.file_size());
  EXPECT_LT(mine.file_size(), ref.file_size() + 512);
}

INSTANTIATE_TEST_SUITE_P(Coder28m, PresetMatchesLlamaCpp, ::testing::Values("Q5_K_M", "Q4_K_M", "Q3_K_S", "Q2_K"));

// stories260K (llama arch: q/k rope permutation, F32 source, ffn_down rows of 172) at Q8_0.
TEST(Compress, Stories260KQ8_0MatchesLlamaCpp) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto r = test::squish_run(compress_cmd(test::shared("models/stories260K"), "preset=Q8_0", tmp / "s.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto mine = gguf::Reader::open(tmp / "s.gguf");
  auto ref = gguf::Reader::open(test::shared("reference/stories260K/stories260K-q8_0-ffndown_f16.gguf"));
  size_t compared = 0;
  for (const auto& b : ref.tensors()) {
    SCOPED_TRACE(b.name);
    const auto* a = mine.find(b.name);
    if (!a) {
      // The reference stores the tied output projection separately; Squish keeps it tied.
      ASSERT_EQ(b.name, "output.weight");
      EXPECT_TRUE(same_bytes(b.data, ref.at("token_embd.weight").data)) << "reference output.weight is the tied embedding";
      continue;
    }
    EXPECT_EQ(a->ne, b.ne);
    EXPECT_EQ(a->type, b.type);
    EXPECT_TRUE(same_bytes(a->data, b.data));
    ++compared;
  }
  EXPECT_EQ(compared, mine.tensors().size());
  EXPECT_EQ(mine.at("blk.0.ffn_down.weight").type, GGMLType::F16);  // 172 columns: no Q8_0 block fits
}

// llama.cpp's IQ4_XS / IQ4_NL mixtures (llama_tensor_get_type) on coder-28m (n_gqa 4, tied
// embedding): attn_v Q5_K, the tied embedding as output Q6_K, the rest the preset's type; without
// an importance matrix the first eighth of ffn_down (layer 0 of 8) also Q5_K. With an imatrix the
// IQ4_XS mixture, run through llama-quantize, gave every tensor's type and bytes of Squish's file
// (README). preset_imatrix travels with the recipe and needs a preset.
TEST(Compress, IQ4PresetsMixAsLlamaQuantize) {
  SQUISH_REQUIRE_SHARED();
  for (const auto& [preset, base] : {std::pair{"IQ4_XS", GGMLType::IQ4_XS}, std::pair{"IQ4_NL", GGMLType::IQ4_NL}})
    for (bool imatrix : {true, false}) {
      SCOPED_TRACE(fmt::format("{} {}", preset, imatrix ? "with an imatrix" : "without"));
      const auto plan = recipe::resolve(recipe::CompressionRecipe::from_preset(preset, imatrix), test::shared("models/coder-28m"));
      int of_base = 0;
      for (const auto& pt : plan.tensors) {
        SCOPED_TRACE(pt.gguf_name);
        if (pt.ne.size() < 2) continue;
        GGMLType want = base;
        if (pt.gguf_name.ends_with("attn_v.weight")) want = GGMLType::Q5_K;
        if (pt.gguf_name == "token_embd.weight") want = GGMLType::Q6_K;
        if (!imatrix && pt.gguf_name == "blk.0.ffn_down.weight") want = GGMLType::Q5_K;
        EXPECT_EQ(pt.type, want) << pt.reason;
        of_base += pt.type == base;
      }
      EXPECT_EQ(of_base, imatrix ? 48 : 47);
      EXPECT_EQ(plan.recipe.to_json().contains("preset_imatrix"), imatrix);
      EXPECT_EQ(recipe::CompressionRecipe::from_json(plan.recipe.to_json(), "round trip").preset_imatrix, imatrix);
    }
  EXPECT_THROW(recipe::CompressionRecipe::from_json({{"preset_imatrix", true}, {"tensors", {{{"match", "*"}, {"type", "Q4_K"}}}}}, "no preset"),
               squish::Error);
}

// llama.cpp's i-quant mixtures on tiny-iq (n_gqa 2, tied embedding, 2 layers) with its imatrix:
// IQ3_XS (attn_q/attn_k and the middle ffn_gate/ffn_up IQ3_XXS, the rest IQ3_S), IQ3_M (attn_v
// and attn_output Q4_K), IQ2_M (IQ2_S; attn_v, attn_output IQ3_S; the tied embedding Q5_K):
// every tensor's type and bytes as llama-quantize's.
class IqMixtureMatchesLlamaCpp : public ::testing::TestWithParam<const char*> {};

TEST_P(IqMixtureMatchesLlamaCpp, EveryTensorIdentical) {
  SQUISH_REQUIRE_SHARED();
  const std::string preset = GetParam();
  test::TempDir tmp;
  const std::string dir = test::shared("reference/tiny-iq");
  auto r = test::squish_run(compress_cmd(dir, fmt::format("preset={} --set imatrix={}/imatrix.dat", preset, dir), tmp / "out.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto mine = gguf::Reader::open(tmp / "out.gguf");
  auto ref = gguf::Reader::open(fmt::format("{}/tiny-iq-{}.gguf", dir, preset));
  ASSERT_EQ(mine.tensors().size(), ref.tensors().size());
  std::set<GGMLType> types;
  for (const auto& b : ref.tensors()) {
    SCOPED_TRACE(b.name);
    const auto* a = mine.find(b.name);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->type, b.type) << ggml_type_name(a->type) << " vs " << ggml_type_name(b.type);
    EXPECT_TRUE(same_bytes(a->data, b.data)) << "tensor bytes differ";
    types.insert(b.type);
  }
  EXPECT_GE(types.size(), 3u) << "a mixture, not one type";
  EXPECT_EQ(mine.get("general.file_type")->to_string(), ref.get("general.file_type")->to_string());
}

INSTANTIATE_TEST_SUITE_P(TinyIq, IqMixtureMatchesLlamaCpp, ::testing::Values("IQ3_XS", "IQ3_M", "IQ2_M"));

// IQ2_XXS without an importance matrix is refused before any work, naming the tensor, as
// llama-quantize refuses it; nothing is written.
TEST(Compress, IQ2WithoutImatrixIsRefused) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto r = test::squish_run(compress_cmd(test::shared("reference/tiny-iq"), "preset=IQ2_XXS", tmp / "out.gguf"));
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::Usage)) << r.err;
  EXPECT_NE(r.err.find(": IQ2_XXS needs an importance matrix and none is given"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out.gguf"));
}

// stories260K (n_gqa 2: attn_v keeps the base type) at IQ4_XS: rows of 64 fit no 256-block and
// fall back to IQ4_NL as in llama.cpp, the tied embedding's Q6_K to Q8_0, rows of 172 to F16.
TEST(Compress, IQ4_XSFallsBackAsLlamaCpp) {
  SQUISH_REQUIRE_SHARED();
  const auto plan = recipe::resolve(recipe::CompressionRecipe::from_preset("IQ4_XS", true), test::shared("models/stories260K"));
  for (const auto& pt : plan.tensors) {
    SCOPED_TRACE(pt.gguf_name);
    if (pt.ne.size() < 2) continue;
    const GGMLType want = pt.gguf_name == "token_embd.weight" ? GGMLType::Q8_0 : pt.ne[0] % 32 ? GGMLType::F16 : GGMLType::IQ4_NL;
    EXPECT_EQ(pt.type, want) << pt.reason;
  }
}

// stories260K at Q4_K_M: rows of 64 and 172 fit no 256-block: documented fallbacks, and the
// file round-trips through the reader with finite values.
TEST(Compress, Stories260KQ4_K_MFallsBackAndRoundTrips) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto r = test::squish_run(compress_cmd(test::shared("models/stories260K"), "preset=Q4_K_M", tmp / "s.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto g = gguf::Reader::open(tmp / "s.gguf");
  auto plan = recipe::resolve(recipe::CompressionRecipe::from_preset("Q4_K_M"), test::shared("models/stories260K"));
  auto st = SafetensorsModel::open(test::shared("models/stories260K"));
  for (const auto& pt : plan.tensors) {
    SCOPED_TRACE(pt.gguf_name);
    const auto& t = g.at(pt.gguf_name);
    EXPECT_EQ(t.type, pt.type);
    EXPECT_EQ(pt.ne[0] % ggml_type_traits(pt.type)->block_size, 0);
    if (pt.ne.size() >= 2 && ggml_type_traits(pt.type)->quantized) {
      EXPECT_NE(pt.reason.find("fallback"), std::string::npos) << pt.reason;
    }
    // Dequantized values are finite and close to the source (relative RMS error).
    std::vector<float> deq(static_cast<size_t>(t.n_elements()));
    dequantize_row(t.type, t.data.data(), deq.data(), t.n_elements());
    auto src = st.load(pt.hf_name).to_f32();
    std::vector<float> expect(src.size());
    if (pt.permute_heads) gguf::permute_qk_rows(src.data(), expect.data(), pt.shape[0], src.size() / pt.shape[0], pt.permute_heads);
    else expect = src;
    double err = 0, norm = 0;
    for (size_t i = 0; i < deq.size(); ++i) {
      ASSERT_TRUE(std::isfinite(deq[i]));
      err += (deq[i] - expect[i]) * (deq[i] - expect[i]);
      norm += expect[i] * expect[i];
    }
    EXPECT_LT(std::sqrt(err / norm), 0.12) << ggml_type_name(t.type);
  }
}

// Pruning: the kept rows/columns of the output equal the source's, shapes and per-layer
// head-count metadata agree. F32 output so values compare exactly.
TEST(Compress, PruneOneKvGroupPerLayerAndVaryingCounts) {
  SQUISH_REQUIRE_SHARED();
  const std::string model = test::shared("models/coder-28m");
  test::TempDir tmp;
  // Recipe A: drop kv group 1 (q heads 4..7) in every layer. Recipe B: layer l keeps 4 - (l % 3)
  // groups, and layer 5 also drops half its q heads; layer 2 keeps 1000 FFN channels.
  nlohmann::json a{{"name", "drop-group-1"}, {"preset", "F32"}, {"attention", nlohmann::json::object()}};
  for (int l = 0; l < 8; ++l) a["attention"][std::to_string(l)] = {{"kv_groups", {0, 2, 3}}};
  nlohmann::json b{{"name", "varying"}, {"preset", "F32"}, {"attention", nlohmann::json::object()}};
  std::vector<int> kept_kv;
  for (int l = 0; l < 8; ++l) {
    std::vector<int> groups;
    for (int g = 0; g < 4 - (l % 3); ++g) groups.push_back(g);
    b["attention"][std::to_string(l)] = {{"kv_groups", groups}};
    kept_kv.push_back(static_cast<int>(groups.size()));
  }
  b["attention"]["5"] = {{"q_heads", {0, 1, 4, 5}}};  // groups 0 and 1, two heads each
  kept_kv[5] = 2;
  std::vector<int> ch;
  for (int c = 0; c < 1000; ++c) ch.push_back(c * 3 / 2);
  b["ffn_channels"] = {{"2", ch}};
  test::write_file(tmp / "a.json", a.dump());
  test::write_file(tmp / "b.json", b.dump());

  auto st = SafetensorsModel::open(model);
  for (const char* which : {"a", "b"}) {
    SCOPED_TRACE(which);
    const std::string out = tmp / (std::string(which) + ".gguf");
    auto r = test::squish_run(compress_cmd(model, "recipe=" + tmp / (std::string(which) + ".json"), out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto g = gguf::Reader::open(out);
    const bool is_a = which[0] == 'a';
    const auto heads = gguf::per_layer_values(g, "qwen2.attention.head_count", 8, -1);
    const auto kv = gguf::per_layer_values(g, "qwen2.attention.head_count_kv", 8, -1);
    const auto ff = gguf::per_layer_values(g, "qwen2.feed_forward_length", 8, -1);
    EXPECT_EQ(g.get_int("qwen2.attention.key_length", -1), 32);
    EXPECT_EQ(g.get_int("qwen2.attention.value_length", -1), 32);
    for (int l = 0; l < 8; ++l) {
      SCOPED_TRACE(l);
      const int n_kv = is_a ? 3 : kept_kv[l];
      const int n_q = is_a ? 12 : (l == 5 ? 4 : 4 * n_kv);
      const int n_ff = (!is_a && l == 2) ? 1000 : 1536;
      EXPECT_EQ(kv[l], n_kv);
      EXPECT_EQ(heads[l], n_q);
      EXPECT_EQ(ff[l], n_ff);
      const std::string p = "blk." + std::to_string(l) + ".";
      EXPECT_EQ(g.at(p + "attn_q.weight").ne, (std::vector<int64_t>{512, n_q * 32}));
      EXPECT_EQ(g.at(p + "attn_q.bias").ne, (std::vector<int64_t>{n_q * 32}));
      EXPECT_EQ(g.at(p + "attn_k.weight").ne, (std::vector<int64_t>{512, n_kv * 32}));
      EXPECT_EQ(g.at(p + "attn_v.weight").ne, (std::vector<int64_t>{512, n_kv * 32}));
      EXPECT_EQ(g.at(p + "attn_output.weight").ne, (std::vector<int64_t>{n_q * 32, 512}));
      EXPECT_EQ(g.at(p + "ffn_gate.weight").ne, (std::vector<int64_t>{512, n_ff}));
      EXPECT_EQ(g.at(p + "ffn_down.weight").ne, (std::vector<int64_t>{n_ff, 512}));
    }
    // Values: recipe A, layer 3: output k row r of group slot s equals source row of group {0,2,3}[s].
    if (is_a) {
      auto src_k = st.load("model.layers.3.self_attn.k_proj.weight").to_f32();
      auto src_o = st.load("model.layers.3.self_attn.o_proj.weight").to_f32();
      const float* k = reinterpret_cast<const float*>(g.at("blk.3.attn_k.weight").data.data());
      const float* o = reinterpret_cast<const float*>(g.at("blk.3.attn_output.weight").data.data());
      const int groups[3] = {0, 2, 3};
      for (int s = 0; s < 3; ++s)
        for (int r = 0; r < 32; ++r)
          for (int c = 0; c < 512; c += 37) ASSERT_EQ(k[(s * 32 + r) * 512 + c], src_k[(groups[s] * 32 + r) * 512 + c]);
      // o_proj columns: kept q heads are 0-3, 8-15 (groups 0, 2, 3).
      for (int row = 0; row < 512; row += 13)
        for (int j = 0; j < 12 * 32; ++j) {
          const int head = j / 32, src_head = head < 4 ? head : head + 4;
          ASSERT_EQ(o[row * 384 + j], src_o[row * 512 + src_head * 32 + j % 32]);
        }
    } else {
      auto src_down = st.load("model.layers.2.mlp.down_proj.weight").to_f32();
      const float* d = reinterpret_cast<const float*>(g.at("blk.2.ffn_down.weight").data.data());
      for (int row = 0; row < 512; row += 7)
        for (int j = 0; j < 1000; ++j) ASSERT_EQ(d[row * 1000 + j], src_down[row * 1536 + ch[j]]);
    }
  }
}

// Llama q/k: pruning before the rope permutation keeps whole heads, so the pruned model's q
// rows equal llama.cpp's own (unpruned) conversion's rows for the kept heads.
TEST(Compress, LlamaPrunedHeadsMatchReferencePermutation) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  nlohmann::json rec{{"preset", "F32"}, {"attention", {{"1", {{"kv_groups", {1, 3}}}}}}};
  test::write_file(tmp / "r.json", rec.dump());
  auto r = test::squish_run(compress_cmd(test::shared("models/stories260K"), "recipe=" + tmp / "r.json", tmp / "s.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto g = gguf::Reader::open(tmp / "s.gguf");
  auto ref = gguf::Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  // 8 q heads / 4 groups, head_dim 8: groups 1 and 3 keep q heads 2,3,6,7.
  const float* q = reinterpret_cast<const float*>(g.at("blk.1.attn_q.weight").data.data());
  const float* qr = reinterpret_cast<const float*>(ref.at("blk.1.attn_q.weight").data.data());
  const float* k = reinterpret_cast<const float*>(g.at("blk.1.attn_k.weight").data.data());
  const float* kr = reinterpret_cast<const float*>(ref.at("blk.1.attn_k.weight").data.data());
  const int heads[4] = {2, 3, 6, 7}, groups[2] = {1, 3};
  for (int s = 0; s < 4; ++s)
    for (int i = 0; i < 8 * 64; ++i) ASSERT_EQ(q[s * 512 + i], qr[heads[s] * 512 + i]);
  for (int s = 0; s < 2; ++s)
    for (int i = 0; i < 8 * 64; ++i) ASSERT_EQ(k[s * 512 + i], kr[groups[s] * 512 + i]);
  // Unpruned layers are identical to the reference.
  EXPECT_TRUE(same_bytes(g.at("blk.0.attn_q.weight").data, ref.at("blk.0.attn_q.weight").data));
  // Per-layer counts: stock llama.cpp loads this as deci (its llama loader takes one count).
  EXPECT_EQ(g.get_string("general.architecture", ""), "deci");
  EXPECT_EQ(gguf::per_layer_values(g, "deci.attention.head_count", 5, -1), (std::vector<int>{8, 4, 8, 8, 8}));
}

TEST(Compress, SameRecipeSameBytes) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  for (const char* f : {"1.gguf", "2.gguf"}) {
    auto r = test::squish_run(compress_cmd(test::shared("models/coder-28m"), "preset=Q3_K_S", tmp / f) + " --threads 2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  EXPECT_EQ(test::read_file(tmp / "1.gguf"), test::read_file(tmp / "2.gguf"));
}

TEST(Compress, BadRecipesAreRejectedBeforeWriting) {
  SQUISH_REQUIRE_SHARED();
  struct Case {
    const char* name;
    nlohmann::json recipe;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"uneven", {{"preset", "Q8_0"}, {"attention", {{"0", {{"q_heads", {0, 1, 4}}}}}}}, "keep different numbers of q heads"},
      {"bad_group", {{"preset", "Q8_0"}, {"attention", {{"0", {{"kv_groups", {7}}}}}}}, "kv group 7 does not exist"},
      {"bad_layer", {{"preset", "Q8_0"}, {"drop_layers", {9}}}, "layer 9 does not exist"},
      {"unknown_key", {{"preset", "Q8_0"}, {"prune", 1}}, "unknown key 'prune'"},
      {"unknown_type", {{"tensors", {{{"match", "*"}, {"type", "Q7_K"}}}}}, "unknown tensor type 'Q7_K'"},
      {"over_budget", {{"preset", "Q4_K_M"}, {"memory_budget_bytes", 10000000}, {"device", "tiny"}}, "exceeds the memory budget of 10000000 bytes (tiny)"},
      {"no_type", {{"tensors", {{{"match", "*.mlp.*"}, {"type", "Q4_K"}}}}}, "no type for tensor"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    test::write_file(tmp / "r.json", c.recipe.dump());
    auto r = test::squish_run(compress_cmd(test::shared("models/coder-28m"), "recipe=" + tmp / "r.json", tmp / "o.gguf"));
    EXPECT_EQ(r.exit_code, 3) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(tmp / "r.json"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(tmp / "o.gguf"));
  }
}

// Mixed rules: most specific match wins; dropping a layer renumbers the rest.
TEST(Compress, RulesAndDroppedLayers) {
  SQUISH_REQUIRE_SHARED();
  nlohmann::json rec{{"name", "mix"},
                     {"tensors", {{{"match", "*.weight"}, {"type", "Q4_K"}, {"reason", "base"}},
                                  {{"match", "model.layers.*.mlp.down_proj.weight"}, {"type", "Q6_K"}, {"reason", "down is sensitive"}},
                                  {{"match", "model.layers.7.mlp.down_proj.weight"}, {"type", "Q8_0"}, {"reason", "last layer"}}}},
                     {"drop_layers", {3}}};
  auto plan = recipe::resolve(recipe::CompressionRecipe::from_json(rec, "test"), test::shared("models/coder-28m"));
  ASSERT_EQ(plan.layers.size(), 7u);
  EXPECT_EQ(plan.layers[3].src_layer, 4);
  auto type_of = [&](const std::string& hf) { return plan.find_hf(hf)->type; };
  EXPECT_EQ(type_of("model.layers.0.mlp.up_proj.weight"), GGMLType::Q4_K);
  EXPECT_EQ(type_of("model.layers.0.mlp.down_proj.weight"), GGMLType::Q6_K);
  EXPECT_EQ(type_of("model.layers.7.mlp.down_proj.weight"), GGMLType::Q8_0);
  EXPECT_EQ(plan.find_hf("model.layers.7.mlp.down_proj.weight")->gguf_name, "blk.6.ffn_down.weight");
  EXPECT_EQ(plan.find_hf("model.layers.7.mlp.down_proj.weight")->reason, "last layer");
  EXPECT_EQ(plan.find_hf("model.layers.3.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(type_of("model.layers.0.input_layernorm.weight"), GGMLType::F32);
}
