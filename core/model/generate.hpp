#pragma once
// Text generation with the inference engine (greedy or sampled); perplexity is in perplexity.hpp.
#include "core/tokenizer/tokenizer.hpp"
#include "core/model/engine.hpp"
#include "core/model/perplexity.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace squish::infer {

// The model's tokenizer, from the GGUF's tokenizer.ggml.* keys.
Tokenizer tokenizer_of(const Model& m);

// opt with bos_token set as the tokenizer wants it (its BOS when the vocabulary adds one).
PerplexityOptions with_bos(PerplexityOptions opt, const Tokenizer& tok);

struct GenerateOptions {
  int n = 128;              // tokens to generate
  int threads = 0;
  KVType kv_type = KVType::F16;  // KV cache element type
  float temperature = 0.f;  // 0 = greedy
  int top_k = 40;           // 0 = off
  float top_p = 0.95f;      // 1 = off
  float repeat_penalty = 1.f;
  int repeat_last_n = 64;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  std::function<void(int32_t token)> on_token;
};

// Context assumed when a GGUF does not state <arch>.context_length.
inline constexpr int kDefaultContext = 4096;

struct GenerateResult {
  std::vector<int32_t> prompt_tokens, generated;
  std::string text;  // decoded prompt + generation
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
  int context = 0;                  // the model's context length (the cap on prompt + generation)
  bool stopped_at_context = false;  // fewer than n tokens because the context is full
  nlohmann::json to_json() const;
};

GenerateResult generate(std::shared_ptr<const Model> model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt);

// Picks the next token from logits (n_vocab values): argmax at temperature 0, else
// repetition penalty -> top-k -> temperature softmax -> top-p -> draw with `u` in [0, 1).
int32_t sample_token(std::vector<float> logits, const std::vector<int32_t>& recent, const GenerateOptions& opt, double u);

}  // namespace squish::infer
