#pragma once
// Perplexity with llama.cpp's llama-perplexity protocol: the token stream is cut into
// consecutive chunks of n_ctx tokens (a partial tail is dropped); each chunk is evaluated from
// position 0 and only its second half is scored: logits at positions n_ctx/2 .. n_ctx-2 predict
// tokens n_ctx/2+1 .. n_ctx-1 (n_ctx/2 - 1 = 255 predictions per 512-token chunk).
// When the model's tokenizer adds a BOS token (llama.cpp's add_bos), the first token of every
// chunk is replaced by BOS; Qwen2 GGUFs have add_bos_token = false, so coder-28m is scored
// unchanged (bos_token = -1).
#include "core/model/transformer.hpp"

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace squish {

struct PerplexityOptions {
  int n_ctx = 512;
  int bos_token = -1;  // >= 0: overwrite each chunk's first token with it (llama.cpp add_bos)
  int max_chunks = 0;  // 0: every full chunk
  std::function<void(int done, int total)> progress;
};

struct PerplexityResult {
  double ppl = 0;         // exp(mean nll)
  double nll = 0;         // mean negative log-likelihood (nats)
  double nll_stderr = 0;  // standard error of the mean nll (as llama.cpp reports)
  int n_chunks = 0;
  int64_t n_predictions = 0;
};

PerplexityResult perplexity(Transformer& model, std::span<const int32_t> tokens, const PerplexityOptions& opt = {});

// Token ids, one decimal id per line (the format of ../shared/reference/tokens/*.ids).
std::vector<int32_t> read_token_ids(const std::string& path);

}  // namespace squish
