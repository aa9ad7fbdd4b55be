// The hand-coded pre-tokenizer regex matchers on tricky inputs. Expected splits are what a real
// backtracking regex engine (Python `regex`, the patterns verbatim from tokenizer.json) returns;
// during development the matcher was also fuzzed against it on 100k random strings.
#include <gtest/gtest.h>

#include <random>

#include "core/tokenizer/pretokenize.hpp"
#include "core/tokenizer/unicode.hpp"

using namespace squish;
using Pieces = std::vector<std::string>;

namespace {

Pieces split(std::string_view s, PreTokenizer kind = PreTokenizer::Qwen2) {
  Pieces out;
  for (std::string_view p : pretokenize(s, kind)) out.emplace_back(p);
  return out;
}

}  // namespace

TEST(Pretokenize, Contractions) {
  EXPECT_EQ(split("I'm he's they'RE we'VE it'LL I'D 'Sup"),
            (Pieces{"I", "'m", " he", "'s", " they", "'RE", " we", "'VE", " it", "'LL", " I", "'D", " '", "Sup"}));
  EXPECT_EQ(split("don't"), (Pieces{"don", "'t"}));
}

TEST(Pretokenize, DigitsOneAtATimeOrInThrees) {
  EXPECT_EQ(split("2024-01-02 3.14159"), (Pieces{"2", "0", "2", "4", "-", "0", "1", "-", "0", "2", " ", "3", ".",
                                                  "1", "4", "1", "5", "9"}));
  EXPECT_EQ(split("2024-01-02 3.14159", PreTokenizer::Llama3),
            (Pieces{"202", "4", "-", "01", "-", "02", " ", "3", ".", "141", "59"}));
  // Arabic-Indic digits are \p{N} too.
  EXPECT_EQ(split(" \u0661\u0662\u0663", PreTokenizer::Llama3), (Pieces{" ", "\u0661\u0662\u0663"}));
}

TEST(Pretokenize, NewlinesAndSpaces) {
  EXPECT_EQ(split("x = 12345;\n\n    return y\r\n"),
            (Pieces{"x", " =", " ", "1", "2", "3", "4", "5", ";\n\n", "   ", " return", " y", "\r\n"}));
  EXPECT_EQ(split("a   b\t\tc  \n  d"), (Pieces{"a", "  ", " b", "\t", "\tc", "  \n", " ", " d"}));
  EXPECT_EQ(split("   leading and trailing   "), (Pieces{"  ", " leading", " and", " trailing", "   "}));
  EXPECT_EQ(split("foo()\n\n\nbar"), (Pieces{"foo", "()\n\n\n", "bar"}));
  EXPECT_EQ(split("$$$ ...!!!\n"), (Pieces{"$$$", " ...!!!\n"}));
  // NO-BREAK SPACE is whitespace, and may lead a word like a space does.
  EXPECT_EQ(split("tab\tx \u00a0nbsp"), (Pieces{"tab", "\tx", " ", "\u00a0nbsp"}));
}

TEST(Pretokenize, NonAsciiLettersAndEmoji) {
  EXPECT_EQ(split("na\u00efve caf\u00e9 \u2014 \u0395\u03bb\u03bb \u0440\u0443\u0441 \u4e2d\u6587"),
            (Pieces{"na\u00efve", " caf\u00e9", " \u2014", " \u0395\u03bb\u03bb", " \u0440\u0443\u0441", " \u4e2d\u6587"}));
  // Emoji are symbols (not letters): they group like punctuation.
  EXPECT_EQ(split("smile \U0001F642\U0001F642 ok\U0001F44D\U0001F3FD!"),
            (Pieces{"smile", " \U0001F642\U0001F642", " ok", "\U0001F44D\U0001F3FD!"}));
}

TEST(Pretokenize, PiecesAlwaysCoverTheInput) {
  // Any bytes, valid UTF-8 or not: the pieces are non-empty and concatenate to the input.
  std::mt19937 rng(42);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 4 == 0 ? rng() % 256 : " a1'\n\t.\xC3\xA9"[rng() % 10]);
    for (PreTokenizer kind : {PreTokenizer::Qwen2, PreTokenizer::Llama3, PreTokenizer::Gpt2}) {
      std::string joined;
      for (std::string_view p : pretokenize(s, kind)) {
        ASSERT_FALSE(p.empty());
        joined += p;
      }
      ASSERT_EQ(joined, s);
    }
  }
}

TEST(Unicode, ClassesAndDecoding) {
  using namespace squish::unicode;
  EXPECT_EQ(flags('a'), kLetter);
  EXPECT_EQ(flags('7'), kNumber);
  EXPECT_EQ(flags(' '), kWhitespace);
  EXPECT_EQ(flags('_'), 0);
  EXPECT_EQ(flags(0x1C), 0);  // not White_Space (Python's isspace() would say so)
  EXPECT_EQ(flags(0x3000), kWhitespace);
  EXPECT_EQ(flags(0x2167), kNumber);   // ROMAN NUMERAL EIGHT (Nl)
  EXPECT_EQ(flags(0x10400), kLetter);  // DESERET CAPITAL LONG I, outside the BMP
  EXPECT_EQ(flags(0x1F642), 0);        // emoji: So
  size_t len;
  EXPECT_EQ(decode_utf8("\xF0\x9F\x99\x82", 0, len), 0x1F642u);
  EXPECT_EQ(len, 4u);
  EXPECT_EQ(decode_utf8("\xC0\xAF", 0, len), kInvalid);  // overlong '/'
  EXPECT_EQ(len, 1u);
  EXPECT_EQ(decode_utf8("\xED\xA0\x80", 0, len), kInvalid);  // surrogate
  EXPECT_EQ(decode_utf8("\xE2\x82", 0, len), kInvalid);      // truncated
  std::string s;
  append_utf8(s, 0x1F642);
  EXPECT_EQ(s, "\xF0\x9F\x99\x82");
}
