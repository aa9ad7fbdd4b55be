#pragma once
// Hugging Face config.json, normalised to what the stages need; the family (llama, mistral,
// qwen2, ...) and its defaults come from core/arch/architecture.hpp.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace squish {

namespace arch {
struct Family;
}

struct ModelConfig {
  const arch::Family* family = nullptr;
  std::string arch;        // GGUF architecture name: "llama" or "qwen2"
  std::string model_type;  // as in config.json
  int n_layer = 0;
  int n_embd = 0;          // hidden_size
  int n_ff = 0;            // intermediate_size
  int n_head = 0;          // query heads
  int n_head_kv = 0;       // key/value heads
  int head_dim = 0;        // head_dim if given, else hidden_size / n_head
  int vocab_size = 0;
  int max_position = 0;
  float rope_theta = 10000.f;
  float rms_eps = 1e-6f;
  bool tie_embeddings = false;
  bool attn_bias = false;  // q/k/v biases (qwen2 always; llama when attention_bias)
  std::vector<float> rope_freq_factors;  // rope_scaling llama3: per rotary pair; empty = none
  int sliding_window = 0;  // Mistral / Qwen2 sliding_window when in use; 0 = none
  int bos_token_id = -1;
  int eos_token_id = -1;
  nlohmann::json raw;

  // Reads and validates <folder>/config.json (or a path to the file).
  static ModelConfig load(const std::string& path);
  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
};

}  // namespace squish
