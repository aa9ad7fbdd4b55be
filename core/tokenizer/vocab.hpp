#pragma once
// A tokenizer vocabulary in the form llama.cpp keeps it in GGUF metadata (tokenizer.ggml.*).
//
// Built from a Hugging Face tokenizer.json (as llama.cpp's convert_hf_to_gguf.py would write
// it) or read back from a GGUF; Tokenizer (tokenizer.hpp) encodes and decodes with it.
#include <cstdint>
#include <string>
#include <vector>

#include "core/gguf/gguf.hpp"

namespace squish {

// llama.cpp's token types (gguf TokenType; tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,      // <unk>
  Control = 3,      // special tokens: <|endoftext|>, <s>, </s>
  UserDefined = 4,  // added tokens that are not special
  Unused = 5,       // padding entries ([PAD123])
  Byte = 6,         // SentencePiece byte-fallback pieces <0x00>..<0xFF>
};

struct Vocab {
  // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE with
  // byte fallback, merged by score).
  std::string model;
  // tokenizer.ggml.pre (gpt2 only): "qwen2", "llama-bpe" or "gpt-2".
  std::string pre;
  std::vector<std::string> tokens;    // by id; byte-level alphabet for gpt2, '▁' for spaces in llama
  std::vector<float> scores;          // llama only (higher merges first); empty for gpt2
  std::vector<int32_t> token_types;   // TokenType values, one per token
  std::vector<std::string> merges;    // gpt2 only: "left right", in rank order
  int32_t bos = -1, eos = -1, unk = -1, sep = -1, pad = -1;
  bool add_bos = false, add_eos = false;
  // add_eos was stated (tokenizer_config.json, the post-processor template, or the GGUF key):
  // only then is tokenizer.ggml.add_eos_token written, as the converter does.
  bool has_add_eos = false;
  std::string chat_template;  // tokenizer.chat_template (Jinja); empty = none
  // llama: prepend '▁' to each run of text (HF normalizer Prepend / tokenizer.ggml.add_space_prefix).
  bool add_space_prefix = true;
  // gpt2: a pre-token that is itself in the vocabulary is not merged (HF BPE ignore_merges;
  // llama.cpp does this for llama-bpe).
  bool ignore_merges = false;

  int n_vocab() const { return static_cast<int>(tokens.size()); }
  TokenType type(int32_t id) const { return static_cast<TokenType>(token_types.at(static_cast<size_t>(id))); }

  // Reads a Hugging Face tokenizer.json (plus tokenizer_config.json and config.json beside it,
  // for special-token ids, add_bos/add_eos and the chat template, as convert_hf_to_gguf.py's
  // SpecialVocab does). `n_vocab` > 0 is the model's config.json vocab_size: the vocabulary has
  // exactly that many tokens, missing ids padded with "[PAD<i>]" Unused tokens, and an id at or
  // beyond it is an error; 0 takes the tokenizer's own size. Supported: BPE with the Qwen2,
  // Llama 3 or GPT-2 byte-level pre-tokenizer, and SentencePiece-style BPE with byte fallback.
  // Throws Error(InputData) naming the file for anything else.
  static Vocab from_tokenizer_json(const std::string& path, int n_vocab = 0);

  // Reads tokenizer.ggml.* metadata; defaults as llama.cpp applies them. Throws Error(InputData).
  static Vocab from_gguf(const gguf::Reader& reader);

  // The tokenizer.* key/value pairs convert_hf_to_gguf.py writes for this vocabulary, in its
  // order: model, pre, tokens, scores, token_type, merges, eos/bos/unknown/seperator/padding ids,
  // add_bos, add_eos, add_space_prefix, chat_template (each only where it applies).
  std::vector<gguf::KeyValue> gguf_metadata() const;

  // Checks sizes and ids are consistent; throws Error(InputData) prefixed by `what`.
  void validate(const std::string& what) const;
};

}  // namespace squish
