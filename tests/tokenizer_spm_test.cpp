// SentencePiece-style BPE (stories260K, llama2.c's tok512 in Hugging Face form) against the
// Hugging Face `tokenizers` ids of TinyStories-valid.sample, and the vocabulary against the
// tokenizer.ggml.* metadata of llama.cpp's own conversion.
//
// The reference ids were produced without special tokens (HF add_special_tokens=False): the
// file starts with 353 (" once" -> "▁once"), not BOS. With add_special=true our encode puts
// BOS (1) first, as HF's TemplateProcessing "<s> $A" and llama.cpp's add_bos do.
#include <gtest/gtest.h>

#include <sstream>

#include "core/gguf/gguf.hpp"
#include "core/model/perplexity.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "tests/test_util.hpp"

using namespace squish;

namespace {

const Tokenizer& stories() {
  static const Tokenizer tok(Vocab::from_tokenizer_json(test::shared("models/stories260K/tokenizer.json")));
  return tok;
}


}  // namespace

TEST(TokenizerSpm, TinyStoriesIdsMatchHuggingFace) {
  SQUISH_REQUIRE_SHARED();
  const std::vector<int32_t> want = read_token_ids(test::shared("reference/tokens/stories260K.TinyStories-valid.sample.ids"));
  ASSERT_EQ(want.size(), 15536u);
  const std::string text = test::read_file(test::shared("data/TinyStories-valid.sample.txt"));
  const std::vector<int32_t> got = stories().encode(text, /*add_special=*/false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at token " << i;
  // With special tokens: BOS in front, nothing else changes.
  const std::vector<int32_t> with_bos = stories().encode(text, true);
  ASSERT_EQ(with_bos.size(), want.size() + 1);
  EXPECT_EQ(with_bos[0], 1);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), with_bos.begin() + 1));
  // Round trip: the '▁' prefix comes back as one leading space, which decode strips.
  EXPECT_TRUE(stories().decode(got) == text);
  EXPECT_TRUE(stories().decode(with_bos, /*render_special=*/false) == text);
  EXPECT_EQ(stories().decode(with_bos).substr(0, 9), "<s> once ");
}

TEST(TokenizerSpm, RoundTripOtherFilesAndByteFallback) {
  SQUISH_REQUIRE_SHARED();
  const Tokenizer& tok = stories();
  for (const char* name : {"code-humaneval.txt", "calib-prose.txt"}) {
    const std::string text = test::read_file(test::shared(std::string("data/") + name));
    EXPECT_TRUE(tok.decode(tok.encode(text, false)) == text) << name;
  }
  // Characters outside the 512-piece vocabulary become their UTF-8 bytes <0xXX>.
  const std::vector<int32_t> ids = tok.encode("\xE4\xB8\xAD", false);  // "中" (not a piece)
  ASSERT_EQ(ids.size(), 4u);                                           // "▁" + 3 bytes
  EXPECT_EQ(tok.vocab().tokens[static_cast<size_t>(ids[1])], "<0xE4>");
  EXPECT_EQ(tok.vocab().tokens[static_cast<size_t>(ids[3])], "<0xAD>");
  EXPECT_EQ(tok.token_to_piece(ids[1]), "\xE4");
  EXPECT_EQ(tok.decode(ids), "\xE4\xB8\xAD");
  // "€" is a piece of its own: one token after the prefix.
  EXPECT_EQ(tok.encode("\xE2\x82\xAC", false).size(), 2u);
  // Leading and repeated spaces survive (each is its own '▁').
  EXPECT_EQ(tok.decode(tok.encode("  two  spaces ", false)), "  two  spaces ");
  // Special-token text is matched; the '▁' prefix restarts after it (as HF and llama.cpp do).
  const std::vector<int32_t> s = tok.encode("a</s>b", false);
  EXPECT_EQ(tok.decode(s), "a</s> b");
  EXPECT_EQ(tok.token_to_piece(tok.encode("the", false)[0]), " the");  // pieces keep their space
}

TEST(TokenizerSpm, VocabMatchesLlamaCppGgufMetadata) {
  SQUISH_REQUIRE_SHARED();
  const Vocab mine = Vocab::from_tokenizer_json(test::shared("models/stories260K/tokenizer.json"));
  const gguf::Reader ref = gguf::Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  EXPECT_EQ(mine.model, "llama");
  EXPECT_TRUE(mine.add_bos);
  EXPECT_EQ(ref.at_key("tokenizer.ggml.model").as_string(), mine.model);
  EXPECT_EQ(ref.at_key("tokenizer.ggml.tokens").as_strings(), mine.tokens);
  std::vector<float> scores;
  for (double x : ref.at_key("tokenizer.ggml.scores").as_floats()) scores.push_back(static_cast<float>(x));
  EXPECT_EQ(scores, mine.scores);
  std::vector<int32_t> types;
  for (int64_t x : ref.at_key("tokenizer.ggml.token_type").as_ints()) types.push_back(static_cast<int32_t>(x));
  EXPECT_EQ(types, mine.token_types);
  EXPECT_EQ(ref.get_int("tokenizer.ggml.bos_token_id", -1), mine.bos);
  EXPECT_EQ(ref.get_int("tokenizer.ggml.eos_token_id", -1), mine.eos);
  EXPECT_EQ(ref.get_int("tokenizer.ggml.unknown_token_id", -1), mine.unk);
  EXPECT_EQ(mine.pad, -1);  // the reference writes 0xFFFFFFFF, i.e. none
  // The GGUF vocabulary (scores, no merges) tokenizes exactly like the tokenizer.json one.
  const Vocab g = Vocab::from_gguf(ref);
  EXPECT_EQ(g.pad, -1);
  EXPECT_TRUE(g.add_bos);
  const Tokenizer tok(g);
  const std::string text = test::read_file(test::shared("data/TinyStories-valid.sample.txt"));
  EXPECT_EQ(tok.encode(text, true), stories().encode(text, true));
}
