#include "stages/score/scorer.hpp"

#include "core/gguf/hf_to_gguf.hpp"
#include "core/io/atomic_file.hpp"
#include "core/io/moments.hpp"
#include "core/io/sha256.hpp"
#include "core/io/staged_dir.hpp"
#include "core/io/text_file.hpp"
#include "core/runtime/error.hpp"
#include "core/tokenizer/tokenizer.hpp"

#include <zstd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace squish::score {

namespace {

nlohmann::json pair_json(const std::vector<double>& t, const std::vector<double>& f) {
  return {{"taylor", t}, {"fisher", f}};
}

}  // namespace

ScoreResult score_model(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt) {
  if (opt.ctx < 8) fail(ExitCode::Usage, "score: ctx {} is too short", opt.ctx);
  const auto t0 = std::chrono::steady_clock::now();
  auto weights = SafetensorsWeights::open(model_dir);
  const ModelConfig& cfg = weights->config();
  const std::string text = read_text_file(text_path, "calibration text");
  Tokenizer tok(Vocab::from_tokenizer_json((fs::path(model_dir) / "tokenizer.json").string(), cfg.vocab_size));
  std::vector<int32_t> tokens = tok.encode(text, true);
  const size_t n_all = tokens.size();
  if (opt.max_tokens > 0 && tokens.size() > static_cast<size_t>(opt.max_tokens)) tokens.resize(opt.max_tokens);
  const int chunks = static_cast<int>(tokens.size() / opt.ctx);
  if (chunks == 0)
    fail(ExitCode::InputData, "{}: {} tokens is less than one chunk of {}", text_path, tokens.size(), opt.ctx);

  TransformerOptions topt;
  topt.threads = opt.threads;
  Transformer model(weights, topt);
  MaskImportance importance(model.arch());
  ScoreResult r;
  r.stats.second_moments = opt.moments;
  const MaskSet ones = MaskSet::ones(model.arch());
  MaskSet grads;
  LossResult total;
  const uint64_t used = static_cast<uint64_t>(chunks) * opt.ctx;
  for (int c = 0; c < chunks; ++c) {
    auto lr = model.loss_and_mask_grads(std::span(tokens).subspan(size_t(c) * opt.ctx, opt.ctx), 0, ones, grads, &r.stats);
    importance.add(ones, grads);
    total.nll_sum += lr.nll_sum;
    total.count += lr.count;
    if (opt.progress) opt.progress(static_cast<uint64_t>(c + 1) * opt.ctx, used);
  }
  r.chunks = chunks;
  r.taylor = importance.taylor();
  r.fisher = importance.fisher();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::string config_text = read_text_file((fs::path(model_dir) / "config.json").string(), "config.json");
  const ModelArch& a = model.arch();
  nlohmann::json layers = nlohmann::json::array();
  std::vector<int> n_ff;
  for (int l = 0; l < a.n_layer(); ++l) {
    layers.push_back({{"layer", l},
                      {"n_head", a.layers[l].n_head},
                      {"n_head_kv", a.layers[l].n_head_kv},
                      {"n_ff", a.layers[l].n_ff},
                      {"heads", pair_json(r.taylor.head[l], r.fisher.head[l])},
                      {"kv_groups", pair_json(r.taylor.kv[l], r.fisher.kv[l])},
                      {"attn", {{"taylor", r.taylor.attn[l]}, {"fisher", r.fisher.attn[l]}}},
                      {"mlp", {{"taylor", r.taylor.mlp[l]}, {"fisher", r.fisher.mlp[l]}}}});
    n_ff.push_back(a.layers[l].n_ff);
  }
  r.scores = {
      {"format", "squish.scores/1"},
      {"model",
       {{"path", fs::absolute(model_dir).string()},
        {"arch", cfg.arch},
        {"config_sha256", sha256_hex(std::as_bytes(std::span(config_text.data(), config_text.size())))},
        {"n_layer", a.n_layer()},
        {"head_dim", a.head_dim}}},
      {"calibration",
       {{"path", fs::absolute(text_path).string()},
        {"sha256", sha256_hex(std::as_bytes(std::span(text.data(), text.size())))},
        {"bytes", text.size()},
        {"tokens", n_all},
        {"tokens_used", used},
        {"chunks", chunks},
        {"ctx", opt.ctx},
        {"max_tokens", opt.max_tokens},
        {"moments", opt.moments}}},
      {"method",
       {{"name", "mask-gradient"},
        {"taylor", "E|m * dL/dm| over chunks (first-order Taylor importance; LLM-Pruner)"},
        {"fisher", "E[(dL/dm)^2] over chunks (Michel et al. 2019)"},
        {"loss", "next-token cross-entropy, mean over each chunk's positions"},
        {"masks", "q head output (before o_proj); KV group (all its q heads' outputs); FFN channel (after silu(gate)*up); attention and MLP branch of each layer"}}},
      {"mean_loss", total.mean()},
      {"seconds", seconds},
      {"tokens_per_s", used / seconds},
      {"layers", layers},
      {"channels", {{"file", "channels.bin.zst"}, {"layout", "for each layer: taylor[n_ff] then fisher[n_ff], float32 little-endian"}, {"n_ff", n_ff}}},
      {"imatrix", {{"file", "imatrix.dat"}, {"format", "llama.cpp imatrix (legacy .dat), GGUF tensor names"}, {"ncall", chunks}}},
      {"fisher", {{"file", "fisher.dat"},
                  {"means", true},
                  {"format", "llama.cpp imatrix container; '<gguf name>:in' = per HF column E[x^2], '<gguf name>:out' = per HF row E[(n dL/dy)^2] (n = predictions per chunk: the per-token gradient scale); '<gguf name>:mean' = per HF column E[x] of a per-layer weight's input (pruning recovery); output projection included; an untied token_embd (a lookup of the one-hot token) has per-row token frequencies as ':out' and per-column E[(n dL/dx)^2] of the embedding output as ':in'"}}}};
  return r;
}

Imatrix fisher_factors_of(const ActivationStats& stats) {
  Imatrix m;
  for (const auto& [hf, e] : stats.entries)
    if (auto g = gguf::hf_to_gguf_name(hf)) m[*g + ":in"] = e.mean();
  for (const auto& [hf, e] : stats.output_grads)
    if (auto g = gguf::hf_to_gguf_name(hf)) m[*g + ":out"] = e.mean();
  for (const auto& [hf, e] : stats.input_sums)
    if (auto g = gguf::hf_to_gguf_name(hf)) m[*g + ":mean"] = e.mean();
  return m;
}

Imatrix imatrix_of(const ActivationStats& stats) {
  Imatrix m;
  for (const auto& [hf, e] : stats.entries) {
    if (hf == "lm_head.weight" || hf == "model.embed_tokens.weight") continue;  // as llama-imatrix: no output projection
    if (auto g = gguf::hf_to_gguf_name(hf)) m[*g] = e.mean();
  }
  return m;
}

void write_scores(const ScoreResult& r, const std::string& out_dir) {
  // The set appears together (core/io/staged_dir.hpp); scores.json, which stored_scores trusts
  // the folder by, moves last.
  StagedDir staged(out_dir);
  const std::string& dir = staged.path();
  std::vector<float> flat;
  for (size_t l = 0; l < r.taylor.ffn.size(); ++l) {
    for (double v : r.taylor.ffn[l]) flat.push_back(static_cast<float>(v));
    for (double v : r.fisher.ffn[l]) flat.push_back(static_cast<float>(v));
  }
  const size_t src = flat.size() * sizeof(float);
  std::string z(ZSTD_compressBound(src), '\0');
  const size_t zn = ZSTD_compress(z.data(), z.size(), flat.data(), src, 3);
  if (ZSTD_isError(zn)) fail(ExitCode::Runtime, "{}: zstd compression failed: {}", dir, ZSTD_getErrorName(zn));
  z.resize(zn);
  write_file_atomic((fs::path(dir) / "channels.bin.zst").string(), z);
  write_imatrix((fs::path(dir) / "imatrix.dat").string(), imatrix_of(r.stats), r.chunks,
                r.scores["calibration"]["path"].get<std::string>());
  write_imatrix((fs::path(dir) / "fisher.dat").string(), fisher_factors_of(r.stats), r.chunks,
                r.scores["calibration"]["path"].get<std::string>());
  if (r.stats.second_moments) write_moments_of(r.stats, dir);
  write_json_file((fs::path(dir) / "scores.json").string(), r.scores);
  staged.commit({"scores.json"});
}

void write_moments_of(const ActivationStats& stats, const std::string& dir) {
  // GGUF names: each input under the first weight that reads it; every weight mapped to its input.
  std::map<std::string, MomentSum> inputs;
  int64_t tokens = 0;
  for (const auto& [hf, m] : stats.moments)
    if (auto g = gguf::hf_to_gguf_name(hf)) {
      inputs[*g] = {m.n, m.sum.data()};
      tokens = m.count;
    }
  std::map<std::string, std::string> weights;
  for (const auto& [hf, e] : stats.entries) {
    const auto g = gguf::hf_to_gguf_name(hf);
    const auto named = arch::parse_hf_name(hf);
    if (!g || !named) continue;
    const std::string input = named->layer < 0 ? hf : arch::hf_name(arch::kind_of(named->kind->input_of), named->layer);
    if (auto gi = gguf::hf_to_gguf_name(input); gi && inputs.count(*gi)) weights[*g] = *gi;
  }
  write_moments(dir, inputs, weights, tokens);
}

std::optional<nlohmann::json> stored_scores(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt,
                                           const std::string& dir) {
  const fs::path scores = fs::path(dir) / "scores.json";
  std::error_code ec;
  for (const char* f : {"scores.json", "channels.bin.zst", "imatrix.dat", "fisher.dat"})
    if (!fs::is_regular_file(fs::path(dir) / f, ec)) return std::nullopt;
  nlohmann::json j;
  try {
    j = read_json_file(scores.string(), "scores");
  } catch (const Error&) {
    return std::nullopt;  // unreadable: score again (and overwrite it)
  }
  const auto sha_of = [](const std::string& path, const char* what) {
    const std::string t = read_text_file(path, what);
    return sha256_hex(std::as_bytes(std::span(t.data(), t.size())));
  };
  const auto at = [&](const char* a, const char* b) { return j.contains(a) && j[a].is_object() && j[a].contains(b) ? j[a][b] : nlohmann::json(); };
  if (j.value("format", "") != "squish.scores/1" || at("model", "path") != fs::absolute(model_dir).string() ||
      at("model", "config_sha256") != sha_of((fs::path(model_dir) / "config.json").string(), "config.json") ||
      at("calibration", "sha256") != sha_of(text_path, "calibration text") || at("calibration", "ctx") != opt.ctx ||
      at("calibration", "max_tokens") != opt.max_tokens)
    return std::nullopt;
  if (at("fisher", "means") != true) return std::nullopt;  // taken before the means were collected
  if (opt.moments && !(at("calibration", "moments") == true && fs::is_regular_file(fs::path(dir) / "moments" / "index.json", ec)))
    return std::nullopt;  // stored without the second moments this run needs
  // Weights rewritten after the scores were taken make them stale.
  const auto scored = fs::last_write_time(scores, ec);
  for (const auto& e : fs::directory_iterator(model_dir, ec))
    if (e.path().extension() == ".safetensors" && fs::last_write_time(e.path(), ec) > scored) return std::nullopt;
  if (ec) return std::nullopt;
  return j;
}

std::vector<std::pair<std::vector<float>, std::vector<float>>> read_channel_scores(const std::string& path, const std::vector<int>& n_ff) {
  const std::string z = read_text_file(path, "channel scores");
  size_t total = 0;
  for (int n : n_ff) total += 2 * static_cast<size_t>(n);
  std::vector<float> flat(total);
  const size_t got = ZSTD_decompress(flat.data(), total * sizeof(float), z.data(), z.size());
  if (ZSTD_isError(got) || got != total * sizeof(float)) fail(ExitCode::InputData, "{}: corrupt or mismatched channel scores", path);
  std::vector<std::pair<std::vector<float>, std::vector<float>>> out;
  size_t o = 0;
  for (int n : n_ff) {
    std::vector<float> t(flat.begin() + o, flat.begin() + o + n), f(flat.begin() + o + n, flat.begin() + o + 2 * n);
    o += 2 * static_cast<size_t>(n);
    out.emplace_back(std::move(t), std::move(f));
  }
  return out;
}

}  // namespace squish::score
