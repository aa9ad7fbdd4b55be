#pragma once
// The score stage's output folder (docs/scores.md), written and read here only: its file names,
// the key convention of fisher.dat, the scores.json fields other code reads, and the channel
// scores' layout. The score stage writes it (ScoreFolderWriter); plan and compress read it
// (ScoreFolder). moments/ has its own owner (core/io/moments.hpp); this one opens it.
//
//   scores.json       squish.scores/1: where the scores come from, per layer unit scores
//   imatrix.dat       llama.cpp's importance matrix (core/io/imatrix.hpp), GGUF weight names
//   fisher.dat        the same container: "<gguf weight name>:in" (per column E[x²] of the
//                     weight's input), ":out" (per row E[(n·∂L/∂y)²]), ":mean" (per column E[x])
//   channels.bin.zst  zstd of float32 LE: for each layer taylor[n_ff] then fisher[n_ff]
//   moments/          E[x xᵀ] of every linear input (core/io/moments.hpp)
//
// Errors for a missing or malformed file are Error(InputData), one line naming the file.
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/io/staged_dir.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace squish {

// ---- fisher.dat ------------------------------------------------------------------------------

// The three per-weight vectors of fisher.dat.
enum class FisherFactor {
  In,    // ":in"   per HF column E[x²] of the weight's input (an untied embedding: E[(n dL/dx)²])
  Out,   // ":out"  per HF row E[(n dL/dy)²] (an untied embedding: per-row token frequency)
  Mean,  // ":mean" per HF column E[x] of a per-layer weight's input (pruning recovery)
};

// "<gguf weight name>:in" / ":out" / ":mean".
std::string fisher_key(const std::string& gguf_weight, FisherFactor f);

class FisherFactors {
 public:
  void set(const std::string& gguf_weight, FisherFactor f, std::vector<float> values);
  bool has(const std::string& gguf_weight, FisherFactor f) const;
  // The factor of a weight with exactly n values. Throws Error(InputData)
  // "<fisher.dat>: no entry '<key>' (<what the factor is>): re-run the score stage" or
  // "<fisher.dat>: entry '<key>' has N values, the tensor n".
  const std::vector<float>& at(const std::string& gguf_weight, FisherFactor f, size_t n) const;
  const Imatrix& entries() const { return entries_; }  // by key, as fisher.dat stores them
  const std::string& path() const { return path_; }    // the file read ("" when built in memory)

  static FisherFactors read(const std::string& path);
  void write(const std::string& path, int ncall, const std::string& dataset) const;

 private:
  std::string path_;
  Imatrix entries_;
};

// ---- scores.json -----------------------------------------------------------------------------

// The two importance measures of every mask, and the mask groups of a layer.
enum class ScoreMeasure { Taylor, Fisher };
enum class ScoreUnits { Heads, KvGroups };
enum class ScoreBranch { Attn, Mlp };
// "taylor" / "fisher" (a parameter's value); nullopt for anything else.
std::optional<ScoreMeasure> score_measure_from_name(const std::string& name);

struct UnitScores {
  std::vector<double> taylor, fisher;
};
struct BranchScore {
  double taylor = 0, fisher = 0;
};
struct LayerScores {
  int n_head = 0, n_head_kv = 0, n_ff = 0;
  UnitScores heads, kv_groups;  // per q head, per KV group
  BranchScore attn, mlp;        // the layer's two branches
};

// What scores.json holds. `method` and `run` are the score stage's own free-form records.
struct ScoresSummary {
  struct Model {
    std::string path, arch, config_sha256;  // config.json's SHA-256
    int n_layer = 0, head_dim = 0;
  } model;
  struct Calibration {
    std::string path, sha256;
    uint64_t bytes = 0, tokens = 0, tokens_used = 0;
    int chunks = 0, ctx = 0;
    int64_t max_tokens = 0;
    bool moments = false;  // moments/ written beside
  } calibration;
  nlohmann::json method, run;
  double mean_loss = 0, seconds = 0, tokens_per_s = 0;
  std::vector<LayerScores> layers;
  // The squish.scores/1 document, with the entries describing the folder's other files.
  nlohmann::json to_json() const;
};

// scores.json as read back.
class ScoresFile {
 public:
  // Throws Error(InputData) "<path>: cannot open scores" / "... is not valid JSON" /
  // "<path>: format is not squish.scores/1".
  static ScoresFile read(const std::string& path);
  // True when the scores were taken from this model folder (absolute path), config.json
  // (SHA-256), calibration text (SHA-256) and settings, with the statistics this version writes
  // (input means), and with the second moments when `moments` asks for them.
  bool taken_from(const std::string& model_path, const std::string& config_sha256, const std::string& text_sha256, int ctx,
                  int64_t max_tokens, bool moments) const;
  // layers[l].<units>.<measure>, n values. Throws Error(InputData) naming the file and field.
  std::vector<double> unit_scores(int layer, ScoreUnits u, ScoreMeasure m, size_t n) const;
  // layers[l].<branch>.taylor.
  double branch_taylor(int layer, ScoreBranch b) const;
  const nlohmann::json& json() const { return j_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  nlohmann::json j_;
};

// ---- channels.bin.zst ------------------------------------------------------------------------

struct ChannelScores {
  std::vector<float> taylor, fisher;  // per FFN channel
};

// ---- the folder --------------------------------------------------------------------------------

class ScoreFolder {
 public:
  // The file names (for paths use the accessors below; these are for texts that name a file).
  static constexpr const char* kScoresFile = "scores.json";
  static constexpr const char* kImatrixFile = "imatrix.dat";
  static constexpr const char* kFisherFile = "fisher.dat";
  static constexpr const char* kChannelsFile = "channels.bin.zst";
  static constexpr const char* kScoresFormat = "squish.scores/1";

  explicit ScoreFolder(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }

  std::string scores_path() const;
  std::string imatrix_path() const;
  std::string fisher_path() const;
  std::string channels_path() const;
  // Every file of the set is there (moments/ aside: optional).
  bool complete() const;
  bool has_moments() const;

  ScoresFile scores() const;
  Imatrix imatrix() const;                         // Throws Error(InputData) naming the file.
  std::optional<Imatrix> imatrix_if_present() const;
  FisherFactors fisher() const;
  // Per layer with n_ff[l] channels. Throws Error(InputData) for a damaged or mismatched file.
  std::vector<ChannelScores> channels(const std::vector<int>& n_ff) const;
  std::optional<Moments> moments() const;
  // The moments, or Error(InputData) "<dir>: no moments/ (<why>): score with --set moments=true<hint>".
  Moments require_moments(const std::string& why, const std::string& hint = "") const;

 private:
  std::string dir_;
};

// Writes a score folder as one set (core/io/staged_dir.hpp): every file into a staging folder,
// scores.json last; commit() moves them into `dir`. Destroyed uncommitted, nothing is left.
class ScoreFolderWriter {
 public:
  explicit ScoreFolderWriter(const std::string& dir);
  void write_channels(const std::vector<ChannelScores>& layers);
  // `ncall` (calibration chunks) and `dataset` (the text's path) as llama.cpp records them.
  void write_imatrix(const Imatrix& means, int ncall, const std::string& dataset);
  void write_fisher(const FisherFactors& f, int ncall, const std::string& dataset);
  // One input's second moments, as soon as they are complete (the score stage streams them
  // layer by layer); the index is written by write_moments.
  void write_moment(const std::string& key, MomentSum m, int64_t tokens);
  // The given inputs' files, then moments/index.json over them and every write_moment before.
  void write_moments(const std::map<std::string, MomentSum>& inputs, const std::map<std::string, std::string>& weights, int64_t tokens);
  void commit(const nlohmann::json& scores);

 private:
  StagedDir staged_;
  ScoreFolder staging_;
  std::map<std::string, MomentFile> moment_files_;
};

}  // namespace squish
