#include "stages/score/scorer.hpp"

#include "core/convert/hf_to_gguf.hpp"
#include "core/io/moments.hpp"
#include "core/io/score_folder.hpp"
#include "core/io/sha256.hpp"
#include "core/io/spill_store.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"
#include "core/runtime/events.hpp"
#include "core/base/memory.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "core/runtime/ranks.hpp"

#include <fmt/ranges.h>

#include <chrono>
#include <filesystem>
#include <set>

namespace fs = std::filesystem;

namespace squish::score {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Float32 bytes of layer l's weights (norms, projections, biases).
uint64_t layer_bytes(const ModelArch& a, int l) {
  const auto& s = a.layers[l];
  const uint64_t D = a.n_embd, Q = uint64_t(s.n_head) * a.head_dim, KV = uint64_t(s.n_head_kv) * a.head_dim, FF = s.n_ff;
  return (2 * D + (Q + 2 * KV) * (D + 1) + D * (Q + 1) + FF * D * 3 + D) * sizeof(float);
}

enum class MomentsHeld { None, AllLayers, OneLayer };

// Bytes of the statistics a run accumulates: importance sums, activation and gradient sums,
// and the second moments when asked for: every layer's, or (streamed) one layer's at a time
// plus the writer's copy of the largest input (its upper triangle and that compressed).
uint64_t statistics_bytes(const ModelArch& a, MomentsHeld moments) {
  uint64_t doubles = 4 * MaskSet::filled(a, 0.0).count(), all = 0, largest_layer = 0, largest_input = a.n_embd;
  for (int l = 0; l < a.n_layer(); ++l) {
    const auto& s = a.layers[l];
    const uint64_t D = a.n_embd, Q = uint64_t(s.n_head) * a.head_dim, KV = uint64_t(s.n_head_kv) * a.head_dim, FF = s.n_ff;
    doubles += 2 * (5 * D + Q + FF) + (Q + 2 * KV + 2 * D + 2 * FF);
    const uint64_t layer = 2 * D * D + Q * Q + FF * FF;
    all += layer;
    largest_layer = std::max(largest_layer, layer);
    largest_input = std::max({largest_input, Q, FF});
  }
  doubles += 3 * uint64_t(a.n_embd) + a.n_vocab;
  const uint64_t head = uint64_t(a.n_embd) * a.n_embd;
  uint64_t floats = 0;
  if (moments == MomentsHeld::AllLayers) floats = all + head;
  if (moments == MomentsHeld::OneLayer) floats = std::max(largest_layer, head) + largest_input * (largest_input + 1);
  return doubles * sizeof(double) + floats * sizeof(float);
}

std::string mib(uint64_t b) { return fmt::format("{:.1f} MiB", double(b) / kMiB); }

// Every statistic summed over the ranks (maps walked in key order, the same keys everywhere).
void sum_over_ranks(const Ranks& ranks, const std::string& model_dir, MaskImportance& importance, ActivationStats& stats,
                    LossResult& loss, int chunks) {
  // The same statistics of the same sizes on every rank, or no sum is taken (a mismatched
  // collective would hang or mix values).
  std::string keys = fmt::format("masks:{};", importance.sums().size());
  std::vector<int64_t> counts = {loss.count, chunks};
  const auto walk = [&](auto&& fn) {
    for (auto* m : {&stats.entries, &stats.output_grads, &stats.input_sums})
      for (auto& [k, e] : *m) fn(k, e.sum_sq.size(), e.count);
    for (auto& [k, m] : stats.moments)
      if (!m.released) fn(k, m.sum.size(), m.count);  // released ones were summed when complete
  };
  walk([&](const std::string& k, size_t n, int64_t& c) {
    keys += fmt::format("{}:{};", k, n);
    counts.push_back(c);
  });
  if (ranks.broadcast(keys) != keys)
    fail(ExitCode::InputData, "rank {}: {}: the statistics collected differ from rank 0's (a different model here)", ranks.rank(),
         model_dir);
  std::vector<double> sums = importance.sums();
  sums.push_back(loss.nll_sum);
  ranks.sum(sums);
  loss.nll_sum = sums.back();
  sums.pop_back();
  ranks.sum(counts);
  loss.count = counts[0];
  importance.set_sums(sums, static_cast<int>(counts[1]));
  size_t i = 2;
  walk([&](const std::string&, size_t, int64_t& c) { c = counts[i++]; });
  for (auto* m : {&stats.entries, &stats.output_grads, &stats.input_sums})
    for (auto& [k, e] : *m) ranks.sum(std::span(e.sum_sq));
  for (auto& [k, m] : stats.moments)
    if (!m.released) ranks.sum(std::span(m.sum));
}

// Hands the second moments of layer l's inputs (l = n_layer: the output head's) to `sink` once
// they are complete, summed over the ranks (rank 0's sink is called), and frees them.
void release_moments(const Ranks& ranks, const ModelArch& a, ActivationStats& stats, int l, const MomentSink& sink) {
  for (auto& [hf, m] : stats.moments) {  // key order: the same collectives on every rank
    const auto named = arch::parse_hf_name(hf);
    const int layer = named && named->layer >= 0 ? named->layer : a.n_layer();
    if (m.released || layer != l) continue;
    if (ranks.distributed()) {
      ranks.sum(std::span(m.sum));
      std::vector<int64_t> count{m.count};
      ranks.sum(count);
      m.count = count[0];
    }
    const auto gguf = gguf::hf_to_gguf_name(hf);
    if (!gguf) fail(ExitCode::Runtime, "second moments of {}: no GGUF name", hf);
    if (ranks.rank() == 0) sink(*gguf, MomentSum{m.n, m.sum.data()}, m.count);
    std::vector<float>().swap(m.sum);
    m.released = true;
  }
}

}  // namespace

namespace {

// The calibration text as this rank sees it: its tokens, the chunks, this rank's share, and what
// every rank must agree on (checked against rank 0 before any work).
struct Calibration {
  ModelConfig cfg;
  std::string config_text, text;
  SafetensorsModel header;
  std::vector<int32_t> tokens{};
  size_t n_all = 0;  // tokens in the whole text
  int chunks = 0, c0 = 0, c1 = 0;
};

Calibration load_calibration(const Ranks& ranks, const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt) {
  Calibration c{ModelConfig::load(model_dir), read_text_file((fs::path(model_dir) / "config.json").string(), "config.json"),
                read_text_file(text_path, "calibration text"), SafetensorsModel::open(model_dir)};
  Tokenizer tok(Vocab::from_tokenizer_json((fs::path(model_dir) / "tokenizer.json").string(), c.cfg.vocab_size));
  c.tokens = tok.encode(c.text, true);
  c.n_all = c.tokens.size();
  if (opt.max_tokens > 0 && c.tokens.size() > static_cast<size_t>(opt.max_tokens)) c.tokens.resize(opt.max_tokens);
  c.chunks = static_cast<int>(c.tokens.size() / opt.ctx);
  if (c.chunks == 0)
    fail(ExitCode::InputData, "{}: {} tokens is less than one chunk of {}", text_path, c.tokens.size(), opt.ctx);
  if (ranks.size() > c.chunks)
    fail(ExitCode::Usage, "{}: {} chunks of {} tokens cannot be shared by {} ranks; use at most {} ranks", text_path, c.chunks,
         opt.ctx, ranks.size(), c.chunks);
  // Every rank must score the same thing: per-node copies of the model or text could differ.
  // Compared: config.json, the checkpoint's tensor names, dtypes and shapes (not the weights'
  // values: hashing them would read the whole model once more), the text and the settings.
  std::string tensors;
  for (const auto& e : c.header.entries()) tensors += fmt::format("{}:{}:{};", e.name, static_cast<int>(e.dtype), fmt::join(e.shape, "x"));
  const auto sha = [](const std::string& t) { return sha256_hex(std::as_bytes(std::span(t.data(), t.size()))); };
  const std::string fingerprint = fmt::format("config {} tensors {} text {} tokens {} ctx {} moments {}", sha(c.config_text),
                                              sha(tensors), sha(c.text), c.tokens.size(), opt.ctx, opt.moments);
  if (const std::string root = ranks.broadcast(fingerprint); root != fingerprint)
    fail(ExitCode::InputData, "rank {}: {} or the checkpoint in {} differs from rank 0's ({} here, {} there)", ranks.rank(),
         text_path, model_dir, fingerprint, root);
  c.c0 = static_cast<int>(int64_t(c.chunks) * ranks.rank() / ranks.size());
  c.c1 = static_cast<int>(int64_t(c.chunks) * (ranks.rank() + 1) / ranks.size());
  return c;
}

// How scoring fits in memory, decided from the checkpoint's header before any weight is loaded.
struct MemoryPlan {
  bool layer_major = false;   // layer by layer over all chunks (else chunk by chunk)
  bool stream_moments = false;
  bool keep_layers = true;    // layers stay resident once read
  uint64_t baseline = 0;      // the process before the model (code, libraries, text, tokens)
  uint64_t fixed = 0;         // baseline + weights held + work buffers + statistics
  uint64_t activation_memory = 0;  // layer-major checkpoints and gradients kept in memory
  uint64_t kept_memory = 0;        // the top layers' forward activations, kept for their backward
};

MemoryPlan plan_memory(const ModelArch& a, const Calibration& cal, const std::string& model_dir, const ScoreOptions& opt) {
  MemoryPlan m;
  // Moments handed on layer by layer need the layer-major pass (each layer sees every chunk
  // before the next); so does an explicit bound.
  m.stream_moments = opt.moments && opt.moment_sink;
  m.layer_major = opt.memory > 0 || m.stream_moments;
  // What the process holds already is inside the bound, so the bound is on the whole process.
  m.baseline = current_rss_bytes();
  const uint64_t global_bytes = (uint64_t(a.n_vocab) * a.n_embd * (a.tie_embeddings ? 1 : 2) + a.n_embd) * sizeof(float);
  uint64_t all_layers = 0, one_layer = 0;
  for (int l = 0; l < a.n_layer(); ++l) all_layers += layer_bytes(a, l), one_layer = std::max(one_layer, layer_bytes(a, l));
  const uint64_t work = Transformer::work_bytes(a, opt.ctx, opt.threads);
  const uint64_t statistics =
      statistics_bytes(a, !opt.moments ? MomentsHeld::None : m.stream_moments ? MomentsHeld::OneLayer : MomentsHeld::AllLayers);
  // While a tensor is converted its source pages are resident too (released right after).
  uint64_t largest_source = 0;
  for (const auto& e : cal.header.entries()) largest_source = std::max<uint64_t>(largest_source, e.nbytes);
  const uint64_t activations = uint64_t(cal.c1 - cal.c0) * (a.n_layer() + 2) * uint64_t(opt.ctx) * a.n_embd * sizeof(float);
  // The bound: the one given, else what the machine has. The layer-major pass holds one layer
  // at a time: it reads each layer twice (forward, then backward), but the page cache keeps the
  // source bytes without counting against the process, and converting a layer to float takes
  // a second against minutes of compute, while keeping them all would hold the whole float32
  // model (8 GB for a 4-layer slice of a 32B).
  const uint64_t available = available_memory_bytes();
  const uint64_t bound = opt.memory > 0 ? opt.memory : available > UINT64_MAX - m.baseline ? UINT64_MAX : m.baseline + available;
  const uint64_t fixed_all = m.baseline + global_bytes + all_layers + largest_source + work + statistics;
  m.keep_layers = !m.layer_major;
  m.fixed = m.keep_layers ? fixed_all : fixed_all - all_layers + one_layer;
  const std::string what = fmt::format("{}: scoring (float32 globals {}, {} {}, work buffers {}, statistics {})", model_dir,
                                       mib(global_bytes), m.keep_layers ? "all layers" : "one layer",
                                       mib(m.keep_layers ? all_layers : one_layer), mib(work), mib(statistics));
  if (!m.layer_major) {
    require_memory(m.fixed - m.baseline, what + "; --set memory=<bytes> scores layer by layer within that bound");
    return m;
  }
  // Freed layers go back to the system at once: every Squish executable sets glibc's mmap
  // threshold to 1 MiB at start-up (core/cli/process_startup.cpp).
  if (m.fixed > bound)
    fail(opt.memory > 0 ? ExitCode::Usage : ExitCode::Runtime,
         "{}: {} is below the {} that scoring this model layer by layer needs (process and text {}, float32 globals {}, one layer {} and the source of its largest tensor {}, work buffers {}, statistics {})",
         model_dir, opt.memory > 0 ? fmt::format("memory={}", opt.memory) : fmt::format("the {} available", mib(bound)), mib(m.fixed),
         mib(m.baseline), mib(global_bytes), mib(one_layer), mib(largest_source), mib(work), mib(statistics));
  m.activation_memory = std::min(bound - m.fixed, activations);
  // Memory beyond that keeps the top layers' forward activations for their backward, which then
  // does not recompute them (a third of a layer's work): up to a given bound, or up to half of
  // the memory available, the other half left to the page cache and the rest of the machine.
  const uint64_t for_speed = opt.memory > 0 ? bound : bound / 2;
  if (m.activation_memory == activations && for_speed > m.fixed + activations) m.kept_memory = for_speed - m.fixed - activations;
  require_memory(m.fixed - m.baseline + m.activation_memory, what);  // the baseline is resident already
  if (m.activation_memory < activations) SpillStore::check_folder(opt.scratch_dir);  // before any work, not at the first spill
  return m;
}

// This rank's chunks through the model: importance, statistics (moments handed on when
// streamed) and the loss.
LossResult run_pass(const Ranks& ranks, const std::string& model_dir, const ModelArch& a, const Calibration& cal,
                    const MemoryPlan& mem, const ScoreOptions& opt, MaskImportance& importance, ActivationStats& stats,
                    LayerMajorReport& report) {
  TransformerOptions topt;
  topt.threads = opt.threads;
  Transformer model(SafetensorsWeights::open(model_dir, mem.keep_layers), topt);
  const uint64_t mine = static_cast<uint64_t>(cal.c1 - cal.c0) * opt.ctx;
  const bool report_progress = opt.progress && ranks.rank() == 0;  // one progress stream per run
  if (mem.layer_major) {
    LayerMajorOptions lo;
    lo.activation_memory = mem.activation_memory;
    lo.scratch_dir = opt.scratch_dir;
    lo.kept_memory = mem.kept_memory;
    if (report_progress) lo.progress = [&](uint64_t d, uint64_t t) { opt.progress(d * mine / t, mine); };
    if (mem.stream_moments) lo.forward_done = [&](int l) { release_moments(ranks, a, stats, l, opt.moment_sink); };
    return model.mask_importance_by_layer(cal.tokens, opt.ctx, cal.c0, cal.c1, importance, &stats, lo, &report);
  }
  LossResult total;
  const MaskSet ones = MaskSet::ones(a);
  MaskSet grads;
  for (int c = cal.c0; c < cal.c1; ++c) {
    auto lr = model.loss_and_mask_grads(std::span(cal.tokens).subspan(size_t(c) * opt.ctx, opt.ctx), 0, ones, grads, &stats);
    importance.add(ones, grads);
    total.nll_sum += lr.nll_sum;
    total.count += lr.count;
    if (report_progress) opt.progress(static_cast<uint64_t>(c + 1 - cal.c0) * opt.ctx, mine);
  }
  return total;
}

// scores.json's "run": how it ran, with each rank's peak RSS and scratch bytes.
nlohmann::json run_record(const Ranks& ranks, const MemoryPlan& mem, const ScoreOptions& opt, const LayerMajorReport& report) {
  // Slot r of a vector summed over the ranks.
  std::vector<int64_t> per_rank(3 * size_t(ranks.size()), 0);
  per_rank[3 * ranks.rank()] = static_cast<int64_t>(peak_rss_bytes());
  per_rank[3 * ranks.rank() + 1] = static_cast<int64_t>(report.scratch_bytes_peak);
  per_rank[3 * ranks.rank() + 2] = static_cast<int64_t>(report.scratch_bytes_written + report.scratch_bytes_read);
  ranks.sum(per_rank);
  nlohmann::json rss = nlohmann::json::array(), scratch = nlohmann::json::array(), scratch_io = nlohmann::json::array();
  for (int k = 0; k < ranks.size(); ++k)
    rss.push_back(per_rank[3 * k]), scratch.push_back(per_rank[3 * k + 1]), scratch_io.push_back(per_rank[3 * k + 2]);
  return {{"ranks", ranks.size()},
          {"mode", mem.layer_major ? "layer-major" : "in-memory"},
          {"layers_kept", mem.keep_layers},
          {"moments_streamed", mem.stream_moments},
          {"memory", opt.memory},
          {"planned_bytes", mem.fixed + mem.activation_memory + report.kept_activation_bytes},
          {"baseline_rss_bytes", mem.baseline},
          {"activation_memory_bytes", mem.layer_major ? report.activation_memory_bytes : 0},
          {"layers_not_recomputed", report.layers_not_recomputed},
          {"kept_activation_bytes", report.kept_activation_bytes},
          {"peak_rss_bytes", rss},
          {"scratch_bytes_peak", scratch},
          {"scratch_bytes_moved", scratch_io}};
}

nlohmann::json scores_document(const std::string& model_dir, const std::string& text_path, const ModelArch& a, const Calibration& cal,
                               const ScoreOptions& opt, const ScoreResult& r, const LossResult& total, double seconds) {
  ScoresSummary summary;
  summary.model = {fs::absolute(model_dir).string(), cal.cfg.arch,
                   sha256_hex(std::as_bytes(std::span(cal.config_text.data(), cal.config_text.size()))), a.n_layer(), a.head_dim};
  const uint64_t used = static_cast<uint64_t>(cal.chunks) * opt.ctx;
  auto& c = summary.calibration;
  c.path = fs::absolute(text_path).string();
  c.sha256 = sha256_hex(std::as_bytes(std::span(cal.text.data(), cal.text.size())));
  c.bytes = cal.text.size();
  c.tokens = cal.n_all;
  c.tokens_used = used;
  c.chunks = cal.chunks;
  c.ctx = opt.ctx;
  c.max_tokens = opt.max_tokens;
  c.moments = opt.moments;
  summary.method = {{"name", "mask-gradient"},
                    {"taylor", "E|m * dL/dm| over chunks (first-order Taylor importance; LLM-Pruner)"},
                    {"fisher", "E[(dL/dm)^2] over chunks (Michel et al. 2019)"},
                    {"loss", "next-token cross-entropy, mean over each chunk's positions"},
                    {"masks", "q head output (before o_proj); KV group (all its q heads' outputs); FFN channel (after silu(gate)*up); attention and MLP branch of each layer"}};
  summary.mean_loss = total.mean();
  summary.seconds = seconds;
  summary.tokens_per_s = used / seconds;
  summary.run = r.run;
  for (int l = 0; l < a.n_layer(); ++l)
    summary.layers.push_back({a.layers[l].n_head,
                              a.layers[l].n_head_kv,
                              a.layers[l].n_ff,
                              {r.taylor.head[l], r.fisher.head[l]},
                              {r.taylor.kv[l], r.fisher.kv[l]},
                              {r.taylor.attn[l], r.fisher.attn[l]},
                              {r.taylor.mlp[l], r.fisher.mlp[l]}});
  return summary.to_json();
}

}  // namespace

ScoreResult score_model(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt) {
  if (opt.ctx < 8) fail(ExitCode::Usage, "score: ctx {} is too short", opt.ctx);
  const auto t0 = std::chrono::steady_clock::now();
  const Ranks& ranks = Ranks::world();
  const Calibration cal = load_calibration(ranks, model_dir, text_path, opt);
  const ModelArch a = arch_from_checkpoint(cal.cfg, cal.header);
  const MemoryPlan mem = plan_memory(a, cal, model_dir, opt);

  MaskImportance importance(a);
  ScoreResult r;
  r.stats.second_moments = opt.moments;
  LayerMajorReport report;
  LossResult total = run_pass(ranks, model_dir, a, cal, mem, opt, importance, r.stats, report);
  r.run = run_record(ranks, mem, opt, report);
  if (ranks.distributed()) sum_over_ranks(ranks, model_dir, importance, r.stats, total, cal.c1 - cal.c0);
  r.chunks = cal.chunks;
  r.taylor = importance.taylor();
  r.fisher = importance.fisher();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.scores = scores_document(model_dir, text_path, a, cal, opt, r, total, seconds);
  return r;
}

FisherFactors fisher_factors_of(const ActivationStats& stats) {
  FisherFactors f;
  for (const auto& [hf, e] : stats.entries)
    if (auto g = gguf::hf_to_gguf_name(hf)) f.set(*g, FisherFactor::In, e.mean());
  for (const auto& [hf, e] : stats.output_grads)
    if (auto g = gguf::hf_to_gguf_name(hf)) f.set(*g, FisherFactor::Out, e.mean());
  for (const auto& [hf, e] : stats.input_sums)
    if (auto g = gguf::hf_to_gguf_name(hf)) f.set(*g, FisherFactor::Mean, e.mean());
  return f;
}

Imatrix imatrix_of(const ActivationStats& stats) {
  Imatrix m;
  for (const auto& [hf, e] : stats.entries) {
    // As llama-imatrix: no output projection (nor a tied embedding's).
    if (const auto named = arch::parse_hf_name(hf); named && (named->kind->role == arch::Role::Output || named->kind->role == arch::Role::TokenEmbd))
      continue;
    if (auto g = gguf::hf_to_gguf_name(hf)) m[*g] = e.mean();
  }
  return m;
}

namespace {

// Second moments by GGUF name: each input under the first weight that reads it (those still
// held; released ones were written already); every weight mapped to its input.
struct MomentMaps {
  std::map<std::string, MomentSum> inputs;
  std::map<std::string, std::string> weights;
  int64_t tokens = 0;
};
MomentMaps moment_maps_of(const ActivationStats& stats) {
  MomentMaps m;
  std::set<std::string> all_inputs;
  for (const auto& [hf, s] : stats.moments)
    if (auto g = gguf::hf_to_gguf_name(hf)) {
      all_inputs.insert(*g);
      if (!s.released) m.inputs[*g] = {s.n, s.sum.data()};
      m.tokens = s.count;
    }
  for (const auto& [hf, e] : stats.entries) {
    const auto g = gguf::hf_to_gguf_name(hf);
    const auto named = arch::parse_hf_name(hf);
    if (!g || !named) continue;
    const std::string input = named->layer < 0 ? hf : arch::hf_name(arch::kind_of(named->kind->input_of), named->layer);
    if (auto gi = gguf::hf_to_gguf_name(input); gi && all_inputs.count(*gi)) m.weights[*g] = *gi;
  }
  return m;
}

}  // namespace

void write_scores(const ScoreResult& r, const std::string& out_dir) {
  ScoreFolderWriter out(out_dir);
  write_scores(r, out);
}

void write_scores(const ScoreResult& r, ScoreFolderWriter& out) {
  // The set appears together (core/io/score_folder.hpp); scores.json, which stored_scores trusts
  // the folder by, moves last.
  std::vector<ChannelScores> channels;
  for (size_t l = 0; l < r.taylor.ffn.size(); ++l) {
    ChannelScores c;
    for (double v : r.taylor.ffn[l]) c.taylor.push_back(static_cast<float>(v));
    for (double v : r.fisher.ffn[l]) c.fisher.push_back(static_cast<float>(v));
    channels.push_back(std::move(c));
  }
  out.write_channels(channels);
  const std::string dataset = r.scores["calibration"]["path"].get<std::string>();
  out.write_imatrix(imatrix_of(r.stats), r.chunks, dataset);
  out.write_fisher(fisher_factors_of(r.stats), r.chunks, dataset);
  if (r.stats.second_moments) {
    const MomentMaps m = moment_maps_of(r.stats);
    out.write_moments(m.inputs, m.weights, m.tokens);
  }
  out.commit(r.scores);
}

std::optional<nlohmann::json> stored_scores(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt,
                                           const std::string& dir) {
  const ScoreFolder folder(dir);
  if (!folder.complete()) return std::nullopt;
  std::optional<ScoresFile> scores;
  try {
    scores = folder.scores();
  } catch (const Error&) {
    return std::nullopt;  // unreadable: score again (and overwrite it)
  }
  const auto sha_of = [](const std::string& path, const char* what) {
    const std::string t = read_text_file(path, what);
    return sha256_hex(std::as_bytes(std::span(t.data(), t.size())));
  };
  if (!scores->taken_from(fs::absolute(model_dir).string(), sha_of((fs::path(model_dir) / "config.json").string(), "config.json"),
                          sha_of(text_path, "calibration text"), opt.ctx, opt.max_tokens, opt.moments))
    return std::nullopt;
  if (opt.moments && !folder.has_moments()) return std::nullopt;  // stored without the second moments this run needs
  // Weights rewritten after the scores were taken make them stale.
  std::error_code ec;
  const auto scored = fs::last_write_time(folder.scores_path(), ec);
  for (const auto& e : fs::directory_iterator(model_dir, ec))
    if (e.path().extension() == ".safetensors" && fs::last_write_time(e.path(), ec) > scored) return std::nullopt;
  if (ec) return std::nullopt;
  return scores->json();
}

}  // namespace squish::score
