// squish-plan-check: does the plan stage's predictor rank single-tensor quantizations the way
// the model's output does? For N single-tensor swaps (one weight quantized to one type, every
// other weight float), measures the mean KL divergence of the float model's next-token
// distribution (second half of each 512-token chunk, llama.cpp's protocol) against the
// unmodified model, and prints it beside the measurements' predicted loss; then the Spearman
// rank correlation of the two (and the log-log Pearson correlation).
//
//   build/bin/squish-plan-check MODEL_DIR STATS_DIR EVAL.txt [N_SWAPS=24] [CHUNKS=8] [METHOD=rtn|gptq] [GPTQ_TYPES=anchors|all] [GPTQ_ROWS=256]
//
// MODEL_DIR is the Hugging Face folder, STATS_DIR the score stage's output for it (its imatrix;
// with gptq, also its second moments). With gptq each swap quantizes its tensor with GPTQ (as
// compress would) and the predictions are the gptq measurements (GPTQ run at the anchor types and
// estimated at the others unless GPTQ_TYPES is all). Prints a Markdown table, one row per swap,
// and the correlations. The README quotes coder-28m's; docs/plan.md describes the predictor.
#include "core/arch/architecture.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/io/score_folder.hpp"
#include "core/io/text_file.hpp"
#include "core/model/transformer.hpp"
#include "core/quant/gptq.hpp"
#include "core/quant/quantize.hpp"
#include "core/recipe/recipe.hpp"
#include "core/base/error.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "stages/plan/measure.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

using namespace squish;

namespace {

std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {  // ties share their mean rank
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = 0.5 * double(i + j);
    i = j + 1;
  }
  return r;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = double(a.size());
  const double ma = std::accumulate(a.begin(), a.end(), 0.0) / n, mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
  return sab / std::sqrt(saa * sbb);
}

std::vector<double> log_softmax(const float* z, int V) {
  const float mx = *std::max_element(z, z + V);
  double s = 0;
  for (int i = 0; i < V; ++i) s += std::exp(double(z[i]) - mx);
  std::vector<double> out(V);
  for (int i = 0; i < V; ++i) out[i] = double(z[i]) - mx - std::log(s);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 4) {
      fmt::print(stderr, "usage: {} MODEL_DIR STATS_DIR EVAL.txt [N_SWAPS=24] [CHUNKS=8] [METHOD=rtn|gptq] [GPTQ_TYPES=anchors|all] [GPTQ_ROWS=256]\n", argv[0]);
      return 2;
    }
    const std::string model_dir = argv[1], stats_dir = argv[2], eval = argv[3];
    const int n_swaps = argc > 4 ? std::stoi(argv[4]) : 24, max_chunks = argc > 5 ? std::stoi(argv[5]) : 8;
    plan::MeasureOptions mo;
    mo.method = argc > 6 ? argv[6] : "rtn";
    mo.gptq_every_type = argc > 7 && std::string(argv[7]) == "all";
    mo.gptq_rows = argc > 8 ? std::stoll(argv[8]) : plan::kGptqSampleRows;
    const plan::Measurements m = plan::measure(model_dir, stats_dir, mo);
    const ScoreFolder folder(stats_dir);
    const auto moments = mo.method == "gptq" ? folder.moments() : std::nullopt;
    const auto imatrix = folder.imatrix();
    auto base = SafetensorsWeights::open(model_dir);
    const ModelArch& a = base->arch();
    Tokenizer tok(Vocab::from_tokenizer_json(model_dir + "/tokenizer.json", base->config().vocab_size));
    const std::vector<int32_t> toks = tok.encode(read_text_file(eval, "evaluation text"), true);
    const int ctx = 512, first = ctx / 2, V = a.n_vocab;
    const int chunks = std::min<int>(max_chunks, static_cast<int>(toks.size() / ctx));
    std::vector<std::vector<float>> ref(chunks);
    {
      Transformer model(base, {});
      for (int c = 0; c < chunks; ++c) ref[c] = model.logits(std::span(toks).subspan(size_t(c) * ctx, ctx));
    }
    // Swaps spread over tensors and types: every k-th (tensor, type) pair below Q8_0.
    std::vector<std::pair<size_t, size_t>> pairs;
    for (size_t t = 0; t < m.tensors.size(); ++t)
      for (size_t k = 0; k < m.tensors[t].candidates.size(); ++k)
        if (m.tensors[t].candidates[k].type != GGMLType::F16 && m.tensors[t].candidates[k].type != GGMLType::Q8_0) pairs.emplace_back(t, k);
    const size_t step = std::max<size_t>(1, pairs.size() / size_t(n_swaps));
    std::vector<double> predicted, measured;
    fmt::print("| tensor | type | predicted dL | measured mean KL |\n|---|---|---|---|\n");
    for (size_t p = 0; p < pairs.size() && predicted.size() < size_t(n_swaps); p += step) {
      const auto& tm = m.tensors[pairs[p].first];
      const auto& cand = tm.candidates[pairs[p].second];
      const auto named = arch::parse_gguf_name(tm.name);
      // The model with this one tensor quantized and dequantized (rows are HF rows: a row
      // permutation does not change row-wise quantization).
      GlobalWeights g = base->globals();
      std::vector<LayerWeights> layers;
      for (int l = 0; l < a.n_layer(); ++l) layers.push_back(*base->layer(l));
      std::vector<float>* w = nullptr;
      switch (named->kind->role) {
        case arch::Role::TokenEmbd: w = &g.tok_embd; break;
        case arch::Role::Output: w = &g.lm_head; break;
        case arch::Role::AttnQ: w = &layers[named->layer].wq; break;
        case arch::Role::AttnK: w = &layers[named->layer].wk; break;
        case arch::Role::AttnV: w = &layers[named->layer].wv; break;
        case arch::Role::AttnOut: w = &layers[named->layer].wo; break;
        case arch::Role::FfnGate: w = &layers[named->layer].w_gate; break;
        case arch::Role::FfnUp: w = &layers[named->layer].w_up; break;
        case arch::Role::FfnDown: w = &layers[named->layer].w_down; break;
        default: continue;
      }
      const int64_t n = tm.ne[0], rows = tm.ne[1];
      auto im = imatrix.find(tm.name);
      const float* imp = im != imatrix.end() ? im->second.data() : nullptr;
      std::vector<std::byte> q(ggml_row_size(cand.type, n) * size_t(rows));
      const bool gptq = moments && moments->has(tm.name) && recipe::gptq_applies(*named->kind, cand.type);
      if (gptq) q = quant::gptq_quantize(cand.type, w->data(), rows, n, moments->load(tm.name).data(), imp);
      else quantize_rows(cand.type, w->data(), q.data(), rows, n, imp);
      for (int64_t r = 0; r < rows; ++r) dequantize_row(cand.type, q.data() + ggml_row_size(cand.type, n) * size_t(r), w->data() + r * n, n);
      Transformer model(std::make_shared<InMemoryWeights>(a, std::move(g), std::move(layers)), {});
      double kl = 0;
      int64_t count = 0;
      for (int c = 0; c < chunks; ++c) {
        const auto lg = model.logits(std::span(toks).subspan(size_t(c) * ctx, ctx));
        for (int j = first; j < ctx - 1; ++j) {
          const auto lp = log_softmax(&ref[c][size_t(j) * V], V), lq = log_softmax(&lg[size_t(j) * V], V);
          for (int i = 0; i < V; ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
          ++count;
        }
      }
      predicted.push_back(cand.predicted);
      measured.push_back(kl / double(count));
      fmt::print("| {} | {} | {:.4g} | {:.4g} |\n", tm.name, ggml_type_name(cand.type), cand.predicted, measured.back());
      std::fflush(stdout);
    }
    fmt::print("\n{} swaps, {} chunks of {}: Spearman rank correlation {:.3f}, Pearson (log-log) {:.3f}\n", predicted.size(), chunks, ctx,
               pearson(ranks(predicted), ranks(measured)), [&] {
                 std::vector<double> lp, lm;
                 for (size_t i = 0; i < predicted.size(); ++i) lp.push_back(std::log(predicted[i])), lm.push_back(std::log(std::max(1e-12, measured[i])));
                 return pearson(lp, lm);
               }());
    return 0;
  } catch (const Error& e) {
    fmt::print(stderr, "squish-plan-check: {}\n", e.what());
    return static_cast<int>(e.code());
  }
}
