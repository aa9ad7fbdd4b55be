#include "core/tokenizer/unicode.hpp"

#include <algorithm>
#include <array>

namespace squish::unicode {

namespace {

// Almost all text is in the BMP: a 64 KiB table makes the common lookup one load.
struct BmpTable {
  std::array<uint8_t, 0x10000> flags{};
  BmpTable() {
    for (size_t i = 0; i < kCodepointRangeCount; ++i) {
      const CodepointRange& r = kCodepointRanges[i];
      for (uint32_t cp = r.first; cp <= r.last && cp < 0x10000; ++cp) flags[cp] = r.flags;
    }
  }
};

const BmpTable& bmp_table() {
  static const BmpTable table;
  return table;
}

}  // namespace

uint8_t flags(uint32_t cp) {
  if (cp < 0x10000) return bmp_table().flags[cp];
  const CodepointRange* begin = kCodepointRanges;
  const CodepointRange* end = kCodepointRanges + kCodepointRangeCount;
  // First range whose last >= cp.
  const CodepointRange* it =
      std::lower_bound(begin, end, cp, [](const CodepointRange& r, uint32_t c) { return r.last < c; });
  return (it != end && it->first <= cp) ? it->flags : 0;
}

uint32_t decode_utf8(std::string_view s, size_t pos, size_t& len) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  len = 1;
  if (b0 < 0x80) return b0;
  size_t n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalid;  // stray continuation byte or 0xF8..0xFF
  }
  if (pos + n > s.size()) return kInvalid;
  for (size_t i = 1; i < n; ++i) {
    const uint8_t b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  len = n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace squish::unicode
