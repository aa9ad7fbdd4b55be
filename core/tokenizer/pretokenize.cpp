#include "core/tokenizer/pretokenize.hpp"

#include <cstdint>

#include "core/tokenizer/unicode.hpp"

namespace squish {

namespace {

constexpr uint8_t kCrLf = 8;  // extra class bit beside unicode::Flag: '\r' or '\n'

uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length (in code points) of the contraction (?i:'s|'t|'re|'ve|'m|'ll|'d) at i (GPT-2: lower
// case only), or 0.
size_t match_contraction(const std::vector<uint32_t>& cp, size_t i, bool any_case) {
  const size_t n = cp.size();
  if (cp[i] != '\'' || i + 1 >= n) return 0;
  const auto lower = [&](uint32_t c) { return any_case ? ascii_lower(c) : c; };
  const uint32_t c1 = lower(cp[i + 1]);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= n) return 0;
  const uint32_t c2 = lower(cp[i + 2]);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text, PreTokenizer kind) {
  // Decode once: code points, their classes and byte offsets (off[n] = text.size()).
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<size_t> off;
  cp.reserve(text.size());
  cls.reserve(text.size());
  off.reserve(text.size() + 1);
  for (size_t pos = 0; pos < text.size();) {
    size_t len;
    const uint32_t c = unicode::decode_utf8(text, pos, len);
    uint8_t f = c == unicode::kInvalid ? 0 : unicode::flags(c);
    if (c == '\r' || c == '\n') f |= kCrLf;
    cp.push_back(c);
    cls.push_back(f);
    off.push_back(pos);
    pos += len;
  }
  const size_t n = cp.size();
  off.push_back(text.size());

  const size_t max_digits = kind == PreTokenizer::Llama3 ? 3 : 1;
  const auto is = [&](size_t i, uint8_t f) { return i < n && (cls[i] & f) != 0; };
  // [^\s\p{L}\p{N}]: punctuation, symbols, controls
  const auto other = [&](size_t i) {
    return i < n && (cls[i] & (unicode::kLetter | unicode::kNumber | unicode::kWhitespace)) == 0;
  };

  std::vector<std::string_view> pieces;
  size_t i = 0;
  const auto emit = [&](size_t end) {
    pieces.push_back(text.substr(off[i], off[end] - off[i]));
    i = end;
  };
  if (kind == PreTokenizer::Gpt2) {
    while (i < n) {
      // 1. 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
      if (size_t len = match_contraction(cp, i, false)) {
        emit(i + len);
        continue;
      }
      // 2.-4. " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": a run of one class, optionally led by
      //    one space (the space goes with whatever class follows it)
      const size_t j = (cp[i] == ' ' && i + 1 < n && !is(i + 1, unicode::kWhitespace)) ? i + 1 : i;
      if (j < n && !is(j, unicode::kWhitespace)) {
        const uint8_t c = cls[j] & (unicode::kLetter | unicode::kNumber);
        size_t k = j + 1;
        if (c != 0) {
          while (is(k, c)) ++k;
        } else {
          while (other(k)) ++k;
        }
        emit(k);
        continue;
      }
      // 5. \s+(?!\S): the whole whitespace run at the end of the text, else all but its last
      //    character (which then leads the next piece); 6. \s+: a lone whitespace character
      size_t end = i;
      while (is(end, unicode::kWhitespace)) ++end;
      emit(end == n || end - i == 1 ? end : end - 1);
    }
    return pieces;
  }
  while (i < n) {
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (size_t len = match_contraction(cp, i, true)) {
      emit(i + len);
      continue;
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+ : letters, optionally led by one non-letter/digit/newline char
    if (is(i, unicode::kLetter) ||
        (!is(i, unicode::kLetter | unicode::kNumber | kCrLf) && is(i + 1, unicode::kLetter))) {
      size_t j = i + 1;
      while (is(j, unicode::kLetter)) ++j;
      emit(j);
      continue;
    }
    // 3. \p{N} (Qwen2) or \p{N}{1,3} (Llama 3)
    if (is(i, unicode::kNumber)) {
      size_t j = i + 1;
      while (j - i < max_digits && is(j, unicode::kNumber)) ++j;
      emit(j);
      continue;
    }
    // 4. " ?[^\s\p{L}\p{N}]+[\r\n]*" : a run of punctuation, optionally led by one space
    {
      size_t j = (cp[i] == ' ' && other(i + 1)) ? i + 1 : i;
      if (other(j)) {
        while (other(j)) ++j;
        while (is(j, kCrLf)) ++j;
        emit(j);
        continue;
      }
    }
    // What is left is whitespace (every other class was matched above).
    size_t end = i;  // end of the whitespace run
    size_t last_newline = n;
    while (is(end, unicode::kWhitespace)) {
      if (cls[end] & kCrLf) last_newline = end;
      ++end;
    }
    // 5. \s*[\r\n]+ : backtracks to just after the run's last newline
    if (last_newline != n) {
      emit(last_newline + 1);
      continue;
    }
    // 6. \s+(?!\S) : at the end of the text the whole run; before a non-space, all but the
    //    last whitespace character (which then leads the next word or stands alone)
    if (end == n || end - i >= 2) {
      emit(end == n ? end : end - 1);
      continue;
    }
    // 7. \s+ (a single whitespace char before a non-space)
    emit(end);
  }
  return pieces;
}

}  // namespace squish
