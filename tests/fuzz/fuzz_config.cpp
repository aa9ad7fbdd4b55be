// Fuzz target: a Hugging Face config.json (ModelConfig::load), then the model architecture it
// describes (ModelArch::from_config + validate), input = the JSON text.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/arch/architecture.hpp"
#include "core/arch/hf_config.hpp"

using namespace squish;

SQUISH_FUZZ_TARGET(config) {
  const std::string path = fuzz::scratch_dir("config") + "/config.json";
  fuzz::write_bytes(path, data, size);
  const ModelConfig c = ModelConfig::load(path);
  // What load() promises when it accepts a config.
  SQUISH_FUZZ_CHECK(c.family != nullptr, "family");
  SQUISH_FUZZ_CHECK(c.n_layer > 0 && c.n_embd > 0 && c.n_ff > 0 && c.n_head > 0 && c.n_head_kv > 0 && c.head_dim > 0 &&
                        c.vocab_size > 0,
                    "non-positive size: layers " + std::to_string(c.n_layer) + " embd " + std::to_string(c.n_embd) +
                        " ff " + std::to_string(c.n_ff) + " heads " + std::to_string(c.n_head) + "/" +
                        std::to_string(c.n_head_kv) + " head_dim " + std::to_string(c.head_dim) + " vocab " +
                        std::to_string(c.vocab_size));
  SQUISH_FUZZ_CHECK(c.n_head % c.n_head_kv == 0, "heads not a multiple of kv heads");
  SQUISH_FUZZ_CHECK(c.rope_freq_factors.empty() || c.rope_freq_factors.size() == size_t(c.head_dim / 2), "rope factors");
  SQUISH_FUZZ_CHECK(c.sliding_window >= 0, "sliding_window " + std::to_string(c.sliding_window));
  // An accepted sliding_window is the one the file gives (not truncated to int).
  if (c.family->sliding_window && c.model_type != "qwen2" && c.raw.contains("sliding_window") &&
      c.raw["sliding_window"].is_number_integer())
    SQUISH_FUZZ_CHECK(c.raw["sliding_window"].get<int64_t>() == c.sliding_window,
                      "sliding_window " + c.raw["sliding_window"].dump() + " read as " + std::to_string(c.sliding_window));
  const arch::ModelArch a = arch::ModelArch::from_config(c);
  a.validate(path);
  for (int l = 0; l < a.n_layer(); ++l)
    for (const auto& k : arch::tensor_kinds())
      if (a.has(k, l)) (void)a.hf_shape(k, l);
  (void)a.rope_inv_freq();
  return 0;
}
