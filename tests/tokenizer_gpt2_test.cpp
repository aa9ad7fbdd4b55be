// The GPT-2 byte-level pre-tokenizer ("gpt-2"; HF ByteLevel with use_regex=true), end to end:
// the hand-coded matcher on tricky strings (expected splits derived by hand from the regex
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ : at each position
// the first alternative that matches wins, each quantifier greedy; during development they and
// 100k random strings were also checked against Python `regex`), then a small synthetic
// GPT-2-style tokenizer.json converted, written to a GGUF, read back, encoded and decoded.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <span>

#include "core/gguf/gguf.hpp"
#include "core/base/error.hpp"
#include "core/tokenizer/pretokenize.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "core/tokenizer/unicode.hpp"
#include "tests/test_util.hpp"

using namespace squish;
using Pieces = std::vector<std::string>;
using json = nlohmann::json;

namespace {

Pieces split(std::string_view s) {
  Pieces out;
  for (std::string_view p : pretokenize(s, PreTokenizer::Gpt2)) out.emplace_back(p);
  return out;
}

}  // namespace

TEST(Gpt2Pretokenize, ContractionsAreLowerCaseOnly) {
  // "'RE" is no contraction: the apostrophe is punctuation, the letters a word. A space before
  // an apostrophe takes it (" ?[^\s\p{L}\p{N}]+" is tried at the space), so " 'sup" keeps no "'s".
  EXPECT_EQ(split("I'm he's they'RE we've it'll I'd 'sup don't"),
            (Pieces{"I", "'m", " he", "'s", " they", "'", "RE", " we", "'ve", " it", "'ll", " I", "'d", " '", "sup",
                    " don", "'t"}));
  EXPECT_EQ(split("x''s 'll've"), (Pieces{"x", "''", "s", " '", "ll", "'ve"}));
}

TEST(Gpt2Pretokenize, DigitRunsAreOnePiece) {
  EXPECT_EQ(split("2024-01-02 3.14159 x1000000"),
            (Pieces{"2024", "-", "01", "-", "02", " 3", ".", "14159", " x", "1000000"}));
  EXPECT_EQ(split("abc123def 123abc"), (Pieces{"abc", "123", "def", " 123", "abc"}));
  EXPECT_EQ(split(" \u0661\u0662\u0663"), (Pieces{" \u0661\u0662\u0663"}));  // Arabic-Indic digits are \p{N}
}

TEST(Gpt2Pretokenize, SpacesBeforePunctuation) {
  // One space leads the next piece whatever its class; of a longer run, all but the last
  // space stand alone.
  EXPECT_EQ(split("Hello , world !  ?"), (Pieces{"Hello", " ,", " world", " !", " ", " ?"}));
  EXPECT_EQ(split("a...b (x)"), (Pieces{"a", "...", "b", " (", "x", ")"}));
}

TEST(Gpt2Pretokenize, TrailingAndLeadingSpaces) {
  EXPECT_EQ(split("end   "), (Pieces{"end", "   "}));
  EXPECT_EQ(split("end \t"), (Pieces{"end", " \t"}));
  EXPECT_EQ(split("a "), (Pieces{"a", " "}));
  EXPECT_EQ(split("   lead"), (Pieces{"  ", " lead"}));
  EXPECT_EQ(split(" "), (Pieces{" "}));
}

TEST(Gpt2Pretokenize, NewlinesAndTabs) {
  // Unlike Qwen2 / Llama 3, no alternative joins newlines to punctuation or a tab to a word.
  EXPECT_EQ(split("a\nb"), (Pieces{"a", "\n", "b"}));
  EXPECT_EQ(split("a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(split("x;\n    return"), (Pieces{"x", ";", "\n   ", " return"}));
  EXPECT_EQ(split("line\r\n"), (Pieces{"line", "\r\n"}));
  EXPECT_EQ(split("tab\tx"), (Pieces{"tab", "\t", "x"}));
  EXPECT_EQ(split("a \n b"), (Pieces{"a", " \n", " b"}));
  // NO-BREAK SPACE is whitespace but not ' ': it does not lead a word.
  EXPECT_EQ(split("a\u00a0b"), (Pieces{"a", "\u00a0", "b"}));
}

TEST(Gpt2Pretokenize, NonLatinLettersAndSymbols) {
  EXPECT_EQ(split("\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u4e2d\u6587 na\u00efve"),
            (Pieces{"\u041f\u0440\u0438\u0432\u0435\u0442", ",", " \u043c\u0438\u0440", "!", " \u4e2d\u6587",
                    " na\u00efve"}));
  // A combining mark (Mn) is not \p{L}: it is punctuation-like "other".
  EXPECT_EQ(split("cafe\u0301s"), (Pieces{"cafe", "\u0301", "s"}));
  EXPECT_EQ(split("ok\U0001F44D! \U0001F642"), (Pieces{"ok", "\U0001F44D!", " \U0001F642"}));
  EXPECT_EQ(split("a\xFF\xFE b"), (Pieces{"a", "\xFF\xFE", " b"}));  // invalid UTF-8 bytes are "other"
}

namespace {

// GPT-2's byte-to-unicode alphabet: the character byte b stands for.
std::string byte_char(uint32_t b) {
  uint32_t next = 256;
  for (uint32_t x = 0; x < 256; ++x) {
    const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE);
    const uint32_t cp = printable ? x : next++;
    if (x == b) {
      std::string s;
      unicode::append_utf8(s, cp);
      return s;
    }
  }
  return {};
}

// A GPT-2-style model folder: token i < 256 is byte i; merges "h e", "Ġ t", "Ġt he", "' s",
// "1 2"; <|endoftext|> (special) at 261; config.json's vocab_size 264 pads two ids.
void write_gpt2_model(const test::TempDir& dir, const json& pre_tokenizer) {
  json vocab = json::object();
  for (uint32_t b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::string G = byte_char(' ');
  vocab["he"] = 256;
  vocab[G + "t"] = 257;
  vocab[G + "the"] = 258;
  vocab["'s"] = 259;
  vocab["12"] = 260;
  json tj = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 261}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", {"h e", G + " t", G + "t he", "' s", "1 2"}}}},
  };
  test::write_file(dir / "tokenizer.json", tj.dump());
  test::write_file(dir / "tokenizer_config.json",
                   json{{"bos_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"}, {"chat_template", "{{ m }}"}}.dump());
  test::write_file(dir / "config.json", json{{"vocab_size", 264}}.dump());
}

const json kByteLevelWithRegex = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};

std::vector<gguf::KeyValue> with_pre(std::vector<gguf::KeyValue> kv, const std::string& pre) {
  for (auto& [k, v] : kv)
    if (k == "tokenizer.ggml.pre") v = pre;
  return kv;
}

void write_gguf(const std::string& path, const std::vector<gguf::KeyValue>& tokenizer_kv) {
  std::vector<gguf::KeyValue> kv = {{"general.architecture", "gpt2"}};
  kv.insert(kv.end(), tokenizer_kv.begin(), tokenizer_kv.end());
  gguf::Writer w(path, kv, {});
  w.commit();
}

}  // namespace

TEST(Gpt2Tokenizer, SyntheticTokenizerJsonThroughGguf) {
  test::TempDir dir;
  write_gpt2_model(dir, kByteLevelWithRegex);
  const Vocab v = Vocab::from_tokenizer_json(dir / "tokenizer.json", 264);
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "gpt-2");
  ASSERT_EQ(v.n_vocab(), 264);
  EXPECT_EQ(v.tokens[262], "[PAD262]");
  EXPECT_EQ(v.type(263), TokenType::Unused);
  EXPECT_EQ(v.type(261), TokenType::Control);
  EXPECT_EQ(v.bos, 261);
  EXPECT_EQ(v.eos, 261);
  EXPECT_FALSE(v.add_bos);  // no template, no tokenizer_config flag
  EXPECT_FALSE(v.has_add_eos);
  EXPECT_EQ(v.chat_template, "{{ m }}");

  // The metadata, in the converter's order.
  const std::vector<gguf::KeyValue> kv = v.gguf_metadata();
  std::vector<std::string> keys;
  for (const auto& p : kv) keys.push_back(p.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                                            "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                                            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
                                            "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"}));
  EXPECT_TRUE(kv[1].second == gguf::Value("gpt-2"));

  // Through a GGUF file and back.
  write_gguf(dir / "t.gguf", kv);
  const gguf::Reader r = gguf::Reader::open(dir / "t.gguf");
  const Vocab g = Vocab::from_gguf(r);
  EXPECT_EQ(g.pre, "gpt-2");
  EXPECT_EQ(g.tokens, v.tokens);
  EXPECT_EQ(g.merges, v.merges);
  EXPECT_EQ(g.chat_template, v.chat_template);
  const Tokenizer tok(g);
  // "the" -> t|he (no "t he" merge); " cat" has no merges; "'s" and " 12" -> "1 2"; " the" ->
  // Ġ t h e -> Ġ t he -> Ġt he -> Ġthe; the special token is matched in the text.
  const std::string text = "the cat's 12 the<|endoftext|>";
  const std::vector<int32_t> ids = tok.encode(text, /*add_special=*/true);
  EXPECT_EQ(ids, (std::vector<int32_t>{'t', 256, ' ', 'c', 'a', 't', 259, ' ', 260, 258, 261}));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.decode(ids, /*render_special=*/false), "the cat's 12 the");
  // Newlines and tabs are their own pieces; every byte string round-trips.
  EXPECT_EQ(tok.encode("a\n\nb", false), (std::vector<int32_t>{'a', '\n', '\n', 'b'}));
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  EXPECT_EQ(tok.decode(tok.encode(bytes, false)), bytes);
  // The same vocabulary straight from tokenizer.json tokenizes the same.
  EXPECT_EQ(Tokenizer(v).encode(text, true), ids);
}

TEST(Gpt2Tokenizer, SplitByTheGpt2RegexIsGpt2Too) {
  test::TempDir dir;
  const json split = {{"type", "Split"},
                      {"pattern", {{"Regex", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}},
                      {"behavior", "Isolated"},
                      {"invert", false}};
  json byte_level = kByteLevelWithRegex;
  byte_level["use_regex"] = false;
  write_gpt2_model(dir, {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}});
  EXPECT_EQ(Vocab::from_tokenizer_json(dir / "tokenizer.json", 264).pre, "gpt-2");
  // Two splitting regexes (Split, then ByteLevel's own) are not a pre-tokenizer we implement.
  write_gpt2_model(dir, {{"type", "Sequence"}, {"pretokenizers", {split, kByteLevelWithRegex}}});
  try {
    Vocab::from_tokenizer_json(dir / "tokenizer.json", 264);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    EXPECT_EQ(std::string(e.what()).rfind(dir / "tokenizer.json", 0), 0u) << e.what();
  }
}

TEST(Gpt2Tokenizer, LlamaCppPreNamesWithTheGpt2Regex) {
  test::TempDir dir;
  write_gpt2_model(dir, kByteLevelWithRegex);
  const auto kv = Vocab::from_tokenizer_json(dir / "tokenizer.json", 264).gguf_metadata();
  // llama.cpp splits these with the GPT-2 regex as well; "default" is a different cascade.
  for (const char* name : {"gpt-2", "phi-2", "olmo", "mpt"}) {
    SCOPED_TRACE(name);
    write_gguf(dir / "t.gguf", with_pre(kv, name));
    EXPECT_EQ(Vocab::from_gguf(gguf::Reader::open(dir / "t.gguf")).pre, "gpt-2");
  }
  write_gguf(dir / "t.gguf", with_pre(kv, "default"));
  try {
    Vocab::from_gguf(gguf::Reader::open(dir / "t.gguf"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    EXPECT_NE(std::string(e.what()).find("unsupported tokenizer.ggml.pre 'default'"), std::string::npos) << e.what();
  }
  // validate() accepts "gpt-2" and still refuses names it does not implement.
  Vocab v = Vocab::from_tokenizer_json(dir / "tokenizer.json", 264);
  v.validate("ok");
  v.pre = "starcoder";
  EXPECT_THROW(v.validate("bad"), Error);
}
