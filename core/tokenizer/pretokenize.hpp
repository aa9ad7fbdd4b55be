#pragma once
// Pre-tokenizers of byte-level BPE vocabularies: hand-coded matchers equivalent to the
// Hugging Face `Split(regex, behavior=Isolated)` for three well-known regexes. Every byte of
// the input ends up in exactly one piece (the alternatives cover every code point).
#include <string_view>
#include <vector>

namespace squish {

enum class PreTokenizer {
  // Qwen2: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,
  // Llama 3 ("llama-bpe"): the same with \p{N}{1,3} (digits in groups of up to three).
  Llama3,
  // GPT-2 ("gpt-2"; HF ByteLevel with use_regex): case-sensitive contractions, any run of digits:
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Gpt2,
};

// Splits `text` into consecutive pieces (views into `text`) that concatenate back to it.
// Malformed UTF-8 bytes are kept (each is a one-byte "other" character).
std::vector<std::string_view> pretokenize(std::string_view text, PreTokenizer kind);

}  // namespace squish
