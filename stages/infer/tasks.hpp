#pragma once
// The two jobs of the infer stage: perplexity (llama.cpp's llama-perplexity protocol) and text
// generation (greedy or sampled).
#include "core/tokenizer/tokenizer.hpp"
#include "stages/infer/model.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace squish::infer {

// The model's tokenizer, from the GGUF's tokenizer.ggml.* keys.
Tokenizer tokenizer_of(const Model& m);

struct PerplexityOptions {
  int n_ctx = 512;
  int threads = 0;
  int max_chunks = 0;  // 0 = all
  bool quantized_batches = false;  // llama.cpp's activation quantization for the batched matmuls too
  std::function<void(int done, int total)> progress;
  std::function<bool()> cancelled;
};

struct PerplexityResult {
  double ppl = 0, ppl_stderr = 0;
  int64_t tokens = 0;   // tokens of the whole text (with BOS when the vocab adds one)
  int chunks = 0;
  int64_t scored = 0;   // predictions scored
  double seconds = 0, tokens_per_s = 0;  // evaluated tokens (chunks * n_ctx) per second
  nlohmann::json to_json() const;
};

// Tokenizes the text (BOS when the vocabulary adds one), splits it into n_ctx-token chunks
// (the last partial one dropped), replaces each chunk's first token by BOS when add_bos, and
// scores the predictions of positions n_ctx/2 .. n_ctx-2 of every chunk.
PerplexityResult perplexity(std::shared_ptr<const Model> model, const std::vector<int32_t>& tokens, bool add_bos,
                            int32_t bos, const PerplexityOptions& opt);

struct GenerateOptions {
  int n = 128;              // tokens to generate
  int threads = 0;
  float temperature = 0.f;  // 0 = greedy
  int top_k = 40;           // 0 = off
  float top_p = 0.95f;      // 1 = off
  float repeat_penalty = 1.f;
  int repeat_last_n = 64;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  std::function<void(int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> prompt_tokens, generated;
  std::string text;  // decoded prompt + generation
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
  nlohmann::json to_json() const;
};

GenerateResult generate(std::shared_ptr<const Model> model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt);

// Picks the next token from logits (n_vocab values): argmax at temperature 0, else
// repetition penalty -> top-k -> temperature softmax -> top-p -> draw with `u` in [0, 1).
int32_t sample_token(std::vector<float> logits, const std::vector<int32_t>& recent, const GenerateOptions& opt, double u);

}  // namespace squish::infer
