#include "core/model/perplexity.hpp"

#include "core/runtime/error.hpp"

#include <cmath>
#include <fstream>

namespace squish {

PerplexityResult perplexity(Transformer& model, std::span<const int32_t> tokens, const PerplexityOptions& opt) {
  if (opt.n_ctx < 4) fail(ExitCode::Usage, "perplexity: context {} is too short", opt.n_ctx);
  int n_chunks = static_cast<int>(tokens.size() / opt.n_ctx);
  if (opt.max_chunks > 0) n_chunks = std::min(n_chunks, opt.max_chunks);
  if (n_chunks == 0)
    fail(ExitCode::InputData, "perplexity: {} tokens do not fill one chunk of {}", tokens.size(), opt.n_ctx);

  const int first = opt.n_ctx / 2;
  PerplexityResult r;
  double sum = 0, sum_sq = 0;
  std::vector<int32_t> chunk(opt.n_ctx);
  std::vector<double> nll;
  for (int c = 0; c < n_chunks; ++c) {
    std::copy_n(tokens.begin() + size_t(c) * opt.n_ctx, opt.n_ctx, chunk.begin());
    if (opt.bos_token >= 0) chunk[0] = opt.bos_token;
    model.loss(chunk, first, nullptr, nullptr, &nll);
    for (double v : nll) sum += v, sum_sq += v * v;
    r.n_predictions += static_cast<int64_t>(nll.size());
    if (opt.progress) opt.progress(c + 1, n_chunks);
  }
  const double n = static_cast<double>(r.n_predictions);
  r.n_chunks = n_chunks;
  r.nll = sum / n;
  r.ppl = std::exp(r.nll);
  const double var = sum_sq / n - r.nll * r.nll;
  r.nll_stderr = n > 1 ? std::sqrt(std::max(0.0, var) / (n - 1)) : 0.0;
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
