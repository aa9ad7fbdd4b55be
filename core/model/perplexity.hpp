#pragma once
// Perplexity with llama.cpp's llama-perplexity protocol, once for both models: the token stream
// is cut into consecutive chunks of n_ctx tokens (a partial tail is dropped); each chunk is
// evaluated from position 0 and only its second half is scored: logits at positions
// n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. n_ctx-1 (255 predictions per 512-token chunk).
// When the tokenizer adds a BOS token (llama.cpp's add_bos), the first token of every chunk is
// replaced by BOS; Qwen2 GGUFs have add_bos_token = false, so coder-28m is scored unchanged.
#include "core/model/engine.hpp"
#include "core/model/transformer.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace squish {

struct PerplexityOptions {
  std::string text_path, model_path;  // what is scored, for error messages
  int n_ctx = 512;
  int bos_token = -1;  // >= 0: overwrite each chunk's first token with it (llama.cpp add_bos)
  int max_chunks = 0;  // 0: every full chunk
  int threads = 0;     // engine: threads (0 = all cores)
  infer::BatchPath batch_path = infer::BatchPath::Auto;  // engine: how batches multiply
  infer::KVType kv_type = infer::KVType::F16;  // engine: KV cache element type
  std::function<void(int done, int total)> progress;
  std::function<bool()> cancelled;
};

struct PerplexityResult {
  double ppl = 0;          // exp(mean nll)
  double ppl_stderr = 0;   // llama.cpp's: ppl * stddev(nll) / sqrt(n - 1)
  double nll = 0;          // mean negative log-likelihood (nats)
  double nll_stderr = 0;   // standard error of the mean nll
  int64_t tokens = 0;      // tokens of the whole stream
  int chunks = 0;
  int64_t scored = 0;      // predictions scored
  double seconds = 0, tokens_per_s = 0;  // evaluated tokens (chunks * n_ctx) per second
  nlohmann::json to_json() const;
};

// Per-prediction nll of one chunk: logits at positions first .. size-2 predicting the next token.
using ChunkNll = std::function<void(std::span<const int32_t> chunk, int first, std::vector<double>& nll)>;

// The protocol over any model.
PerplexityResult perplexity(const ChunkNll& model, std::span<const int32_t> tokens, const PerplexityOptions& opt);
// The float reference transformer.
PerplexityResult perplexity(Transformer& model, std::span<const int32_t> tokens, const PerplexityOptions& opt = {});
// The GGUF inference engine (one KV-cache session, reset per chunk).
PerplexityResult perplexity(std::shared_ptr<const infer::Model> model, std::span<const int32_t> tokens,
                            const PerplexityOptions& opt = {});

// KL divergence of the engine's next-token distributions from the float reference model's, over
// the same scored positions (llama-perplexity --kl-divergence against an F32 base), plus the
// engine's perplexity. `reference` is the float model of the checkpoint the GGUF was made from.
struct KlResult {
  PerplexityResult ppl;       // the engine's
  double kl_mean = 0;         // nats per token
  double kl_stderr = 0;
  double kl_p99 = 0;          // 99th percentile
  double same_top_p = 0;      // fraction of positions where both pick the same most likely token
  nlohmann::json to_json() const;
};
KlResult kl_divergence(std::shared_ptr<const infer::Model> model, Transformer& reference, std::span<const int32_t> tokens,
                       const PerplexityOptions& opt = {});

// Token ids, one decimal id per line (the format of ../shared/reference/tokens/*.ids).
std::vector<int32_t> read_token_ids(const std::string& path);

}  // namespace squish
