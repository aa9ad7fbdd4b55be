#include "core/model/perplexity.hpp"

#include "core/base/error.hpp"
#include "core/base/memory.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

namespace squish {

namespace {
double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

nlohmann::json PerplexityResult::to_json() const {
  return {{"ppl", ppl}, {"ppl_stderr", ppl_stderr}, {"nll", nll}, {"nll_stderr", nll_stderr}, {"tokens", tokens},
          {"chunks", chunks}, {"scored", scored}, {"seconds", seconds}, {"tokens_per_s", tokens_per_s}};
}

PerplexityResult perplexity(const ChunkNll& model, std::span<const int32_t> tokens, const PerplexityOptions& opt) {
  if (opt.n_ctx < 4) fail(ExitCode::Usage, "perplexity: ctx must be at least 4 (got {})", opt.n_ctx);
  int n_chunks = static_cast<int>(tokens.size() / opt.n_ctx);
  if (n_chunks == 0)
    fail(ExitCode::InputData, "{}: the text has {} tokens, fewer than one context of {}", opt.text_path.empty() ? "perplexity" : opt.text_path,
         tokens.size(), opt.n_ctx);
  if (opt.max_chunks > 0) n_chunks = std::min(n_chunks, opt.max_chunks);

  const int first = opt.n_ctx / 2;
  PerplexityResult r;
  r.tokens = static_cast<int64_t>(tokens.size());
  r.chunks = n_chunks;
  double sum = 0, sum_sq = 0;
  std::vector<int32_t> chunk(opt.n_ctx);
  std::vector<double> nll;
  const double t0 = now_s();
  for (int c = 0; c < n_chunks; ++c) {
    if (opt.cancelled && opt.cancelled()) fail(ExitCode::Runtime, "cancelled");
    std::copy_n(tokens.begin() + size_t(c) * opt.n_ctx, opt.n_ctx, chunk.begin());
    if (opt.bos_token >= 0) chunk[0] = opt.bos_token;  // as llama-perplexity: every chunk starts with BOS
    model(chunk, first, nll);
    for (double v : nll) sum += v, sum_sq += v * v;
    // NaN or Inf weights (or an overflow) make every later figure meaningless: stop, naming the model.
    if (!std::isfinite(sum))
      fail(ExitCode::InputData, "{}: the model's loss is not finite in chunk {} (NaN or Inf weights or activations)",
           opt.model_path.empty() ? "perplexity" : opt.model_path, c + 1);
    r.scored += static_cast<int64_t>(nll.size());
    if (opt.progress) opt.progress(c + 1, n_chunks);
  }
  r.seconds = now_s() - t0;
  r.tokens_per_s = r.seconds > 0 ? double(n_chunks) * opt.n_ctx / r.seconds : 0;
  const double n = static_cast<double>(r.scored);
  r.nll = sum / n;
  r.ppl = std::exp(r.nll);
  const double var = sum_sq / n - r.nll * r.nll;
  r.nll_stderr = n > 1 && var > 0 ? std::sqrt(var / (n - 1)) : 0.0;
  r.ppl_stderr = r.ppl * r.nll_stderr;
  return r;
}

PerplexityResult perplexity(Transformer& model, std::span<const int32_t> tokens, const PerplexityOptions& opt) {
  return perplexity(
      [&](std::span<const int32_t> chunk, int first, std::vector<double>& nll) { model.loss(chunk, first, nullptr, nullptr, &nll); },
      tokens, opt);
}

PerplexityResult perplexity(std::shared_ptr<const infer::Model> model, std::span<const int32_t> tokens, const PerplexityOptions& opt) {
  // A chunk's logits (half of it is scored) on top of the KV cache the session checks.
  require_memory(uint64_t(opt.n_ctx) * uint64_t(model->n_vocab()) * sizeof(float),
                 fmt::format("{}: the logits of {}-token chunks", model->reader().path(), opt.n_ctx));
  infer::Session session(model, opt.n_ctx, opt.threads, opt.kv_type);
  session.set_batch_path(opt.batch_path);
  const int n_vocab = model->n_vocab();
  std::vector<float> logits;
  return perplexity(
      [&](std::span<const int32_t> chunk, int first, std::vector<double>& nll) {
        session.reset();
        session.eval(chunk, first, logits);
        // Row i of logits is position first + i; it predicts the token at first + i + 1.
        const int n = static_cast<int>(chunk.size());
        nll.assign(n - 1 - first, 0.0);
        for (int j = first; j < n - 1; ++j) {
          const float* row = &logits[size_t(j - first) * n_vocab];
          const float mx = *std::max_element(row, row + n_vocab);
          double s = 0;
          for (int i = 0; i < n_vocab; ++i) s += std::exp(double(row[i]) - mx);
          nll[j - first] = -(double(row[chunk[j + 1]]) - mx - std::log(s));
        }
      },
      tokens, opt);
}

nlohmann::json KlResult::to_json() const {
  nlohmann::json j = ppl.to_json();
  j["kl_mean"] = kl_mean;
  j["kl_stderr"] = kl_stderr;
  j["kl_p99"] = kl_p99;
  j["same_top_p"] = same_top_p;
  return j;
}

KlResult kl_divergence(std::shared_ptr<const infer::Model> model, Transformer& reference, std::span<const int32_t> tokens,
                       const PerplexityOptions& opt) {
  if (reference.arch().n_vocab != model->n_vocab())
    fail(ExitCode::InputData, "kl divergence: the reference has {} tokens, the GGUF {}", reference.arch().n_vocab, model->n_vocab());
  // This chunk's logits and the float reference's (its activations are counted by its own model).
  require_memory(2 * uint64_t(opt.n_ctx) * uint64_t(model->n_vocab()) * sizeof(float),
                 fmt::format("{}: the logits of {}-token chunks", model->reader().path(), opt.n_ctx));
  infer::Session session(model, opt.n_ctx, opt.threads, opt.kv_type);
  session.set_batch_path(opt.batch_path);
  const int V = model->n_vocab();
  std::vector<float> logits;
  std::vector<double> kls;
  int64_t same_top = 0;
  auto log_softmax = [&](const float* z, std::vector<double>& out) {
    const float mx = *std::max_element(z, z + V);
    double s = 0;
    for (int i = 0; i < V; ++i) s += std::exp(double(z[i]) - mx);
    const double lse = mx + std::log(s);
    out.resize(V);
    for (int i = 0; i < V; ++i) out[i] = double(z[i]) - lse;
  };
  std::vector<double> lp, lq;
  KlResult r;
  r.ppl = perplexity(
      [&](std::span<const int32_t> chunk, int first, std::vector<double>& nll) {
        session.reset();
        session.eval(chunk, first, logits);
        const std::vector<float> ref = reference.logits(chunk);
        const int n = static_cast<int>(chunk.size());
        nll.assign(n - 1 - first, 0.0);
        for (int j = first; j < n - 1; ++j) {
          const float* q = &logits[size_t(j - first) * V];
          const float* p = &ref[size_t(j) * V];
          log_softmax(p, lp);
          log_softmax(q, lq);
          double kl = 0;
          for (int i = 0; i < V; ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
          kls.push_back(std::max(0.0, kl));
          same_top += std::max_element(p, p + V) - p == std::max_element(q, q + V) - q;
          nll[j - first] = -lq[chunk[j + 1]];
        }
      },
      tokens, opt);
  const double n = double(kls.size());
  double sum = 0, sum2 = 0;
  for (double k : kls) sum += k, sum2 += k * k;
  r.kl_mean = sum / n;
  r.kl_stderr = n > 1 ? std::sqrt(std::max(0.0, sum2 / n - r.kl_mean * r.kl_mean) / (n - 1)) : 0;
  std::sort(kls.begin(), kls.end());
  r.kl_p99 = kls[std::min(kls.size() - 1, static_cast<size_t>(0.99 * n))];
  r.same_top_p = double(same_top) / n;
  return r;
}

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(ExitCode::InputData, "{}: cannot open token id file", path);
  std::vector<int32_t> ids;
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty() || line == "\r") continue;
    size_t pos = 0;
    long long v = 0;
    try {
      v = std::stoll(line, &pos);
    } catch (const std::exception&) {
      fail(ExitCode::InputData, "{}:{}: not a token id: '{}'", path, line_no, line);
    }
    while (pos < line.size() && std::isspace(static_cast<unsigned char>(line[pos]))) ++pos;
    if (pos != line.size() || v < 0 || v > INT32_MAX)
      fail(ExitCode::InputData, "{}:{}: not a token id: '{}'", path, line_no, line);
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

}  // namespace squish
