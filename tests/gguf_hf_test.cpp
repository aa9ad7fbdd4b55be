// HF -> GGUF mapping checked against llama.cpp's own files: tensor names and order, the Llama
// q/k permutation (stories260K F32 reference), Qwen2 left unpermuted (coder-28m F32 biases), and
// the metadata builder reproducing the reference key/values.
#include "core/convert/hf_to_gguf.hpp"
#include "core/io/safetensors.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

using namespace squish;
using namespace squish::gguf;

namespace {

bool same_bits(std::span<const std::byte> gguf_data, const std::vector<float>& v) {
  return gguf_data.size() == v.size() * sizeof(float) && std::memcmp(gguf_data.data(), v.data(), gguf_data.size()) == 0;
}

}  // namespace

TEST(HfToGguf, NameMapping) {
  EXPECT_EQ(hf_to_gguf_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(hf_to_gguf_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(hf_to_gguf_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.12.input_layernorm.weight"), "blk.12.attn_norm.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_EQ(hf_to_gguf_name("model.layers.3.self_attn.o_proj.weight"), "blk.3.attn_output.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.3.self_attn.rotary_emb.inv_freq"), std::nullopt);
  EXPECT_EQ(hf_to_gguf_name("model.layers.x.mlp.down_proj.weight"), std::nullopt);
  EXPECT_EQ(hf_to_gguf_name("model.layers.01.mlp.down_proj.weight"), std::nullopt);
  EXPECT_EQ(gguf_to_hf_name("blk.7.ffn_gate.weight"), "model.layers.7.mlp.gate_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.7.nope.weight"), std::nullopt);
  EXPECT_EQ(gguf_layer_of("blk.11.attn_q.weight"), 11);
  EXPECT_EQ(gguf_layer_of("token_embd.weight"), -1);
  EXPECT_EQ(gguf_ne_from_hf_shape({8192, 512}), (std::vector<int64_t>{512, 8192}));
}

// Every HF tensor of coder-28m maps to a reference tensor with the reversed shape, and back;
// together they are exactly the reference's tensors, and llama.cpp's order sorts them as the
// reference stores them.
TEST(HfToGguf, CoderTensorsMatchReference) {
  SQUISH_REQUIRE_SHARED();
  auto hf = SafetensorsModel::open(test::shared("models/coder-28m"));
  auto ref = Reader::open(test::shared("reference/coder-28m-Q4_K_M.gguf"));
  std::vector<std::string> names;
  for (const auto& e : hf.entries()) {
    auto g = hf_to_gguf_name(e.name);
    ASSERT_TRUE(g) << e.name;
    EXPECT_EQ(gguf_to_hf_name(*g), e.name);
    const TensorInfo* t = ref.find(*g);
    ASSERT_NE(t, nullptr) << *g;
    EXPECT_EQ(t->ne, gguf_ne_from_hf_shape(e.shape)) << *g;
    names.push_back(*g);
  }
  EXPECT_EQ(names.size(), ref.tensors().size());
  std::sort(names.begin(), names.end(), llama_tensor_order_less);
  for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(names[i], ref.tensors()[i].name) << i;
}

// stories260K: llama.cpp's F32 conversion stores attn_q / attn_k permuted; our permutation of the
// HF weights must give exactly its bytes, every other tensor is copied unchanged.
TEST(HfToGguf, LlamaQkPermutationMatchesReference) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/stories260K"));
  auto hf = SafetensorsModel::open(test::shared("models/stories260K"));
  auto ref = Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  int permuted = 0, copied = 0;
  for (const auto& e : hf.entries()) {
    auto g = hf_to_gguf_name(e.name);
    ASSERT_TRUE(g) << e.name;
    const TensorInfo& t = ref.at(*g);
    ASSERT_EQ(t.ne, gguf_ne_from_hf_shape(e.shape));
    auto w = hf.load(e).to_f32();
    const int64_t n_rows = e.shape[0], row_len = e.shape.size() > 1 ? e.shape[1] : 1;
    if (needs_qk_permute(cfg.arch, *g)) {
      int heads = qk_permute_heads(*g, cfg.n_head, cfg.n_head_kv);
      EXPECT_EQ(heads, g->find("attn_q") != std::string::npos ? 8 : 4);
      std::vector<float> p(w.size()), back(w.size());
      permute_qk_rows(w.data(), p.data(), n_rows, row_len, heads);
      EXPECT_TRUE(same_bits(t.data, p)) << *g;
      EXPECT_FALSE(same_bits(t.data, w)) << *g << " (the permutation must matter)";
      unpermute_qk_rows(p.data(), back.data(), n_rows, row_len, heads);
      EXPECT_EQ(back, w);
      ++permuted;
    } else {
      EXPECT_TRUE(same_bits(t.data, w)) << *g;
      ++copied;
    }
  }
  EXPECT_EQ(permuted, 2 * cfg.n_layer);
  EXPECT_EQ(copied, 1 + 1 + 7 * cfg.n_layer);  // embeddings, final norm, 7 other tensors per layer
  // The reference also stores output.weight (llama2c's converter duplicates the tied
  // embeddings); it equals token_embd.
  const auto& out = ref.at("output.weight");
  const auto& emb = ref.at("token_embd.weight");
  EXPECT_TRUE(std::equal(out.data.begin(), out.data.end(), emb.data.begin(), emb.data.end()));
}

// Qwen2 is not permuted: the reference's F32 q/k biases equal the HF biases as they are.
TEST(HfToGguf, Qwen2IsNotPermuted) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/coder-28m"));
  auto hf = SafetensorsModel::open(test::shared("models/coder-28m"));
  auto ref = Reader::open(test::shared("reference/coder-28m-Q4_K_M.gguf"));
  for (int l = 0; l < cfg.n_layer; ++l)
    for (const char* p : {"q", "k"}) {
      std::string g = fmt::format("blk.{}.attn_{}.bias", l, p);
      EXPECT_FALSE(needs_qk_permute(cfg.arch, g));
      const auto& t = ref.at(g);
      ASSERT_EQ(t.type, GGMLType::F32);
      auto b = hf.load(*gguf_to_hf_name(g)).to_f32();
      EXPECT_TRUE(same_bits(t.data, b)) << g;
      std::vector<float> p2(b.size());
      permute_qk_rows(b.data(), p2.data(), int64_t(b.size()), 1, p[0] == 'q' ? cfg.n_head : cfg.n_head_kv);
      EXPECT_FALSE(same_bits(t.data, p2)) << g;
    }
}

TEST(HfToGguf, PermutationRejectsOddHeads) {
  std::vector<float> a(12), b(12);
  EXPECT_THROW(permute_qk_rows(a.data(), b.data(), 12, 1, 5), Error);  // 12 rows into 5 heads
  EXPECT_THROW(permute_qk_rows(a.data(), b.data(), 12, 1, 4), Error);  // head size 3 is odd
  auto m = qk_permutation(8, 2);  // head size 4: rows 0,2,1,3 | 4,6,5,7
  EXPECT_EQ(m, (std::vector<int64_t>{0, 2, 1, 3, 4, 6, 5, 7}));
}

// The builder reproduces llama.cpp's coder-28m metadata exactly: every key, in order, same type
// and value — for each quantization the file type is the only difference.
TEST(HfToGguf, CoderMetadataEqualsReference) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/coder-28m"));
  for (auto [file, ftype] : {std::pair{"Q4_K_M", LlamaFileType::MOSTLY_Q4_K_M}, {"Q5_K_M", LlamaFileType::MOSTLY_Q5_K_M},
                             {"Q3_K_S", LlamaFileType::MOSTLY_Q3_K_S}, {"Q2_K", LlamaFileType::MOSTLY_Q2_K}}) {
    SCOPED_TRACE(file);
    EXPECT_EQ(llama_file_type_from_name(file), ftype);
    auto ref = Reader::open(test::shared(std::string("reference/coder-28m-") + file + ".gguf"));
    MetadataOptions opt;
    opt.file_type = ftype;
    auto mine = build_metadata(cfg, test::shared("models/coder-28m"), opt);
    ASSERT_EQ(mine.size(), ref.metadata().size());
    for (size_t i = 0; i < mine.size(); ++i) {
      EXPECT_EQ(mine[i].first, ref.metadata()[i].first) << i;
      EXPECT_TRUE(mine[i].second == ref.metadata()[i].second)
          << mine[i].first << ": mine " << mine[i].second.to_string() << " vs " << ref.metadata()[i].second.to_string();
    }
  }
}

// stories260K: the reference comes from llama.cpp's llama2c converter; every key it has must be
// reproduced with the same type and value, except the ones listed (with the reason), and every
// extra key we write is listed too.
TEST(HfToGguf, StoriesMetadataMatchesReference) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/stories260K"));
  auto ref = Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  auto mine = build_metadata(cfg, test::shared("models/stories260K"), {});
  const std::map<std::string, std::string> ref_only = {
      {"general.name", "file-specific: convert-llama2c names every model 'llama'; ours is the folder name"},
      {"tokenizer.ggml.seperator_token_id", "convert-llama2c writes -1 for 'no separator'; absent means the same"},
      {"tokenizer.ggml.padding_token_id", "convert-llama2c writes -1 for 'no padding'; the HF model has pad_token null"},
  };
  const std::map<std::string, std::string> mine_only = {
      {"llama.attention.key_length", "always written (head size is not n_embd / n_head after pruning)"},
      {"llama.attention.value_length", "always written, as key_length"},
      {"llama.rope.freq_base", "convert_hf_to_gguf writes rope_theta; llama2c's converter relies on the 10000 default"},
      {"tokenizer.ggml.add_bos_token", "from tokenizer_config.json (true; llama.cpp's SPM default is also true)"},
      {"tokenizer.ggml.add_eos_token", "from tokenizer_config.json (false; llama.cpp's SPM default is also false)"},
  };
  std::map<std::string, const Value*> by_key;
  for (const auto& [k, v] : mine) by_key[k] = &v;
  std::set<std::string> ref_keys;
  for (const auto& [k, v] : ref.metadata()) {
    ref_keys.insert(k);
    if (ref_only.count(k)) continue;
    auto it = by_key.find(k);
    if (it == by_key.end()) {
      ADD_FAILURE() << "missing key " << k;
      continue;
    }
    EXPECT_TRUE(*it->second == v) << k << ": mine " << it->second->to_string() << " vs " << v.to_string();
  }
  for (const auto& [k, v] : mine)
    if (!ref_keys.count(k)) {
      EXPECT_TRUE(mine_only.count(k)) << "unexpected extra key " << k;
    }
  for (const auto& [k, why] : mine_only) EXPECT_TRUE(by_key.count(k) && !ref_keys.count(k)) << k;
  for (const auto& [k, why] : ref_only) EXPECT_TRUE(ref_keys.count(k)) << k;
  EXPECT_EQ(by_key.at("general.name")->as_string(), "stories260K");
  EXPECT_EQ(by_key.at("llama.rope.freq_base")->as_float(), 10000.0);
  EXPECT_TRUE(by_key.at("tokenizer.ggml.add_bos_token")->as_bool());
}

// Per-layer head counts / FFN sizes (after pruning) are written as INT32 arrays when layers
// differ and read back by per_layer_values; uniform values stay scalars.
TEST(HfToGguf, PerLayerHyperParameters) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/coder-28m"));
  MetadataOptions opt;
  opt.name = "pruned";
  opt.head_count = {16, 16, 12, 16, 8, 16, 16, 16};
  opt.head_count_kv = {4, 4, 4, 4, 4, 4, 4, 4};  // uniform -> scalar
  opt.feed_forward_length = {1536, 1024, 1536, 1536, 768, 1536, 1536, 1536};
  opt.file_type = LlamaFileType::MOSTLY_Q8_0;
  auto kv = build_metadata(cfg, test::shared("models/coder-28m"), opt);
  test::TempDir dir;
  std::string path = dir / "p.gguf";
  {
    Writer w(path, kv, {});
    w.commit();
  }
  auto r = Reader::open(path);
  EXPECT_EQ(r.at_key("qwen2.attention.head_count").elem_type(), ValueType::INT32);
  EXPECT_EQ(r.at_key("qwen2.attention.head_count_kv").type(), ValueType::UINT32);
  EXPECT_EQ(per_layer_values(r, "qwen2.attention.head_count", 8, 0), opt.head_count);
  EXPECT_EQ(per_layer_values(r, "qwen2.attention.head_count_kv", 8, 0), opt.head_count_kv);
  EXPECT_EQ(per_layer_values(r, "qwen2.feed_forward_length", 8, 0), opt.feed_forward_length);
  EXPECT_EQ(per_layer_values(r, "qwen2.absent", 8, 7), std::vector<int>(8, 7));
  EXPECT_THROW(per_layer_values(r, "qwen2.attention.head_count", 9, 0), Error);  // wrong layer count
  EXPECT_EQ(r.get_string("general.name", ""), "pruned");
  EXPECT_EQ(r.get_int("general.file_type", -1), 7);

  opt.head_count = {16, 16};  // wrong length is the caller's bug
  EXPECT_THROW(build_metadata(cfg, test::shared("models/coder-28m"), opt), Error);
}

// End to end: metadata from the builder, tensor list from the HF checkpoint in llama.cpp's order,
// types and quantized bytes taken from the reference -> byte-identical to llama-quantize's file.
// (So the compress stage produces llama.cpp's exact file once its quantizers are exact.)
TEST(HfToGguf, CoderFileRebuiltFromHfIsByteIdentical) {
  SQUISH_REQUIRE_SHARED();
  auto cfg = ModelConfig::load(test::shared("models/coder-28m"));
  auto hf = SafetensorsModel::open(test::shared("models/coder-28m"));
  auto ref = Reader::open(test::shared("reference/coder-28m-Q4_K_M.gguf"));
  std::vector<std::string> names;
  for (const auto& e : hf.entries()) names.push_back(*hf_to_gguf_name(e.name));
  std::sort(names.begin(), names.end(), llama_tensor_order_less);
  std::vector<TensorDecl> decls;
  for (const auto& n : names) {
    const auto& e = hf.at(*gguf_to_hf_name(n));
    decls.push_back({n, gguf_ne_from_hf_shape(e.shape), ref.at(n).type});
  }
  MetadataOptions opt;
  opt.file_type = LlamaFileType::MOSTLY_Q4_K_M;
  test::TempDir dir;
  std::string path = dir / "coder-28m-Q4_K_M.gguf";
  {
    Writer w(path, build_metadata(cfg, test::shared("models/coder-28m"), opt), decls);
    for (size_t i = 0; i < decls.size(); ++i) w.write_tensor(i, ref.at(decls[i].name).data);
    w.commit();
  }
  auto a = ref.mapping()->bytes();
  auto b = MappedFile::open(path);
  ASSERT_EQ(b->size(), a.size());
  EXPECT_EQ(std::memcmp(a.data(), b->bytes().data(), a.size()), 0);
}
