#pragma once
// Text <-> token ids for the two vocabulary kinds Squish supports (see Vocab):
//  - "gpt2": byte-level BPE as Hugging Face `tokenizers` does it (Qwen2 / Llama 3 / GPT-2
//    pre-tokenizer regex, GPT-2 byte-to-unicode alphabet, merges by rank). Round-trips any bytes
//    exactly.
//  - "llama": SentencePiece-style BPE (llama.cpp's SPM tokenizer): spaces become '▁', a '▁' is
//    prepended to each run of text, adjacent symbols merge by the score of the merged piece
//    (highest first, leftmost on ties), characters outside the vocabulary fall back to
//    <0xXX> byte tokens.
// Special tokens (control, user-defined, unknown) written in the text are matched first, as
// HF's added-token matching and llama.cpp's parse_special do.
//
// A Tokenizer is immutable after construction; encode/decode are thread-safe.
#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/tokenizer/pretokenize.hpp"
#include "core/tokenizer/vocab.hpp"

namespace squish {

class Tokenizer {
 public:
  // Throws Error(InputData) when the vocabulary is inconsistent (e.g. a merge names an unknown token).
  explicit Tokenizer(Vocab vocab);

  // add_special: prepend BOS / append EOS when the vocabulary says so (Vocab::add_bos/add_eos).
  // parse_special: match special-token texts (e.g. "<|endoftext|>") in `text`; otherwise they
  // are tokenized as plain text.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special = true) const;

  // Concatenated pieces. For "llama" vocabularies the single leading space that the encoder's
  // '▁' prefix produces is removed (HF decoder Strip), so decode(encode(t)) == t.
  // render_special = false drops control and unknown tokens (HF skip_special_tokens).
  std::string decode(std::span<const int32_t> ids, bool render_special = true) const;

  // The bytes one token stands for, as a streaming printer needs them: byte-level pieces
  // decoded to raw bytes (possibly a partial UTF-8 sequence), '▁' as a space (no stripping),
  // <0xXX> as that byte; control tokens as their text, or "" with render_special = false.
  std::string token_to_piece(int32_t id, bool render_special = true) const;

  int n_vocab() const { return vocab_.n_vocab(); }
  const Vocab& vocab() const { return vocab_; }
  int32_t bos() const { return vocab_.bos; }
  int32_t eos() const { return vocab_.eos; }

 private:
  struct Merge {
    int32_t rank;  // lower merges first
    int32_t id;    // the merged token
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // Appends the ids of one pre-tokenized word (raw bytes for byte-level, '▁'-escaped for SPM).
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  const std::string& piece(int32_t id) const;

  Vocab vocab_;
  bool byte_level_ = false;
  PreTokenizer pre_ = PreTokenizer::Qwen2;
  bool spm_split_words_ = false;  // no piece has an inner '▁': words can be encoded one by one
  // Lets the maps below be searched with a string_view (no temporary std::string).
  struct ViewHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <typename V>
  using StringMap = std::unordered_map<std::string, V, ViewHash, std::equal_to<>>;

  StringMap<int32_t> piece_to_id_;  // mergeable pieces (normal, user-defined)
  std::unordered_map<uint64_t, Merge> merges_;            // (left id, right id) -> merge
  std::array<int32_t, 256> byte_ids_{};  // byte-level: token of each byte's character; SPM: <0xXX>
  std::vector<std::string> pieces_;      // decoded bytes of each token
  std::vector<std::pair<std::string, int32_t>> specials_;  // texts matched in the input, longest first
};

}  // namespace squish
