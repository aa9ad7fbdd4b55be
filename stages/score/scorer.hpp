#pragma once
// The score stage: calibration text -> importance of every q head, KV group, FFN channel and
// layer branch (gradients of scalar masks, Michel et al. 2019 / LLM-Pruner Taylor importance),
// plus per-column activation statistics (llama.cpp's imatrix). Pure C++ on the CPU.
// Output format: docs/scores.md.
#include "core/io/imatrix.hpp"
#include "core/io/score_folder.hpp"
#include "core/model/transformer.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>

namespace squish::score {

// Receives one input's second moments (GGUF name of the first weight reading it; Σ x xᵀ over
// `tokens`) as soon as they are complete.
using MomentSink = std::function<void(const std::string& key, MomentSum sum, int64_t tokens)>;

struct ScoreOptions {
  int ctx = 512;         // tokens per chunk (next-token cross-entropy over the whole chunk)
  int64_t max_tokens = 0;  // 0 = the whole text
  bool moments = false;    // also Σ x xᵀ of every linear input (moments/, for GPTQ): n² floats each
  int threads = 0;
  // 0: the whole float32 model in memory, chunk after chunk. Otherwise a bound in bytes on what
  // scoring holds (weights, activations, work buffers, statistics): layers are read from the
  // checkpoint one at a time and every chunk goes through a layer before the next layer is
  // read (layer-major); activation checkpoints beyond the bound go to a scratch file. The same
  // scores either way.
  uint64_t memory = 0;
  std::string scratch_dir;  // the scratch file's folder (unnamed file; "" = the current folder)
  std::function<void(uint64_t done, uint64_t total)> progress;  // tokens
  // With moments: when set, each layer's second moments are summed over the ranks and handed to
  // the sink (on rank 0; set it on every rank) as soon as that layer's forward has seen every
  // chunk, then freed, so scoring holds one layer's moments at a time (they are not in the
  // result's stats). This takes the layer-major pass; without a memory bound it keeps every
  // layer when they fit in the memory available.
  MomentSink moment_sink;
};

// The scores.json already in `dir` when it was taken from this model (same folder, config.json
// and weights not newer), this calibration text (same SHA-256) and these options, with all its
// artifacts beside it; nullopt otherwise.
std::optional<nlohmann::json> stored_scores(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt,
                                           const std::string& dir);

struct ScoreResult {
  nlohmann::json scores;   // the scores.json document
  MaskSet taylor, fisher;  // E|m dL/dm| and E[(dL/dm)^2] per mask
  ActivationStats stats;
  int chunks = 0;
  nlohmann::json run;  // how it ran: ranks, mode, memory bound, peak RSS and scratch bytes per rank
};

// Scores the model in `model_dir` (HF folder) on the text file `text_path`. Launched by mpirun
// (core/runtime/ranks.hpp), each rank scores its share of the chunks and every statistic is
// summed over the ranks: all ranks return the same result.
ScoreResult score_model(const std::string& model_dir, const std::string& text_path, const ScoreOptions& opt);

// Writes the score folder `dir` (core/io/score_folder.hpp, docs/scores.md): scores.json, the
// per-layer FFN channel Taylor and Fisher scores, the imatrix (llama.cpp's format, GGUF tensor
// names), the Fisher factors (fisher_factors_of, the plan stage's sensitivity input) and, when
// collected, the second moments. The set appears together. Creates `dir` if needed.
void write_scores(const ScoreResult& r, const std::string& dir);
// The same into a writer that may hold moments already (ScoreOptions::moment_sink), committed.
void write_scores(const ScoreResult& r, ScoreFolderWriter& out);

// Activation statistics as an importance matrix keyed by GGUF tensor names (core/io/imatrix.hpp).
Imatrix imatrix_of(const ActivationStats& stats);
// The two factors of the diagonal Fisher estimate of every weight, by GGUF name: per input
// column E[x^2], per output row E[(n dL/dy)^2] (n = predictions per chunk), and the input's
// per-column mean E[x] (core/io/score_folder.hpp: FisherFactor).
FisherFactors fisher_factors_of(const ActivationStats& stats);

}  // namespace squish::score
