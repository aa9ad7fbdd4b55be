// squish-score-ablation: do the score stage's KV-group scores find the groups that matter?
// Masks out, in every layer, the KV group with the lowest Taylor score, the highest, or a random
// one (mean of 5 seeds), and measures the float model's perplexity (512-token chunks, second half
// scored: llama.cpp's protocol) on each evaluation text. If the scores mean anything, removing the
// lowest-scored groups costs least and the highest-scored most.
//
//   build/bin/squish-score-ablation MODEL_DIR SCORES_A.json [SCORES_B.json ...] -- EVAL.txt[:MAX_CHUNKS] ...
//
// Each SCORES.json is the scores.json of a score folder for MODEL_DIR (docs/scores.md), e.g. from
// different calibration texts; the highest and random rows use the first. Prints a Markdown table:
// one row per selection, one PPL column per text, with the unmasked model as the baseline row.
#include "core/io/text_file.hpp"
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"
#include "core/base/error.hpp"
#include "core/tokenizer/tokenizer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace squish;

namespace {

// kv[layer] = group to mask out.
double ppl_without(Transformer& m, const std::vector<int32_t>& toks, int max_chunks, const std::vector<int>& kv) {
  MaskSet masks = MaskSet::ones(m.arch());
  for (size_t l = 0; l < kv.size(); ++l) masks.kv[l][kv[l]] = 0.0;
  // perplexity() has no mask argument: score chunks directly (same protocol: second half).
  const int ctx = 512, first = ctx / 2;
  int chunks = static_cast<int>(toks.size() / ctx);
  if (max_chunks > 0) chunks = std::min(chunks, max_chunks);
  double nll = 0;
  int64_t n = 0;
  for (int c = 0; c < chunks; ++c) {
    auto r = m.loss(std::span(toks).subspan(size_t(c) * ctx, ctx), first, kv.empty() ? nullptr : &masks);
    nll += r.nll_sum;
    n += r.count;
  }
  return std::exp(nll / n);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 5) {
      fmt::print(stderr, "usage: {} MODEL_DIR SCORES.json... -- EVAL.txt[:max_chunks]...\n", argv[0]);
      return 2;
    }
    const std::string model_dir = argv[1];
    std::vector<std::string> scores, evals;
    bool after = false;
    for (int i = 2; i < argc; ++i) {
      if (std::string(argv[i]) == "--") after = true;
      else (after ? evals : scores).push_back(argv[i]);
    }
    auto weights = SafetensorsWeights::open(model_dir);
    Transformer model(weights, {});
    Tokenizer tok(Vocab::from_tokenizer_json(model_dir + "/tokenizer.json", weights->config().vocab_size));
    const int n_layer = model.arch().n_layer();

    fmt::print("| scores from | selection | {} |\n|---|---|{}\n", [&] {
      std::string h;
      for (auto& e : evals) h += (h.empty() ? "" : " | ") + std::filesystem::path(e).filename().string() + " PPL";
      return h;
    }(), [&] {
      std::string sep;
      for (size_t i = 0; i < evals.size(); ++i) sep += "---|";
      return sep;
    }());
    std::vector<std::vector<int32_t>> eval_toks;
    std::vector<int> eval_max;
    for (auto& e : evals) {
      auto colon = e.rfind(':');
      int mx = 0;
      std::string path = e;
      if (colon != std::string::npos && colon > 0 && std::isdigit(static_cast<unsigned char>(e[colon + 1]))) {
        mx = std::stoi(e.substr(colon + 1));
        path = e.substr(0, colon);
      }
      eval_toks.push_back(tok.encode(read_text_file(path), true));
      eval_max.push_back(mx);
    }
    auto row = [&](const std::string& who, const std::string& sel, const std::vector<std::vector<int>>& choices) {
      std::string cells;
      for (size_t e = 0; e < evals.size(); ++e) {
        double sum = 0;
        for (const auto& kv : choices) sum += ppl_without(model, eval_toks[e], eval_max[e], kv);
        cells += fmt::format(" {:.4f} |", sum / choices.size());
      }
      fmt::print("| {} | {} |{}\n", who, sel, cells);
      std::fflush(stdout);
    };
    row("-", "none (baseline)", {{}});
    for (const auto& sf : scores) {
      auto j = read_json_file(sf, "scores");
      const std::string who = std::filesystem::path(j["calibration"]["path"].get<std::string>()).filename().string();
      std::vector<int> lo, hi;
      for (int l = 0; l < n_layer; ++l) {
        auto t = j["layers"][l]["kv_groups"]["taylor"].get<std::vector<double>>();
        lo.push_back(static_cast<int>(std::min_element(t.begin(), t.end()) - t.begin()));
        hi.push_back(static_cast<int>(std::max_element(t.begin(), t.end()) - t.begin()));
      }
      row(who, "lowest Taylor score", {lo});
      if (&sf == &scores.front()) {
        row(who, "highest Taylor score", {hi});
        std::vector<std::vector<int>> rnd;
        for (int seed = 1; seed <= 5; ++seed) {
          std::mt19937 g(seed);
          std::vector<int> kv;
          for (int l = 0; l < n_layer; ++l) kv.push_back(static_cast<int>(g() % model.arch().layers[l].n_head_kv));
          rnd.push_back(kv);
        }
        row("-", "random (mean of 5 seeds)", rnd);
      }
    }
    return 0;
  } catch (const Error& e) {
    fmt::print(stderr, "squish-score-ablation: error: {}\n", e.what());
    return static_cast<int>(e.code());
  }
}
