#pragma once
// Minimal Unicode support for the tokenizer: UTF-8 decoding/encoding and the three
// character classes the pre-tokenizer regexes use (\p{L}, \p{N}, \s).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace squish::unicode {

enum Flag : uint8_t {
  kLetter = 1,      // general category L* (\p{L})
  kNumber = 2,      // general category N* (\p{N})
  kWhitespace = 4,  // White_Space property (\s)
};

struct CodepointRange {
  uint32_t first, last;
  uint8_t flags;
};
// Generated table (unicode_tables.cpp): sorted, disjoint ranges of code points with non-zero flags.
extern const CodepointRange kCodepointRanges[];
extern const size_t kCodepointRangeCount;

// Flags of a code point (0 for anything else: punctuation, symbols, controls, unassigned).
uint8_t flags(uint32_t cp);

// Stands for a byte that is not part of valid UTF-8; it has no flags (treated as "other").
constexpr uint32_t kInvalid = 0xFFFFFFFFu;

// Decodes one code point at s[pos]; sets `len` to the bytes consumed (>= 1). Malformed
// sequences (bad lead/continuation byte, overlong form, surrogate, > U+10FFFF, truncated)
// yield kInvalid with len = 1, so every byte of the input is accounted for.
uint32_t decode_utf8(std::string_view s, size_t pos, size_t& len);

// Appends the UTF-8 encoding of cp (cp must be <= 0x10FFFF).
void append_utf8(std::string& out, uint32_t cp);

}  // namespace squish::unicode
