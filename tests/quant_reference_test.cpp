// Byte-exactness of Squish's quantizers against stock llama.cpp: every tensor of the reference
// GGUFs made by llama-quantize (without an imatrix, or with the one beside the files where llama.cpp
// used one) is re-quantized from the original safetensors weights and must come out byte for
// byte identical.
#include "core/gguf/gguf.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/safetensors.hpp"
#include "core/quant/quantize.hpp"
#include "test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace squish {
namespace {

// GGUF tensor name -> Hugging Face name (Qwen2 / Llama layouts).
std::optional<std::string> hf_name_of(const std::string& gguf) {
  static const std::map<std::string, std::string> kTop = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  if (auto it = kTop.find(gguf); it != kTop.end()) return it->second;
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm"},       {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},         {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},         {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},          {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  static const std::regex kRe(R"(blk\.(\d+)\.(\w+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(gguf, m, kRe)) return std::nullopt;
  auto it = kLayer.find(m[2].str());
  if (it == kLayer.end()) return std::nullopt;
  return "model.layers." + m[1].str() + "." + it->second + "." + m[3].str();
}

// Llama's GGUF stores attn_q/attn_k rows of each head interleaved ([0, hd/2, 1, hd/2+1, ...])
// where Hugging Face keeps the rotate-half order; returns the HF rows in GGUF order.
std::vector<float> permute_heads(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t n_head) {
  const int64_t hd = rows / n_head;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t r = 0; r < hd; ++r) {
      const int64_t src = h * hd + (r % 2) * (hd / 2) + r / 2;
      std::memcpy(&out[(h * hd + r) * cols], &w[src * cols], cols * sizeof(float));
    }
  return out;
}

struct Checked {
  std::map<GGMLType, int> tensors;  // per type: how many tensors matched
};

// Quantizes every tensor of `gguf_path` whose type Squish supports from the safetensors weights
// and compares bytes. llama_heads: (n_head, n_head_kv) for Llama's q/k permutation, or none.
// imatrix: llama-quantize's importance matrix, by GGUF tensor name (tensors it lacks, such as the
// token embedding, are quantized without one, as llama-quantize does).
Checked check_gguf(const std::string& gguf_path, const std::string& model_dir,
                   std::optional<std::pair<int, int>> llama_heads, bool scalar = false, const Imatrix* imatrix = nullptr) {
  Checked out;
  const auto reader = gguf::Reader::open(gguf_path);
  const auto model = SafetensorsModel::open(model_dir);
  for (const auto& t : reader.tensors()) {
    SCOPED_TRACE(gguf_path + ": " + t.name + " (" + ggml_type_name(t.type) + ")");
    if (!quantize_supported(t.type)) {
      ADD_FAILURE() << "type not handled by Squish";
      continue;
    }
    auto hf = hf_name_of(t.name);
    if (!hf) {
      ADD_FAILURE() << "no Hugging Face name for this tensor";
      continue;
    }
    if (*hf == "lm_head.weight" && !model.find(*hf)) hf = "model.embed_tokens.weight";  // tied
    const Tensor src = model.load(*hf);
    std::vector<float> w = src.to_f32();
    const int64_t cols = t.ne[0];
    const int64_t rows = t.n_rows();
    if (static_cast<int64_t>(w.size()) != rows * cols || src.shape.back() != cols) {
      ADD_FAILURE() << "shape differs from the safetensors tensor";
      continue;
    }
    if (llama_heads && t.ne.size() == 2 && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight"))) {
      const int n_head = t.name.ends_with("attn_q.weight") ? llama_heads->first : llama_heads->second;
      w = permute_heads(w, rows, cols, n_head);
    }
    const float* importance = nullptr;
    if (imatrix) {
      if (auto it = imatrix->find(t.name); it != imatrix->end()) {
        if (static_cast<int64_t>(it->second.size()) != cols) {
          ADD_FAILURE() << "imatrix entry has " << it->second.size() << " values for " << cols << " columns";
          continue;
        }
        importance = it->second.data();
      }
    }
    std::vector<std::byte> q(ggml_row_size(t.type, cols) * rows);
    if (q.size() != t.data.size()) {
      ADD_FAILURE() << "GGUF holds " << t.data.size() << " bytes, expected " << q.size();
      continue;
    }
    if (scalar) {  // the scalar reference, row by row (the default path may be AVX2)
      for (int64_t r = 0; r < rows; ++r)
        ref::quantize_row(t.type, w.data() + r * cols, q.data() + r * ggml_row_size(t.type, cols), cols, importance);
    } else {
      quantize_rows(t.type, w.data(), q.data(), rows, cols, importance);
    }
    if (std::memcmp(q.data(), t.data.data(), q.size()) != 0) {
      const size_t row_size = ggml_row_size(t.type, cols);
      size_t first = 0, n_diff = 0;
      for (size_t i = q.size(); i-- > 0;)
        if (q[i] != t.data[i]) { first = i; ++n_diff; }
      ADD_FAILURE() << n_diff << " of " << q.size() << " bytes differ; first at byte " << first << " (row "
                    << first / row_size << ", byte " << first % row_size << " of the row)";
      continue;
    }
    ++out.tensors[t.type];
  }
  std::string summary;
  for (const auto& [type, count] : out.tensors) summary += fmt::format(" {}x{}", count, ggml_type_name(type));
  std::printf("  %s: identical:%s\n", gguf_path.c_str(), summary.c_str());
  return out;
}

TEST(QuantReference, CoderQ5_K_M) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/coder-28m-Q5_K_M.gguf"), test::shared("models/coder-28m"), std::nullopt);
  EXPECT_GT(c.tensors[GGMLType::Q5_K], 0);
  EXPECT_GT(c.tensors[GGMLType::Q6_K], 0);
}

TEST(QuantReference, CoderQ4_K_M) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/coder-28m-Q4_K_M.gguf"), test::shared("models/coder-28m"), std::nullopt);
  EXPECT_GT(c.tensors[GGMLType::Q4_K], 0);
  EXPECT_GT(c.tensors[GGMLType::Q6_K], 0);
}

TEST(QuantReference, CoderQ3_K_S) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/coder-28m-Q3_K_S.gguf"), test::shared("models/coder-28m"), std::nullopt);
  EXPECT_GT(c.tensors[GGMLType::Q3_K], 0);
}

TEST(QuantReference, CoderQ2_K) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/coder-28m-Q2_K.gguf"), test::shared("models/coder-28m"), std::nullopt);
  EXPECT_GT(c.tensors[GGMLType::Q2_K], 0);
}

TEST(QuantReference, ScalarReferenceCoderQ3_K_S) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/coder-28m-Q3_K_S.gguf"), test::shared("models/coder-28m"), std::nullopt,
                      /*scalar=*/true);
  EXPECT_GT(c.tensors[GGMLType::Q3_K], 0);
  EXPECT_GT(c.tensors[GGMLType::Q6_K], 0);
}

// The F32 GGUF pins down the name mapping and the q/k row permutation (plain float compare).
TEST(QuantReference, StoriesF32LayoutMatchesPermutedSafetensors) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/stories260K/stories260K-f32.gguf"), test::shared("models/stories260K"),
                      std::pair{8, 4});
  EXPECT_GT(c.tensors[GGMLType::F32], 10);
}

TEST(QuantReference, StoriesQ8_0AndF16) {
  SQUISH_REQUIRE_SHARED();
  auto c = check_gguf(test::shared("reference/stories260K/stories260K-q8_0-ffndown_f16.gguf"),
                      test::shared("models/stories260K"), std::pair{8, 4});
  EXPECT_GT(c.tensors[GGMLType::Q8_0], 0);
  EXPECT_GT(c.tensors[GGMLType::F16], 0);
}

// llama.cpp's i-quants of tiny-iq (a random Llama: 4 q / 2 kv heads), made by llama-quantize
// --pure with tiny-iq/imatrix.dat: every tensor of the one type, the token embedding included
// (which the imatrix has no entry for).
// `scalar`: the scalar references instead of this CPU's SIMD path.
Checked check_tiny_iq(const char* file, bool scalar) {
  const Imatrix im = read_imatrix(test::shared("reference/tiny-iq/imatrix.dat"));
  return check_gguf(test::shared(std::string("reference/tiny-iq/") + file), test::shared("reference/tiny-iq"), std::pair{4, 2}, scalar, &im);
}

// Every quantized tensor of each pure file identical, through the scalar references and this
// CPU's SIMD path. The token embedding has no imatrix entry: the IQ2_XXS, IQ2_XS and IQ1_S files
// (which need one) hold it as Q8_0 (llama-quantize --token-embedding-type q8_0), the rest quantize
// it without. IQ2_S has no pure file: the IQ2_M mixture holds it (compress_test).
struct TinyIqFile {
  GGMLType type;
  int tensors;  // of that type in the file
};
class TinyIq : public ::testing::TestWithParam<TinyIqFile> {};

TEST_P(TinyIq, EveryTensorIdentical) {
  SQUISH_REQUIRE_SHARED();
  const auto [type, tensors] = GetParam();
  const std::string file = fmt::format("tiny-iq-{}-pure.gguf", ggml_type_name(type));
  for (bool scalar : {false, true}) EXPECT_EQ(check_tiny_iq(file.c_str(), scalar).tensors[type], tensors) << (scalar ? "scalar" : "SIMD");
}

INSTANTIATE_TEST_SUITE_P(Types, TinyIq,
                         ::testing::Values(TinyIqFile{GGMLType::IQ4_NL, 15}, TinyIqFile{GGMLType::IQ4_XS, 15}, TinyIqFile{GGMLType::IQ3_S, 15},
                                           TinyIqFile{GGMLType::IQ3_XXS, 15}, TinyIqFile{GGMLType::IQ2_XS, 14},
                                           TinyIqFile{GGMLType::IQ2_XXS, 14}, TinyIqFile{GGMLType::IQ1_M, 15}, TinyIqFile{GGMLType::IQ1_S, 14}),
                         [](const auto& info) { return std::string(ggml_type_name(info.param.type)); });

}  // namespace
}  // namespace squish
