#include "core/tokenizer/tokenizer.hpp"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/base/error.hpp"
#include "core/tokenizer/unicode.hpp"

namespace squish {

namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 '▁'

// GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes stand for themselves, the other 68
// bytes (controls, space, 0x7F..0xA0, 0xAD) map to U+0100.. in byte order, so that every byte
// has a visible, non-space character.
std::array<uint32_t, 256> byte_to_unicode() {
  std::array<uint32_t, 256> map{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[b] = printable ? b : next++;
  }
  return map;
}

std::string byte_level_encode(std::string_view raw) {
  static const std::array<uint32_t, 256> map = byte_to_unicode();
  std::string s;
  s.reserve(raw.size() * 2);
  for (char c : raw) unicode::append_utf8(s, map[static_cast<uint8_t>(c)]);
  return s;
}

}  // namespace

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  const std::string what = "tokenizer vocabulary";
  vocab_.validate(what);
  const int32_t n = vocab_.n_vocab();
  byte_level_ = vocab_.model == "gpt2";
  pre_ = vocab_.pre == "llama-bpe" ? PreTokenizer::Llama3
         : vocab_.pre == "gpt-2"   ? PreTokenizer::Gpt2
                                   : PreTokenizer::Qwen2;
  byte_ids_.fill(-1);

  const auto type = [&](int32_t id) { return vocab_.type(id); };
  for (int32_t id = 0; id < n; ++id) {
    const TokenType t = type(id);
    if (t == TokenType::Normal || (!byte_level_ && t == TokenType::UserDefined))
      piece_to_id_.emplace(vocab_.tokens[static_cast<size_t>(id)], id);
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) {
      if (!vocab_.tokens[static_cast<size_t>(id)].empty()) specials_.emplace_back(vocab_.tokens[static_cast<size_t>(id)], id);
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  // Decoded bytes of every token.
  pieces_.resize(static_cast<size_t>(n));
  if (byte_level_) {
    const std::array<uint32_t, 256> map = byte_to_unicode();
    std::unordered_map<uint32_t, uint8_t> unmap;
    for (uint32_t b = 0; b < 256; ++b) unmap[map[b]] = static_cast<uint8_t>(b);
    for (uint32_t b = 0; b < 256; ++b) {
      std::string s;
      unicode::append_utf8(s, map[b]);
      if (auto it = piece_to_id_.find(s); it != piece_to_id_.end()) byte_ids_[b] = it->second;
    }
    for (int32_t id = 0; id < n; ++id) {
      const std::string& text = vocab_.tokens[static_cast<size_t>(id)];
      std::string& out = pieces_[static_cast<size_t>(id)];
      if (type(id) != TokenType::Normal) {  // added tokens are stored as plain text
        out = text;
        continue;
      }
      for (size_t pos = 0; pos < text.size();) {
        size_t len;
        const uint32_t cp = unicode::decode_utf8(text, pos, len);
        auto it = unmap.find(cp);
        if (it != unmap.end()) {
          out += static_cast<char>(it->second);
        } else {
          out.append(text, pos, len);  // not from the byte alphabet: keep as is
        }
        pos += len;
      }
    }
    // Merges in rank order: "left right".
    merges_.reserve(vocab_.merges.size());
    for (size_t r = 0; r < vocab_.merges.size(); ++r) {
      const std::string& m = vocab_.merges[r];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) fail(ExitCode::InputData, "{}: malformed merge '{}'", what, m);
      const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
      const auto l = piece_to_id_.find(left), rr = piece_to_id_.find(right), lr = piece_to_id_.find(left + right);
      if (l == piece_to_id_.end() || rr == piece_to_id_.end() || lr == piece_to_id_.end())
        fail(ExitCode::InputData, "{}: merge '{}' names a token not in the vocabulary", what, m);
      // The first (lowest-rank) occurrence of a pair wins, as in HF.
      merges_.emplace(pair_key(l->second, rr->second), Merge{static_cast<int32_t>(r), lr->second});
    }
  } else {
    for (int32_t id = 0; id < n; ++id) {
      const std::string& text = vocab_.tokens[static_cast<size_t>(id)];
      std::string& out = pieces_[static_cast<size_t>(id)];
      if (type(id) == TokenType::Byte) {
        unsigned b = 0;
        if (text.size() == 6 && std::sscanf(text.c_str(), "<0x%2X>", &b) == 1) {
          out = std::string(1, static_cast<char>(b));
          if (byte_ids_[b] < 0) byte_ids_[b] = id;
          continue;
        }
      }
      if (type(id) != TokenType::Normal && type(id) != TokenType::UserDefined) {
        out = text;
        continue;
      }
      for (size_t pos = 0; pos < text.size();) {  // '▁' stands for a space
        if (text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0) {
          out += ' ';
          pos += kSpmSpace.size();
        } else {
          out += text[pos++];
        }
      }
    }
    // Every way of writing a piece as two pieces is a merge; better score = lower rank.
    std::vector<std::pair<float, int32_t>> by_score;
    for (const auto& [text, id] : piece_to_id_) by_score.emplace_back(vocab_.scores[static_cast<size_t>(id)], id);
    std::sort(by_score.begin(), by_score.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    spm_split_words_ = true;
    int32_t rank = -1;
    for (size_t i = 0; i < by_score.size(); ++i) {
      if (i == 0 || by_score[i].first != by_score[i - 1].first) ++rank;  // equal scores tie
      const int32_t id = by_score[i].second;
      const std::string& text = vocab_.tokens[static_cast<size_t>(id)];
      if (text.find(kSpmSpace, 1) != std::string::npos) spm_split_words_ = false;
      for (size_t cut = 1; cut < text.size(); ++cut) {
        if ((static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) continue;  // inside a character
        const auto l = piece_to_id_.find(std::string_view(text).substr(0, cut));
        const auto r = piece_to_id_.find(std::string_view(text).substr(cut));
        if (l != piece_to_id_.end() && r != piece_to_id_.end())
          merges_.emplace(pair_key(l->second, r->second), Merge{rank, id});
      }
    }
  }
}

const std::string& Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail(ExitCode::InputData, "token id {} out of range (vocabulary of {})", id, n_vocab());
  return pieces_[static_cast<size_t>(id)];
}

void Tokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  // Initial symbols: bytes (byte-level) or UTF-8 characters (SPM); a doubly linked list in a vector.
  struct Symbol {
    int32_t id;  // -1: character not in the vocabulary (SPM: emitted as byte tokens)
    uint32_t start, len;
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  if (byte_level_) {
    if (vocab_.ignore_merges) {
      if (auto it = piece_to_id_.find(byte_level_encode(word)); it != piece_to_id_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    for (size_t i = 0; i < word.size(); ++i) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(word[i])];
      if (id >= 0) sym.push_back({id, static_cast<uint32_t>(i), 1, 0, 0});  // HF drops bytes with no token
    }
  } else {
    for (size_t pos = 0; pos < word.size();) {
      size_t len;
      unicode::decode_utf8(word, pos, len);
      const auto it = piece_to_id_.find(word.substr(pos, len));
      sym.push_back({it != piece_to_id_.end() ? it->second : -1, static_cast<uint32_t>(pos),
                     static_cast<uint32_t>(len), 0, 0});
      pos += len;
    }
  }
  const int32_t n = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i < n; ++i) sym[static_cast<size_t>(i)].prev = i - 1, sym[static_cast<size_t>(i)].next = i + 1 < n ? i + 1 : -1;

  // Candidate merges of adjacent symbols, best rank first, then leftmost. Entries go stale when
  // a neighbour merges; they are checked when popped (the ids they saw must still be there).
  struct Cand {
    int32_t rank, left, right, left_id, right_id, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  const auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const int32_t a = sym[static_cast<size_t>(l)].id, b = sym[static_cast<size_t>(r)].id;
    if (a < 0 || b < 0) return;
    const auto it = merges_.find(pair_key(a, b));
    if (it != merges_.end()) queue.push({it->second.rank, l, r, a, b, it->second.id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Symbol& l = sym[static_cast<size_t>(c.left)];
    Symbol& r = sym[static_cast<size_t>(c.right)];
    if (l.len == 0 || r.len == 0 || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;
    l.id = c.merged;
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[static_cast<size_t>(r.next)].prev = c.left;
    r.len = 0;  // dead
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }

  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[static_cast<size_t>(i)].next) {
    const Symbol& s = sym[static_cast<size_t>(i)];
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    // Byte fallback (SPM): one <0xXX> per byte if the vocabulary has them all, else <unk>.
    bool all = true;
    for (uint32_t k = 0; k < s.len; ++k) all = all && byte_ids_[static_cast<uint8_t>(word[s.start + k])] >= 0;
    if (all) {
      for (uint32_t k = 0; k < s.len; ++k) out.push_back(byte_ids_[static_cast<uint8_t>(word[s.start + k])]);
    } else if (vocab_.unk >= 0) {
      out.push_back(vocab_.unk);
    }
  }
}

void Tokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  // Per-call cache of word -> ids (natural text repeats words a lot); ids live in one pool.
  StringMap<std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> pool;
  const auto word = [&](std::string_view w) {
    if (auto it = cache.find(w); it != cache.end()) {
      out.insert(out.end(), pool.begin() + it->second.first, pool.begin() + it->second.first + it->second.second);
      return;
    }
    const size_t start = out.size();
    encode_word(w, out);
    const uint32_t at = static_cast<uint32_t>(pool.size());
    pool.insert(pool.end(), out.begin() + static_cast<ptrdiff_t>(start), out.end());
    cache.emplace(std::string(w), std::make_pair(at, static_cast<uint32_t>(out.size() - start)));
  };

  if (byte_level_) {
    for (std::string_view w : pretokenize(text, pre_)) word(w);
    return;
  }
  // SPM: '▁' prefix, spaces as '▁'.
  std::string norm;
  norm.reserve(text.size() + text.size() / 4 + 3);
  if (vocab_.add_space_prefix) norm += kSpmSpace;
  for (char c : text) {
    if (c == ' ') {
      norm += kSpmSpace;
    } else {
      norm += c;
    }
  }
  if (!spm_split_words_) {
    encode_word(norm, out);
    return;
  }
  // No piece contains an inner '▁', so no merge crosses the start of a '▁': encode word by word.
  const std::string_view s = norm;
  size_t begin = 0;
  while (begin < s.size()) {
    size_t end = s.find(kSpmSpace, begin + 1);
    if (end == std::string_view::npos) end = s.size();
    word(s.substr(begin, end - begin));
    begin = end;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  if (!parse_special || specials_.empty()) {
    encode_text(text, out);
  } else {
    // Split on the earliest special-token occurrence (longest on ties); text between them is
    // encoded normally. next[k] caches where special k occurs next at or after `pos`.
    std::vector<size_t> next(specials_.size(), 0);
    size_t pos = 0;
    for (size_t k = 0; k < specials_.size(); ++k) next[k] = text.find(specials_[k].first);
    while (true) {
      size_t best = std::string_view::npos, best_k = 0;
      for (size_t k = 0; k < specials_.size(); ++k) {
        if (next[k] != std::string_view::npos && next[k] < pos) next[k] = text.find(specials_[k].first, pos);
        if (next[k] < best) best = next[k], best_k = k;  // strict: longer specials come first
      }
      if (best == std::string_view::npos) break;
      encode_text(text.substr(pos, best - pos), out);
      out.push_back(specials_[best_k].second);
      pos = best + specials_[best_k].first.size();
    }
    encode_text(text.substr(pos), out);
  }
  if (add_special && vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  const std::string& p = piece(id);
  if (!render_special && (vocab_.type(id) == TokenType::Control || vocab_.type(id) == TokenType::Unknown)) return {};
  return p;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) {
    const std::string& p = piece(id);
    if (!render_special && (vocab_.type(id) == TokenType::Control || vocab_.type(id) == TokenType::Unknown)) continue;
    out += p;
  }
  if (!byte_level_ && vocab_.add_space_prefix && !out.empty() && out.front() == ' ') out.erase(0, 1);
  return out;
}

}  // namespace squish
