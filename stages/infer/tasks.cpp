#include "stages/infer/tasks.hpp"

#include "core/runtime/error.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

namespace squish::infer {
namespace {
double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Tokenizer tokenizer_of(const Model& m) { return Tokenizer(Vocab::from_gguf(m.reader())); }

nlohmann::json PerplexityResult::to_json() const {
  return {{"ppl", ppl}, {"ppl_stderr", ppl_stderr}, {"tokens", tokens}, {"chunks", chunks}, {"scored", scored},
          {"seconds", seconds}, {"tokens_per_s", tokens_per_s}};
}

PerplexityResult perplexity(std::shared_ptr<const Model> model, const std::vector<int32_t>& tokens, bool add_bos,
                            int32_t bos, const PerplexityOptions& opt) {
  const int n_ctx = opt.n_ctx;
  if (n_ctx < 4) fail(ExitCode::Usage, "ctx must be at least 4 (got {})", n_ctx);
  PerplexityResult res;
  res.tokens = static_cast<int64_t>(tokens.size());
  int n_chunks = static_cast<int>(tokens.size() / n_ctx);
  if (n_chunks == 0)
    fail(ExitCode::InputData, "the text has {} tokens, fewer than one context of {}", tokens.size(), n_ctx);
  if (opt.max_chunks > 0) n_chunks = std::min(n_chunks, opt.max_chunks);
  res.chunks = n_chunks;

  Session session(model, n_ctx, opt.threads);
  session.set_quantized_batches(opt.quantized_batches);
  const int first = n_ctx / 2, n_vocab = model->n_vocab();
  double nll = 0, nll2 = 0;
  std::vector<float> logits;
  std::vector<int32_t> chunk(n_ctx);
  const double t0 = now_s();
  for (int c = 0; c < n_chunks; ++c) {
    if (opt.cancelled && opt.cancelled()) fail(ExitCode::Runtime, "cancelled");
    std::copy_n(tokens.begin() + size_t(c) * n_ctx, n_ctx, chunk.begin());
    if (add_bos) chunk[0] = bos;  // as llama-perplexity: every chunk starts with BOS
    session.reset();
    session.eval(chunk, first, logits);
    // Row i of logits is position first + i; it predicts the token at first + i + 1.
    for (int j = first; j < n_ctx - 1; ++j) {
      const float* row = &logits[size_t(j - first) * n_vocab];
      const float mx = *std::max_element(row, row + n_vocab);
      double sum = 0;
      for (int i = 0; i < n_vocab; ++i) sum += std::exp(double(row[i]) - mx);
      const double v = -(double(row[chunk[j + 1]]) - mx - std::log(sum));
      nll += v;
      nll2 += v * v;
      ++res.scored;
    }
    if (opt.progress) opt.progress(c + 1, n_chunks);
  }
  res.seconds = now_s() - t0;
  res.tokens_per_s = double(n_chunks) * n_ctx / res.seconds;
  // llama.cpp's estimate: PPL = exp(mean nll), error = PPL * stddev(nll) / sqrt(count - 1).
  const double cnt = double(res.scored);
  const double mean = nll / cnt, mean2 = nll2 / cnt;
  res.ppl = std::exp(mean);
  const double var = mean2 - mean * mean;
  res.ppl_stderr = var > 0 && cnt > 1 ? res.ppl * std::sqrt(var / (cnt - 1)) : 0.0;
  return res;
}

// ---- generation ------------------------------------------------------------------------------

int32_t sample_token(std::vector<float> logits, const std::vector<int32_t>& recent, const GenerateOptions& opt, double u) {
  const int n = static_cast<int>(logits.size());
  if (opt.repeat_penalty != 1.f) {
    // llama.cpp's penalty: shrink positive logits, grow negative ones (each token once).
    std::vector<int32_t> seen(recent.end() - std::min<size_t>(recent.size(), size_t(std::max(opt.repeat_last_n, 0))), recent.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n) continue;
      logits[t] = logits[t] > 0 ? logits[t] / opt.repeat_penalty : logits[t] * opt.repeat_penalty;
    }
  }
  if (opt.temperature <= 0.f) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());

  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  const int k = opt.top_k > 0 ? std::min(opt.top_k, n) : n;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  idx.resize(k);
  std::vector<double> p(k);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += p[i] = std::exp((logits[idx[i]] - mx) / opt.temperature);
  for (auto& x : p) x /= sum;
  // Nucleus: the smallest prefix whose mass reaches top_p.
  int keep = k;
  if (opt.top_p < 1.f) {
    double cum = 0;
    for (int i = 0; i < k; ++i) {
      cum += p[i];
      if (cum >= opt.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  const double total = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  double r = u * total;
  for (int i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return idx[i];
  }
  return idx[keep - 1];
}

nlohmann::json GenerateResult::to_json() const {
  return {{"text", text},
          {"prompt_tokens", prompt_tokens.size()},
          {"generated_tokens", generated.size()},
          {"prefill_tokens_per_s", prefill_tokens_per_s},
          {"decode_tokens_per_s", decode_tokens_per_s}};
}

GenerateResult generate(std::shared_ptr<const Model> model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt) {
  GenerateResult res;
  res.prompt_tokens = tok.encode(prompt, /*add_special=*/true);
  if (res.prompt_tokens.empty()) fail(ExitCode::Usage, "the prompt is empty");
  const int P = static_cast<int>(res.prompt_tokens.size());
  Session session(model, P + std::max(opt.n, 1), opt.threads);
  std::mt19937_64 rng(opt.seed);
  std::uniform_real_distribution<double> unif(0.0, 1.0);

  std::vector<float> logits;
  double t0 = now_s();
  session.eval(res.prompt_tokens, P - 1, logits);
  const double t_prefill = now_s() - t0;
  res.prefill_tokens_per_s = P / t_prefill;

  std::vector<int32_t> history = res.prompt_tokens;
  double t_decode = 0;
  int n_evals = 0;
  for (int i = 0; i < opt.n; ++i) {
    const int32_t next = sample_token(logits, history, opt, unif(rng));
    if (opt.stop_at_eos && next == tok.eos()) break;
    res.generated.push_back(next);
    history.push_back(next);
    if (opt.on_token) opt.on_token(next);
    if (i + 1 == opt.n) break;  // the last token needs no logits
    t0 = now_s();
    const int32_t one[1] = {next};
    session.eval(one, 0, logits);
    t_decode += now_s() - t0;
    ++n_evals;
  }
  res.decode_tokens_per_s = t_decode > 0 ? n_evals / t_decode : 0.0;
  res.text = tok.decode(history, /*render_special=*/false);
  return res;
}

}  // namespace squish::infer
