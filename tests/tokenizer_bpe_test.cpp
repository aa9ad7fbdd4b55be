// Byte-level BPE (coder-28m, Qwen2 pre-tokenizer) against Hugging Face `tokenizers` references:
// token ids of code-humaneval, token counts of every data file (REFERENCE.md), exact round trip,
// and the Vocab it builds against the tokenizer.ggml.* metadata llama.cpp wrote.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <sstream>

#include "core/gguf/gguf.hpp"
#include "core/base/error.hpp"
#include "core/model/perplexity.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "tests/test_util.hpp"

using namespace squish;

namespace {

const Tokenizer& coder() {
  static const Tokenizer tok(Vocab::from_tokenizer_json(test::shared("models/coder-28m/tokenizer.json")));
  return tok;
}


std::string data(const std::string& name) { return test::read_file(test::shared("data/" + name)); }

}  // namespace

TEST(TokenizerBpe, HumanEvalIdsMatchHuggingFace) {
  SQUISH_REQUIRE_SHARED();
  const std::vector<int32_t> want = read_token_ids(test::shared("reference/tokens/coder-28m.code-humaneval.ids"));
  ASSERT_EQ(want.size(), 34967u);
  const std::vector<int32_t> got = coder().encode(data("code-humaneval.txt"), /*add_special=*/true);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at token " << i;
}

TEST(TokenizerBpe, TokenCountsMatchReferenceAndRoundTrip) {
  SQUISH_REQUIRE_SHARED();
  const std::pair<const char*, size_t> files[] = {
      {"code-humaneval.txt", 34967}, {"wiki.test.raw", 475650},           {"calib-code.txt", 94263},
      {"calib-prose.txt", 81074},    {"TinyStories-valid.sample.txt", 10366},
  };
  for (const auto& [name, count] : files) {
    const std::string text = data(name);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = coder().encode(text, true);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(ids.size(), count) << name;
    EXPECT_TRUE(coder().decode(ids) == text) << name << ": decode(encode(text)) differs";
    std::printf("%-30s %7zu tokens  %.1f MB/s\n", name, ids.size(), text.size() / s / 1e6);
  }
}

TEST(TokenizerBpe, SpecialTokensAndBytes) {
  SQUISH_REQUIRE_SHARED();
  const Tokenizer& tok = coder();
  EXPECT_EQ(tok.n_vocab(), 8192);
  EXPECT_EQ(tok.eos(), 0);
  EXPECT_FALSE(tok.vocab().add_bos);  // Qwen2: no BOS
  // Special tokens in the text are single ids (HF added-token matching)...
  const std::vector<int32_t> ids = tok.encode("a<|endoftext|><|im_start|>b", true);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], 0);
  EXPECT_EQ(ids[2], 1);
  EXPECT_EQ(tok.decode(ids), "a<|endoftext|><|im_start|>b");
  EXPECT_EQ(tok.decode(ids, /*render_special=*/false), "ab");
  EXPECT_EQ(tok.token_to_piece(0, false), "");
  // ...unless parsing them is off: then they are ordinary text.
  const std::vector<int32_t> plain = tok.encode("<|endoftext|>", false, /*parse_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(tok.decode(plain), "<|endoftext|>");
  // Every byte string round-trips, even invalid UTF-8; a piece may be a partial character.
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  bytes += "\xE2\x82";  // truncated sequence at the end
  const std::vector<int32_t> b = tok.encode(bytes, false);
  EXPECT_EQ(tok.decode(b), bytes);
  std::string joined;
  for (int32_t id : tok.encode("é€🙂", false)) joined += tok.token_to_piece(id);
  EXPECT_EQ(joined, "é€🙂");
  EXPECT_TRUE(tok.encode("", true).empty());
  EXPECT_THROW(tok.token_to_piece(8192), Error);
}

TEST(TokenizerBpe, VocabMatchesLlamaCppGgufMetadata) {
  SQUISH_REQUIRE_SHARED();
  const Vocab mine = Vocab::from_tokenizer_json(test::shared("models/coder-28m/tokenizer.json"));
  const gguf::Reader ref = gguf::Reader::open(test::shared("reference/coder-28m-Q4_K_M.gguf"));
  // Every tokenizer.ggml.* key llama.cpp wrote, with the same value and type.
  const std::vector<gguf::KeyValue> kv = mine.gguf_metadata();
  size_t compared = 0;
  for (const auto& [key, value] : ref.metadata()) {
    if (key.rfind("tokenizer.ggml.", 0) != 0) continue;
    const auto it = std::find_if(kv.begin(), kv.end(), [&k = key](const auto& p) { return p.first == k; });  // clang 14 cannot capture structured bindings
    ASSERT_NE(it, kv.end()) << key << " not produced";
    EXPECT_TRUE(it->second == value) << key << ": " << it->second.to_string() << " vs " << value.to_string();
    ++compared;
  }
  EXPECT_EQ(compared, 9u);  // model pre tokens token_type merges eos bos pad add_bos
  // Read back from the GGUF, the vocabulary tokenizes identically.
  const Vocab from_gguf = Vocab::from_gguf(ref);
  EXPECT_EQ(from_gguf.tokens, mine.tokens);
  EXPECT_EQ(from_gguf.merges, mine.merges);
  EXPECT_EQ(from_gguf.token_types, mine.token_types);
  EXPECT_EQ(from_gguf.pre, "qwen2");
  const Tokenizer tok(from_gguf);
  const std::string text = data("calib-code.txt");
  EXPECT_EQ(tok.encode(text, true), coder().encode(text, true));
}

namespace {

// A tiny byte-level vocabulary: the 256 byte characters, then "ab", "abc" (merge "a b" only).
Vocab tiny_vocab(const std::string& pre) {
  Vocab v;
  v.model = "gpt2";
  v.pre = pre;
  // GPT-2 alphabet: printable Latin-1 maps to itself, the rest to U+0100.. in byte order.
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    v.tokens.push_back(s);
  }
  v.tokens.push_back("ab");
  v.tokens.push_back("abc");
  v.tokens.push_back("<|eot|>");
  v.token_types.assign(v.tokens.size(), static_cast<int32_t>(TokenType::Normal));
  v.token_types.back() = static_cast<int32_t>(TokenType::Control);
  v.merges = {"a b"};
  v.bos = 258;
  v.eos = 258;
  return v;
}

}  // namespace

TEST(TokenizerBpe, IgnoreMergesAndBos) {
  Vocab q = tiny_vocab("qwen2");
  const Tokenizer qt(q);
  EXPECT_EQ(qt.encode("abc", true), (std::vector<int32_t>{256, 'c'}));  // no "ab c" merge
  Vocab l = tiny_vocab("llama-bpe");
  l.ignore_merges = true;  // Llama 3: a whole pre-token in the vocabulary wins
  l.add_bos = true;
  const Tokenizer lt(l);
  // Token i < 256 is byte i's character, so " abd" -> [' ', ab, d].
  EXPECT_EQ(lt.encode("abc abd", true), (std::vector<int32_t>{258, 257, ' ', 256, 'd'}));
  EXPECT_EQ(lt.decode(lt.encode("abc abd<|eot|>", false)), "abc abd<|eot|>");
  // A merge naming a token that is not in the vocabulary is an input error.
  Vocab bad = tiny_vocab("qwen2");
  bad.merges.push_back("x yz");
  EXPECT_THROW(Tokenizer{bad}, Error);
}

TEST(TokenizerBpe, UnsupportedTokenizerJsonIsAnInputError) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir dir;
  std::string json = test::read_file(test::shared("models/coder-28m/tokenizer.json"));
  const std::string from = R"(\p{N}| ?)", to = R"(\p{N}{1,2}| ?)";
  const size_t at = json.find(from);
  ASSERT_NE(at, std::string::npos);
  json.replace(at, from.size(), to);
  test::write_file(dir / "tokenizer.json", json);
  try {
    Vocab::from_tokenizer_json(dir / "tokenizer.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    EXPECT_NE(std::string(e.what()).find("unsupported pre-tokenizer regex"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Vocab::from_tokenizer_json(dir / "missing.json"), Error);
}
