// tokenizer.json -> GGUF tokenizer metadata has one conversion, Vocab. For each shipped and
// shared model: its metadata equals llama.cpp's reference GGUF; written to a GGUF (by hand and
// by the compress stage) and read back as infer reads it, the tokenizer gives exactly the
// Hugging Face ids of the shared texts.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <span>

#include "core/gguf/gguf.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/arch/hf_config.hpp"
#include "core/model/perplexity.hpp"
#include "core/base/error.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "tests/test_util.hpp"

using namespace squish;

namespace {

struct Case {
  const char* name;
  std::string dir;  // HF model folder
  std::string ref;  // llama.cpp's GGUF of the model
  const char* text, *ids;
  bool add_special;  // how the reference ids were made (stories260K: add_special_tokens=False)
};

std::vector<Case> cases() {
  return {
      {"coder-28m", test::shared("models/coder-28m"), test::shared("reference/coder-28m-Q4_K_M.gguf"),
       "code-humaneval.txt", "coder-28m.code-humaneval.ids", true},
      {"stories260K", test::shared("models/stories260K"), test::shared("reference/stories260K/stories260K-f32.gguf"),
       "TinyStories-valid.sample.txt", "stories260K.TinyStories-valid.sample.ids", false},
      {"stories260K (bundled)", test::source_dir() + "/models/stories260K",
       test::shared("reference/stories260K/stories260K-f32.gguf"), "TinyStories-valid.sample.txt",
       "stories260K.TinyStories-valid.sample.ids", false},
  };
}

std::vector<gguf::KeyValue> vocab_metadata(const Case& c) {
  const ModelConfig cfg = ModelConfig::load(c.dir);
  return Vocab::from_tokenizer_json(c.dir + "/tokenizer.json", cfg.vocab_size).gguf_metadata();
}

std::vector<gguf::KeyValue> tokenizer_keys(const std::vector<gguf::KeyValue>& kv) {
  std::vector<gguf::KeyValue> out;
  for (const auto& p : kv)
    if (p.first.rfind("tokenizer.", 0) == 0) out.push_back(p);
  return out;
}

void expect_same(const std::vector<gguf::KeyValue>& mine, const std::vector<gguf::KeyValue>& want) {
  ASSERT_EQ(mine.size(), want.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i].first, want[i].first) << i;
    EXPECT_TRUE(mine[i].second == want[i].second)
        << mine[i].first << ": " << mine[i].second.to_string() << " vs " << want[i].second.to_string();
  }
}

}  // namespace

// compress -> GGUF -> the infer stage's tokenizer (Vocab::from_gguf): the reference ids, and the
// file's tokenizer keys are the conversion's.
TEST(TokenizerRoundTrip, CompressedGgufEncodesReferenceIds) {
  SQUISH_REQUIRE_SHARED();
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    const auto run = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set preset=Q8_0 --set output={}",
                                                  test::source_dir(), c.dir, tmp / "m.gguf"));
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const gguf::Reader r = gguf::Reader::open(tmp / "m.gguf");
    expect_same(tokenizer_keys(r.metadata()), vocab_metadata(c));
    const Tokenizer tok(Vocab::from_gguf(r));
    const std::string text = test::read_file(test::shared(std::string("data/") + c.text));
    const std::vector<int32_t> want = read_token_ids(test::shared(std::string("reference/tokens/") + c.ids));
    const std::vector<int32_t> got = tok.encode(text, c.add_special);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at token " << i;
  }
}

// coder-28m: llama.cpp's own HF conversion, every tokenizer key in order. stories260K: the
// reference comes from llama.cpp's llama2c converter, which orders keys differently and writes
// -1 for "no separator / padding" (the HF model has none; we leave them out), and no add_bos /
// add_eos (we write tokenizer_config.json's, which are llama.cpp's SPM defaults).
TEST(TokenizerRoundTrip, MetadataMatchesLlamaCppReference) {
  SQUISH_REQUIRE_SHARED();
  const std::vector<Case> all = cases();
  expect_same(vocab_metadata(all[0]), tokenizer_keys(gguf::Reader::open(all[0].ref).metadata()));
  for (const Case& c : {all[1], all[2]}) {
    SCOPED_TRACE(c.name);
    const auto mine = vocab_metadata(c);
    std::map<std::string, const gguf::Value*> by_key;
    for (const auto& [k, v] : mine) by_key[k] = &v;
    const gguf::Reader ref = gguf::Reader::open(c.ref);
    size_t matched = 0;
    for (const auto& [k, v] : tokenizer_keys(ref.metadata())) {
      const auto it = by_key.find(k);
      if (v.is_integer() && v.as_uint() == 0xFFFFFFFFu) {
        EXPECT_EQ(it, by_key.end()) << k << " is 'none' in the reference";
        continue;
      }
      ASSERT_NE(it, by_key.end()) << k << " not produced";
      EXPECT_TRUE(*it->second == v) << k << ": " << it->second->to_string() << " vs " << v.to_string();
      by_key.erase(it);
      ++matched;
    }
    EXPECT_EQ(matched, 7u);  // model tokens scores token_type unknown bos eos
    ASSERT_EQ(by_key.size(), 2u);
    EXPECT_TRUE(*by_key.at("tokenizer.ggml.add_bos_token") == gguf::Value(true));
    EXPECT_TRUE(*by_key.at("tokenizer.ggml.add_eos_token") == gguf::Value(false));
  }
}

// Metadata -> GGUF file (one tiny tensor) -> Vocab::from_gguf -> Tokenizer: the reference ids.
TEST(TokenizerRoundTrip, GgufFileEncodesReferenceIds) {
  SQUISH_REQUIRE_SHARED();
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const ModelConfig cfg = ModelConfig::load(c.dir);
    const Vocab json_vocab = Vocab::from_tokenizer_json(c.dir + "/tokenizer.json", cfg.vocab_size);
    test::TempDir tmp;
    const std::string path = tmp / "tok.gguf";
    {
      std::vector<gguf::KeyValue> kv = {{"general.architecture", cfg.arch}};
      const auto tk = json_vocab.gguf_metadata();
      kv.insert(kv.end(), tk.begin(), tk.end());
      gguf::Writer w(path, kv, {{"x", {4}, GGMLType::F32}});
      const float x[4] = {1, 2, 3, 4};
      w.write_tensor("x", std::as_bytes(std::span(x)));
      w.commit();
    }
    const gguf::Reader r = gguf::Reader::open(path);
    const Vocab v = Vocab::from_gguf(r);
    EXPECT_EQ(v.tokens, json_vocab.tokens);
    EXPECT_EQ(v.token_types, json_vocab.token_types);
    EXPECT_EQ(v.scores, json_vocab.scores);
    EXPECT_EQ(v.merges, json_vocab.merges);
    EXPECT_EQ(v.pre, json_vocab.pre);
    EXPECT_EQ(std::vector<int32_t>({v.bos, v.eos, v.unk, v.sep, v.pad}),
              std::vector<int32_t>({json_vocab.bos, json_vocab.eos, json_vocab.unk, json_vocab.sep, json_vocab.pad}));
    EXPECT_EQ(v.add_bos, json_vocab.add_bos);
    EXPECT_EQ(v.add_eos, json_vocab.add_eos);
    expect_same(v.gguf_metadata(), json_vocab.gguf_metadata());  // read back, written again: the same

    const Tokenizer tok(v);
    const std::string text = test::read_file(test::shared(std::string("data/") + c.text));
    const std::vector<int32_t> want = read_token_ids(test::shared(std::string("reference/tokens/") + c.ids));
    const std::vector<int32_t> got = tok.encode(text, c.add_special);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at token " << i;
    EXPECT_TRUE(tok.decode(got) == text);
  }
}

// config.json's vocab_size is the vocabulary size: ids beyond it are an input error naming the
// file, and a larger size pads with [PAD<i>] (SPM: score -1000).
TEST(TokenizerRoundTrip, VocabSizeFromConfig) {
  SQUISH_REQUIRE_SHARED();
  const std::string path = test::shared("models/stories260K/tokenizer.json");
  try {
    Vocab::from_tokenizer_json(path, 500);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    EXPECT_EQ(std::string(e.what()).rfind(path + ": token id ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("outside vocab_size 500"), std::string::npos) << e.what();
  }
  const Vocab v = Vocab::from_tokenizer_json(path, 520);
  ASSERT_EQ(v.n_vocab(), 520);
  EXPECT_EQ(v.tokens[515], "[PAD515]");
  EXPECT_EQ(v.type(515), TokenType::Unused);
  EXPECT_EQ(v.scores[515], -1000.0f);
  EXPECT_EQ(Vocab::from_tokenizer_json(path).n_vocab(), 512);  // 0: the tokenizer's own size
}
