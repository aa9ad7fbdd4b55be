#include "core/model/generate.hpp"

#include "core/base/error.hpp"

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

PerplexityOptions with_bos(PerplexityOptions opt, const Tokenizer& tok) {
  opt.bos_token = tok.vocab().add_bos ? tok.bos() : -1;
  return opt;
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
          {"decode_tokens_per_s", decode_tokens_per_s},
          {"context", context},
          {"stopped_at_context", stopped_at_context}};
}

GenerateResult generate(std::shared_ptr<const Model> model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt) {
  GenerateResult res;
  res.prompt_tokens = tok.encode(prompt, /*add_special=*/true);
  if (res.prompt_tokens.empty()) fail(ExitCode::Usage, "the prompt is empty");
  const int P = static_cast<int>(res.prompt_tokens.size());
  // The KV cache never grows past the model's context: a longer prompt is refused, and the
  // generation stops at the context (the result says so) instead of growing without bound.
  const int ctx = model->architecture().n_ctx_train > 0 ? model->architecture().n_ctx_train : kDefaultContext;
  if (P >= ctx) fail(ExitCode::Usage, "the prompt is {} tokens, which fills the model's context of {} (nothing left to generate)", P, ctx);
  int n = opt.n;
  if (n > ctx - P) {
    n = ctx - P;
    res.stopped_at_context = true;
  }
  res.context = ctx;
  Session session(model, P + std::max(n, 1), opt.threads, opt.kv_type);
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
  for (int i = 0; i < n; ++i) {
    const int32_t next = sample_token(logits, history, opt, unif(rng));
    if (opt.stop_at_eos && next == tok.eos()) break;
    res.generated.push_back(next);
    history.push_back(next);
    if (opt.on_token) opt.on_token(next);
    if (i + 1 == n) break;  // the last token needs no logits
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
