#include "core/io/moments.hpp"

#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include <nlohmann/json.hpp>
#include <zstd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

namespace fs = std::filesystem;

namespace squish {

namespace {
fs::path moments_folder(const std::string& dir) {
  const fs::path out = fs::path(dir) / kMomentsFolder;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!fs::is_directory(out)) fail(ExitCode::Runtime, "{}: cannot create directory", out.string());
  return out;
}
}  // namespace

MomentFile write_moment_file(const std::string& dir, const std::string& key, MomentSum m, int64_t tokens) {
  const fs::path out = moments_folder(dir);
  if (tokens <= 0) fail(ExitCode::Runtime, "{}: second moments of no tokens", out.string());
  std::vector<float> upper;
  upper.reserve(size_t(m.n) * (m.n + 1) / 2);
  for (int i = 0; i < m.n; ++i)
    for (int j = i; j < m.n; ++j) upper.push_back(m.sum[size_t(i) * m.n + j] / static_cast<float>(tokens));
  const size_t bytes = upper.size() * sizeof(float);
  std::string z(ZSTD_compressBound(bytes), '\0');
  const size_t zn = ZSTD_compress(z.data(), z.size(), upper.data(), bytes, 3);
  if (ZSTD_isError(zn)) fail(ExitCode::Runtime, "{}: zstd: {}", out.string(), ZSTD_getErrorName(zn));
  z.resize(zn);
  MomentFile f{key + ".f32.zst", m.n};
  write_file_atomic((out / f.file).string(), z);
  return f;
}

void write_moment_index(const std::string& dir, const std::map<std::string, MomentFile>& inputs,
                        const std::map<std::string, std::string>& weights, int64_t tokens) {
  const fs::path out = moments_folder(dir);
  if (tokens <= 0) fail(ExitCode::Runtime, "{}: second moments of no tokens", out.string());
  nlohmann::json index{{"format", "squish.moments/1"}, {"tokens", tokens}, {"inputs", nlohmann::json::object()}, {"weights", weights}};
  for (const auto& [key, f] : inputs) index["inputs"][key] = {{"file", f.file}, {"n", f.n}};
  for (const auto& [w, key] : weights)
    if (!inputs.count(key)) fail(ExitCode::Runtime, "moments: weight {} refers to no input {}", w, key);
  write_json_file((out / "index.json").string(), index);
}

namespace {
fs::path index_of(const std::string& stats_dir) { return fs::path(stats_dir) / kMomentsFolder / "index.json"; }
}  // namespace

bool Moments::present(const std::string& stats_dir) {
  std::error_code ec;
  return fs::is_regular_file(index_of(stats_dir), ec);
}

std::optional<Moments> Moments::open(const std::string& stats_dir) {
  const fs::path index_path = index_of(stats_dir);
  if (!present(stats_dir)) return std::nullopt;
  const std::string where = index_path.string();
  const nlohmann::json j = read_json_file(where, "moments index");
  Moments m;
  m.dir_ = (fs::path(stats_dir) / kMomentsFolder).string();
  try {
    if (j.at("format").get<std::string>() != "squish.moments/1") fail(ExitCode::InputData, "{}: format is not squish.moments/1", where);
    m.tokens_ = j.at("tokens").get<int64_t>();
    for (const auto& [key, v] : j.at("inputs").items()) {
      const int n = v.at("n").get<int>();
      const std::string file = v.at("file").get<std::string>();
      if (n <= 0 || n > (1 << 20) || file.find('/') != std::string::npos)
        fail(ExitCode::InputData, "{}: input '{}' has a bad size or file name", where, key);
      m.inputs_[key] = {file, n};
    }
    for (const auto& [w, key] : j.at("weights").items()) {
      if (!m.inputs_.count(key.get<std::string>())) fail(ExitCode::InputData, "{}: weight '{}' refers to no input '{}'", where, w, key.get<std::string>());
      m.weights_[w] = key.get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::InputData, "{}: malformed moments index: {}", where, json_error_text(e));
  }
  if (m.tokens_ <= 0) fail(ExitCode::InputData, "{}: tokens must be > 0", where);
  return m;
}

std::vector<float> Moments::load(const std::string& gguf_weight, int* n_out) const {
  auto w = weights_.find(gguf_weight);
  if (w == weights_.end()) fail(ExitCode::InputData, "{}: no second moments for {}", dir_, gguf_weight);
  const auto& [file, n] = inputs_.at(w->second);
  const std::string path = (fs::path(dir_) / file).string();
  const std::string z = read_text_file(path, "second moments");
  const size_t count = size_t(n) * (n + 1) / 2;
  std::vector<float> upper(count);
  const size_t got = ZSTD_decompress(upper.data(), count * sizeof(float), z.data(), z.size());
  if (ZSTD_isError(got) || got != count * sizeof(float)) fail(ExitCode::InputData, "{}: corrupt or not {} x {}", path, n, n);
  std::vector<float> h(size_t(n) * n);
  size_t k = 0;
  for (int i = 0; i < n; ++i)
    for (int j = i; j < n; ++j, ++k) {
      if (!std::isfinite(upper[k])) fail(ExitCode::InputData, "{}: non-finite value", path);
      h[size_t(i) * n + j] = h[size_t(j) * n + i] = upper[k];
    }
  if (n_out) *n_out = n;
  return h;
}

}  // namespace squish
