// Fuzz target: a Hugging Face tokenizer.json (Vocab::from_tokenizer_json), then its GGUF
// metadata and a round trip of the vocabulary through a GGUF file (Vocab::from_gguf).
// Input = tokenizer.json, optionally followed by side files the converter reads from the same
// folder: "\n@@tokenizer_config.json@@\n<json>" and "\n@@config.json@@\n<json>".
#include "tests/fuzz/fuzz_common.hpp"

#include "core/gguf/gguf.hpp"
#include "core/tokenizer/vocab.hpp"

#include <filesystem>

using namespace squish;

SQUISH_FUZZ_TARGET(tokenizer) {
  const std::string dir = fuzz::scratch_dir("tokenizer");
  const auto parts = fuzz::split_parts({reinterpret_cast<const char*>(data), size}, {"tokenizer_config.json", "config.json"});
  std::error_code ec;
  std::filesystem::remove(dir + "/tokenizer_config.json", ec);
  std::filesystem::remove(dir + "/config.json", ec);
  for (const auto& [name, text] : parts.files) fuzz::write_bytes(dir + "/" + name, text);
  fuzz::write_bytes(dir + "/tokenizer.json", parts.main);
  const Vocab v = Vocab::from_tokenizer_json(dir + "/tokenizer.json");
  v.validate("fuzz");
  const auto kv = v.gguf_metadata();
  // Round trip: the vocabulary as a GGUF (what compress writes) must read back the same.
  if (v.n_vocab() <= 70000) {
    const std::string gguf_path = dir + "/vocab.gguf";
    const auto bytes = gguf::serialize_header(kv, {}, gguf::kDefaultAlignment);
    fuzz::write_bytes(gguf_path, bytes.data(), bytes.size());
    const gguf::Reader r = gguf::Reader::open(gguf_path);
    const Vocab back = Vocab::from_gguf(r);
    SQUISH_FUZZ_CHECK(back.tokens == v.tokens, "tokens differ after a GGUF round trip");
    SQUISH_FUZZ_CHECK(back.token_types == v.token_types, "token types differ after a GGUF round trip");
    SQUISH_FUZZ_CHECK(back.merges == v.merges, "merges differ after a GGUF round trip");
    SQUISH_FUZZ_CHECK(back.scores == v.scores, "scores differ after a GGUF round trip");
    // Ids that were written must read back (absent ones take llama.cpp's defaults).
    SQUISH_FUZZ_CHECK(v.bos < 0 || back.bos == v.bos, "bos differs after a GGUF round trip");
    SQUISH_FUZZ_CHECK(v.eos < 0 || back.eos == v.eos, "eos differs after a GGUF round trip");
  }
  return 0;
}
