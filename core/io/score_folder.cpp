#include "core/io/score_folder.hpp"

#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include <zstd.h>

#include <filesystem>

namespace fs = std::filesystem;

namespace squish {

namespace {

constexpr const char* kFormat = ScoreFolder::kScoresFormat;
constexpr const char* kScoresFile = ScoreFolder::kScoresFile;
constexpr const char* kImatrixFile = ScoreFolder::kImatrixFile;
constexpr const char* kFisherFile = ScoreFolder::kFisherFile;
constexpr const char* kChannelsFile = ScoreFolder::kChannelsFile;

struct FactorName {
  FisherFactor factor;
  const char* suffix;
  const char* what;  // for "no entry" errors
};
constexpr FactorName kFactors[] = {
    {FisherFactor::In, ":in", "input mean squares"},
    {FisherFactor::Out, ":out", "output gradient mean squares"},
    {FisherFactor::Mean, ":mean", "input means for pruning recovery"},
};
const FactorName& factor_name(FisherFactor f) {
  for (const auto& x : kFactors)
    if (x.factor == f) return x;
  fail(ExitCode::Runtime, "fisher.dat: unknown factor {}", static_cast<int>(f));
}

const char* units_name(ScoreUnits u) { return u == ScoreUnits::Heads ? "heads" : "kv_groups"; }
const char* measure_name(ScoreMeasure m) { return m == ScoreMeasure::Taylor ? "taylor" : "fisher"; }
const char* branch_name(ScoreBranch b) { return b == ScoreBranch::Attn ? "attn" : "mlp"; }

nlohmann::json pair_json(const UnitScores& u) { return {{measure_name(ScoreMeasure::Taylor), u.taylor}, {measure_name(ScoreMeasure::Fisher), u.fisher}}; }
nlohmann::json pair_json(const BranchScore& b) { return {{measure_name(ScoreMeasure::Taylor), b.taylor}, {measure_name(ScoreMeasure::Fisher), b.fisher}}; }

std::string in_dir(const std::string& dir, const char* file) { return (fs::path(dir) / file).string(); }

}  // namespace

// ---- fisher.dat ------------------------------------------------------------------------------

std::string fisher_key(const std::string& gguf_weight, FisherFactor f) { return gguf_weight + factor_name(f).suffix; }

void FisherFactors::set(const std::string& gguf_weight, FisherFactor f, std::vector<float> values) {
  entries_[fisher_key(gguf_weight, f)] = std::move(values);
}

bool FisherFactors::has(const std::string& gguf_weight, FisherFactor f) const { return entries_.count(fisher_key(gguf_weight, f)) != 0; }

const std::vector<float>& FisherFactors::at(const std::string& gguf_weight, FisherFactor f, size_t n) const {
  const std::string key = fisher_key(gguf_weight, f);
  auto it = entries_.find(key);
  if (it == entries_.end()) fail(ExitCode::InputData, "{}: no entry '{}' ({}): re-run the score stage", path_, key, factor_name(f).what);
  if (it->second.size() != n) fail(ExitCode::InputData, "{}: entry '{}' has {} values, the tensor needs {}", path_, key, it->second.size(), n);
  return it->second;
}

FisherFactors FisherFactors::read(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(ExitCode::InputData, "{}: cannot open the Fisher factors (re-run the score stage)", path);
  FisherFactors f;
  f.path_ = path;
  f.entries_ = read_imatrix(path);
  return f;
}

void FisherFactors::write(const std::string& path, int ncall, const std::string& dataset) const {
  write_imatrix(path, entries_, ncall, dataset);
}

// ---- scores.json -----------------------------------------------------------------------------

std::optional<ScoreMeasure> score_measure_from_name(const std::string& name) {
  for (ScoreMeasure m : {ScoreMeasure::Taylor, ScoreMeasure::Fisher})
    if (name == measure_name(m)) return m;
  return std::nullopt;
}

nlohmann::json ScoresSummary::to_json() const {
  nlohmann::json ls = nlohmann::json::array();
  std::vector<int> n_ff;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& s = layers[l];
    ls.push_back({{"layer", l},
                  {"n_head", s.n_head},
                  {"n_head_kv", s.n_head_kv},
                  {"n_ff", s.n_ff},
                  {units_name(ScoreUnits::Heads), pair_json(s.heads)},
                  {units_name(ScoreUnits::KvGroups), pair_json(s.kv_groups)},
                  {branch_name(ScoreBranch::Attn), pair_json(s.attn)},
                  {branch_name(ScoreBranch::Mlp), pair_json(s.mlp)}});
    n_ff.push_back(s.n_ff);
  }
  const auto& c = calibration;
  return {
      {"format", kFormat},
      {"model",
       {{"path", model.path}, {"arch", model.arch}, {"config_sha256", model.config_sha256}, {"n_layer", model.n_layer}, {"head_dim", model.head_dim}}},
      {"calibration",
       {{"path", c.path},
        {"sha256", c.sha256},
        {"bytes", c.bytes},
        {"tokens", c.tokens},
        {"tokens_used", c.tokens_used},
        {"chunks", c.chunks},
        {"ctx", c.ctx},
        {"max_tokens", c.max_tokens},
        {"moments", c.moments}}},
      {"method", method},
      {"mean_loss", mean_loss},
      {"seconds", seconds},
      {"tokens_per_s", tokens_per_s},
      {"run", run},
      {"layers", ls},
      {"channels", {{"file", kChannelsFile}, {"layout", "for each layer: taylor[n_ff] then fisher[n_ff], float32 little-endian"}, {"n_ff", n_ff}}},
      {"imatrix", {{"file", kImatrixFile}, {"format", "llama.cpp imatrix (legacy .dat), GGUF tensor names"}, {"ncall", c.chunks}}},
      {"fisher",
       {{"file", kFisherFile},
        {"means", true},
        {"format",
         fmt::format("llama.cpp imatrix container; '<gguf name>{}' = per HF column E[x^2], '<gguf name>{}' = per HF row E[(n dL/dy)^2] "
                     "(n = predictions per chunk: the per-token gradient scale); '<gguf name>{}' = per HF column E[x] of a per-layer "
                     "weight's input (pruning recovery); output projection included; an untied token_embd (a lookup of the one-hot "
                     "token) has per-row token frequencies as '{}' and per-column E[(n dL/dx)^2] of the embedding output as '{}'",
                     factor_name(FisherFactor::In).suffix, factor_name(FisherFactor::Out).suffix,
                     factor_name(FisherFactor::Mean).suffix, factor_name(FisherFactor::Out).suffix,
                     factor_name(FisherFactor::In).suffix)}}}};
}

ScoresFile ScoresFile::read(const std::string& path) {
  ScoresFile f;
  f.path_ = path;
  f.j_ = read_json_file(path, "scores");
  if (!f.j_.is_object() || !f.j_.contains("format") || f.j_["format"] != kFormat)
    fail(ExitCode::InputData, "{}: format is not {}", path, kFormat);
  return f;
}

bool ScoresFile::taken_from(const std::string& model_path, const std::string& config_sha256, const std::string& text_sha256, int ctx,
                            int64_t max_tokens, bool moments) const {
  const auto at = [&](const char* a, const char* b) {
    return j_.contains(a) && j_[a].is_object() && j_[a].contains(b) ? j_[a][b] : nlohmann::json();
  };
  if (j_.value("format", "") != kFormat || at("model", "path") != model_path || at("model", "config_sha256") != config_sha256 ||
      at("calibration", "sha256") != text_sha256 || at("calibration", "ctx") != ctx || at("calibration", "max_tokens") != max_tokens)
    return false;
  if (at("fisher", "means") != true) return false;  // taken before the input means were collected
  return !moments || at("calibration", "moments") == true;
}

std::vector<double> ScoresFile::unit_scores(int l, ScoreUnits u, ScoreMeasure m, size_t n) const {
  try {
    auto v = j_.at("layers").at(size_t(l)).at(units_name(u)).at(measure_name(m)).get<std::vector<double>>();
    if (v.size() == n) return v;
  } catch (const nlohmann::json::exception&) {
  }
  fail(ExitCode::InputData, "{}: layers[{}].{}.{} missing or of the wrong size", path_, l, units_name(u), measure_name(m));
}

double ScoresFile::branch_taylor(int l, ScoreBranch b) const {
  const char* taylor = measure_name(ScoreMeasure::Taylor);
  try {
    return j_.at("layers").at(size_t(l)).at(branch_name(b)).at(taylor).get<double>();
  } catch (const nlohmann::json::exception&) {
    fail(ExitCode::InputData, "{}: layers[{}].{}.{} missing", path_, l, branch_name(b), taylor);
  }
}

// ---- the folder --------------------------------------------------------------------------------

std::string ScoreFolder::scores_path() const { return in_dir(dir_, kScoresFile); }
std::string ScoreFolder::imatrix_path() const { return in_dir(dir_, kImatrixFile); }
std::string ScoreFolder::fisher_path() const { return in_dir(dir_, kFisherFile); }
std::string ScoreFolder::channels_path() const { return in_dir(dir_, kChannelsFile); }

bool ScoreFolder::complete() const {
  std::error_code ec;
  for (const char* f : {kScoresFile, kChannelsFile, kImatrixFile, kFisherFile})
    if (!fs::is_regular_file(fs::path(dir_) / f, ec)) return false;
  return true;
}

bool ScoreFolder::has_moments() const { return Moments::present(dir_); }

ScoresFile ScoreFolder::scores() const { return ScoresFile::read(scores_path()); }

Imatrix ScoreFolder::imatrix() const { return read_imatrix(imatrix_path()); }

std::optional<Imatrix> ScoreFolder::imatrix_if_present() const {
  if (!fs::exists(imatrix_path())) return std::nullopt;
  return read_imatrix(imatrix_path());
}

FisherFactors ScoreFolder::fisher() const { return FisherFactors::read(fisher_path()); }

std::vector<ChannelScores> ScoreFolder::channels(const std::vector<int>& n_ff) const {
  const std::string path = channels_path();
  const std::string z = read_text_file(path, "channel scores");
  size_t total = 0;
  for (int n : n_ff) total += 2 * static_cast<size_t>(n);
  std::vector<float> flat(total);
  const size_t got = ZSTD_decompress(flat.data(), total * sizeof(float), z.data(), z.size());
  if (ZSTD_isError(got) || got != total * sizeof(float)) fail(ExitCode::InputData, "{}: corrupt or mismatched channel scores", path);
  std::vector<ChannelScores> out;
  size_t o = 0;
  for (int n : n_ff) {
    ChannelScores c;
    c.taylor.assign(flat.begin() + o, flat.begin() + o + n);
    c.fisher.assign(flat.begin() + o + n, flat.begin() + o + 2 * n);
    o += 2 * static_cast<size_t>(n);
    out.push_back(std::move(c));
  }
  return out;
}

std::optional<Moments> ScoreFolder::moments() const { return Moments::open(dir_); }

Moments ScoreFolder::require_moments(const std::string& why, const std::string& hint) const {
  auto m = moments();
  if (!m) fail(ExitCode::InputData, "{}: no {}/ ({}): score with --set moments=true{}", dir_, kMomentsFolder, why, hint);
  return std::move(*m);
}

// ---- writing -----------------------------------------------------------------------------------

ScoreFolderWriter::ScoreFolderWriter(const std::string& dir) : staged_(dir), staging_(staged_.path()) {}

void ScoreFolderWriter::write_channels(const std::vector<ChannelScores>& layers) {
  std::vector<float> flat;
  for (const auto& c : layers) {
    flat.insert(flat.end(), c.taylor.begin(), c.taylor.end());
    flat.insert(flat.end(), c.fisher.begin(), c.fisher.end());
  }
  const size_t src = flat.size() * sizeof(float);
  std::string z(ZSTD_compressBound(src), '\0');
  const size_t zn = ZSTD_compress(z.data(), z.size(), flat.data(), src, 3);
  if (ZSTD_isError(zn)) fail(ExitCode::Runtime, "{}: zstd compression failed: {}", staging_.dir(), ZSTD_getErrorName(zn));
  z.resize(zn);
  write_file_atomic(staging_.channels_path(), z);
}

void ScoreFolderWriter::write_imatrix(const Imatrix& means, int ncall, const std::string& dataset) {
  squish::write_imatrix(staging_.imatrix_path(), means, ncall, dataset);
}

void ScoreFolderWriter::write_fisher(const FisherFactors& f, int ncall, const std::string& dataset) {
  f.write(staging_.fisher_path(), ncall, dataset);
}

void ScoreFolderWriter::write_moment(const std::string& key, MomentSum m, int64_t tokens) {
  moment_files_[key] = write_moment_file(staging_.dir(), key, m, tokens);
}

void ScoreFolderWriter::write_moments(const std::map<std::string, MomentSum>& inputs, const std::map<std::string, std::string>& weights,
                                      int64_t tokens) {
  for (const auto& [key, m] : inputs) write_moment(key, m, tokens);
  write_moment_index(staging_.dir(), moment_files_, weights, tokens);
}

void ScoreFolderWriter::commit(const nlohmann::json& scores) {
  // scores.json, which readers trust the folder by, is written and moved in last.
  write_json_file(staging_.scores_path(), scores);
  staged_.commit({kScoresFile});
}

}  // namespace squish
