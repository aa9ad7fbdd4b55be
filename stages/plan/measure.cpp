#include "stages/plan/measure.hpp"

#include "core/quant/type_registry.hpp"

#include "core/gguf/gguf.hpp"
#include "core/io/atomic_file.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/io/score_folder.hpp"
#include "core/quant/gptq.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/text_file.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_registry.hpp"
#include "core/recipe/recipe.hpp"
#include "core/base/error.hpp"

#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <tuple>

namespace squish::plan {

namespace fs = std::filesystem;

std::vector<std::string> candidate_type_names() {
  std::vector<std::string> v;
  for (GGMLType t : candidate_types()) v.push_back(ggml_type_name(t));
  return v;
}

std::vector<GGMLType> candidate_types() {
  std::vector<GGMLType> t = {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::Q8_0, GGMLType::F16};
  for (const PluginType* p : plugin_types()) t.push_back(p->traits.type);  // types of loaded plugins compete too
  return t;
}

namespace {

uint64_t aligned(uint64_t n) { return (n + gguf::kDefaultAlignment - 1) / gguf::kDefaultAlignment * gguf::kDefaultAlignment; }

// Sums of row chunks, added in chunk order so the measurements are the same bytes on every run.
struct Partial {
  double pred = 0, err = 0, ref = 0;
};
std::tuple<double, double, double> sum(const std::vector<Partial>& parts) {
  double pred = 0, err = 0, ref = 0;
  for (const auto& p : parts) pred += p.pred, err += p.err, ref += p.ref;
  return {pred, err, ref};
}

// Predicted loss and weighted relative error of quantizing W (rows x n) to `type`.
Candidate evaluate(GGMLType type, const std::vector<float>& w, int64_t rows, int64_t n, const std::vector<float>& in,
                   const std::vector<float>& out, const float* imatrix) {
  Candidate c{type};
  c.bytes = aligned(ggml_row_size(type, n) * uint64_t(rows));
  const int64_t chunk = std::max<int64_t>(1, 65536 / n);
  std::vector<Partial> parts(size_t((rows + chunk - 1) / chunk));
  tbb::parallel_for(int64_t{0}, (rows + chunk - 1) / chunk, [&](int64_t b) {
    const int64_t r0 = b * chunk, r1 = std::min(rows, r0 + chunk);
    std::vector<std::byte> q(ggml_row_size(type, n) * size_t(r1 - r0));
    quantize_rows(type, w.data() + r0 * n, q.data(), r1 - r0, n, imatrix);
    std::vector<float> d(static_cast<size_t>(n));
    double p = 0, e = 0, s = 0;
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(type, q.data() + ggml_row_size(type, n) * size_t(r - r0), d.data(), n);
      double row = 0, row_ref = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double dw = double(w[size_t(r * n + j)]) - d[size_t(j)];
        row += in[size_t(j)] * dw * dw;
        row_ref += in[size_t(j)] * double(w[size_t(r * n + j)]) * w[size_t(r * n + j)];
      }
      p += out[size_t(r)] * row;
      e += row, s += row_ref;
    }
    parts[size_t(b)] = {p, e, s};
  });
  const auto [pred, err, ref] = sum(parts);
  c.predicted = 0.5 * pred;
  c.rel_error = ref > 0 ? err / ref : 0;
  return c;
}

// GPTQ's result at `type`, with the full second moments in the prediction: each row's
// (W - Q) H (W - Q)ᵀ from GPTQ's own bookkeeping (gptq_quantize's row_error), which saves a
// second rows x n² pass over H per type.
Candidate evaluate_gptq(GGMLType type, const std::vector<float>& w, int64_t rows, int64_t n, const quant::GptqFactor& factor,
                        const std::vector<float>& out, const float* imatrix) {
  Candidate c{type};
  c.bytes = aligned(ggml_row_size(type, n) * uint64_t(rows));
  quant::GptqOptions o;
  o.damp = factor.damp;
  std::vector<double> row_error;
  quant::gptq_quantize(type, w.data(), rows, n, factor, imatrix, o, &row_error);
  double pred = 0, err = 0, ref = 0;  // in row order: the same bytes on every run
  for (int64_t r = 0; r < rows; ++r) {
    pred += out[size_t(r)] * row_error[size_t(r)], err += row_error[size_t(r)];
    for (int64_t j = 0; j < n; ++j) ref += double(factor.diag[size_t(j)]) * w[size_t(r * n + j)] * w[size_t(r * n + j)];
  }
  c.predicted = 0.5 * std::max(0.0, pred);
  c.rel_error = ref > 0 ? std::max(0.0, err) / ref : 0;
  return c;
}

nlohmann::json tensor_json(const TensorMeasure& tm) {
  nlohmann::json c = nlohmann::json::array();
  for (const auto& k : tm.candidates)
    c.push_back({{"type", ggml_type_name(k.type)}, {"bytes", k.bytes}, {"predicted", k.predicted}, {"rel_error", k.rel_error}});
  return {{"name", tm.name}, {"ne", tm.ne}, {"candidates", c}};
}

// Throws nlohmann::json exceptions for a wrong shape, Error(InputData) for wrong values.
TensorMeasure tensor_from_json(const nlohmann::json& t, const std::string& origin) {
  auto bad = [&](const std::string& what) { fail(ExitCode::InputData, "{}: invalid measurements: {}", origin, what); };
  TensorMeasure tm{t.at("name").get<std::string>(), t.at("ne").get<std::vector<int64_t>>(), {}};
  for (const auto& c : t.at("candidates")) {
    auto type = ggml_type_from_name(c.at("type").get<std::string>());
    if (!type) bad("unknown type " + json_text(c.at("type")) + " (a plugin's type needs its plugin loaded: squish-run --plugin NAME)");
    const double p = c.at("predicted").get<double>();
    if (!std::isfinite(p) || p < 0) bad(tm.name + ": predicted loss must be finite and >= 0");
    tm.candidates.push_back({*type, c.at("bytes").get<uint64_t>(), p, c.value("rel_error", 0.0)});
  }
  if (tm.candidates.empty()) bad(tm.name + ": no candidates");
  return tm;
}

// The tensors measured so far, one JSON line each under a first line naming what they were
// measured from, flushed as each one finishes: a run killed after hours resumes where it
// stopped. A torn last line (killed mid-write) is dropped; another identity starts afresh.
class Checkpoint {
 public:
  Checkpoint(std::string path, const nlohmann::json& identity) : path_(std::move(path)), kept_(identity.dump() + "\n") {
    if (std::ifstream in(path_); in) {
      std::string line;
      if (std::getline(in, line) && nlohmann::json::parse(line, nullptr, false) == identity) {
        while (std::getline(in, line) && !in.eof()) {  // a line without its newline was torn
          const auto t = nlohmann::json::parse(line, nullptr, false);
          if (t.is_discarded()) break;
          try {
            stored_.push_back(tensor_from_json(t, path_));
          } catch (const std::exception&) {
            break;
          }
          kept_ += line + "\n";
        }
      }
    }
  }
  ~Checkpoint() {
    if (out_) std::fclose(out_);
  }
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  const std::vector<TensorMeasure>& stored() const { return stored_; }
  void append(const TensorMeasure& tm) {
    if (!out_) {  // at the first tensor: nothing is left behind by a run that measured none
      write_file_atomic(path_, kept_);  // exactly the lines kept, so appending continues cleanly
      out_ = std::fopen(path_.c_str(), "ab");
      if (!out_) fail(ExitCode::Runtime, "{}: cannot append measurements: {}", path_, std::strerror(errno));
    }
    const std::string line = tensor_json(tm).dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), out_) != line.size() || std::fflush(out_) != 0)
      fail(ExitCode::Runtime, "{}: cannot append measurements: {}", path_, std::strerror(errno));
  }

 private:
  std::string path_;
  std::string kept_;  // the identity line and the stored tensors' lines
  std::vector<TensorMeasure> stored_;
  std::FILE* out_ = nullptr;
};

}  // namespace

Measurements measure(const std::string& model_dir, const std::string& stats_dir, const MeasureOptions& opt) {
  const ScoreFolder folder(stats_dir);
  const FisherFactors fisher = folder.fisher();
  const Imatrix imatrix = folder.imatrix_if_present().value_or(Imatrix{});
  // The tensors compress would write (names, shapes), from the recipe resolver.
  const auto base = recipe::resolve(recipe::CompressionRecipe::from_preset("F32"), model_dir);
  const auto st = SafetensorsModel::open(model_dir);
  if (!recipe::is_quant_method(opt.method)) fail(ExitCode::Usage, "method must be \"rtn\" or \"gptq\" (got '{}')", opt.method);
  std::optional<Moments> moments;
  if (opt.method == "gptq") moments = folder.require_moments("second moments for gptq");
  Measurements m;
  m.model = fs::absolute(model_dir).string();
  m.stats = fs::absolute(stats_dir).string();
  m.method = opt.method;
  m.gptq_damp = opt.gptq_damp;
  std::vector<const recipe::PlannedTensor*> weights;
  for (const auto& pt : base.tensors)
    if (pt.kind->weight_matrix()) weights.push_back(&pt);
  // What an interrupted run of the same measurement stored: the tensors it finished, in order.
  std::optional<Checkpoint> checkpoint;
  size_t first = 0;
  if (!opt.checkpoint.empty()) {
    std::error_code ec;
    const auto fisher_file = folder.fisher_path();
    const auto fisher_time = fs::last_write_time(fisher_file, ec).time_since_epoch().count();
    const nlohmann::json identity{{"format", "squish.measurements-checkpoint/1"}, {"model", m.model}, {"stats", m.stats},
                                  {"method", m.method}, {"gptq_damp", m.gptq_damp}, {"types", candidate_type_names()},
                                  {"fisher", fmt::format("{} bytes, written {}", fs::file_size(fisher_file, ec), fisher_time)}};
    checkpoint.emplace(opt.checkpoint, identity);
    const auto& stored = checkpoint->stored();
    while (first < std::min(stored.size(), weights.size()) && stored[first].name == weights[first]->gguf_name &&
           stored[first].ne == weights[first]->ne)
      m.tensors.push_back(stored[first++]);
    if (first > 0 && opt.resumed) opt.resumed(first, weights.size());
  }
  const std::vector<GGMLType> types = opt.only_types.empty() ? candidate_types() : opt.only_types;
  tbb::task_arena arena(opt.threads > 0 ? opt.threads : tbb::task_arena::automatic);
  // The current input's GPTQ factor, for every weight that reads it and every candidate.
  std::optional<std::string> input;
  quant::GptqFactor factor;
  for (size_t i = first; i < weights.size(); ++i) {
    const auto& pt = *weights[i];
    const int64_t n = pt.ne[0], rows = pt.ne[1];
    // A float copy; the mapped source pages go at once (else every weight read stays in RSS:
    // 15.6 GB by the end of a 7B).
    const SafetensorsEntry& source = st.at(pt.hf_name);
    const std::vector<float> w = st.load(source).to_f32();
    st.release(source);
    const auto& in = fisher.at(pt.gguf_name, FisherFactor::In, size_t(n));
    const auto& out = fisher.at(pt.gguf_name, FisherFactor::Out, size_t(rows));
    auto im = imatrix.find(pt.gguf_name);  // as compress: the imatrix weights the rounding when present
    const float* imp = im != imatrix.end() && im->second.size() == size_t(n) ? im->second.data() : nullptr;
    TensorMeasure tm{pt.gguf_name, pt.ne, {}};
    // As compress: GPTQ for weight matrices with second moments (not a tied embedding's lookup).
    const bool gptq = moments && recipe::gptq_kind(*pt.kind) && moments->has(pt.gguf_name) &&
                      std::any_of(types.begin(), types.end(), [&](GGMLType t) { return recipe::gptq_applies(*pt.kind, t); });
    if (gptq && moments->input_of(pt.gguf_name) != input) {  // q/k/v (gate/up) follow each other and share theirs
      input = moments->input_of(pt.gguf_name);
      factor = {};
      int hn = 0;
      const std::vector<float> h = moments->load(pt.gguf_name, &hn);
      if (hn != n) fail(ExitCode::InputData, "{}: the moments of {} are {} x {}, the tensor has {} columns", moments->dir(), pt.gguf_name, hn, hn, n);
      quant::GptqOptions o;
      o.damp = opt.gptq_damp;
      factor = arena.execute([&] { return quant::gptq_factor(h.data(), n, o); });
    }
    arena.execute([&] {
      for (GGMLType t : types) {
        if (n % ggml_type_traits(t)->block_size != 0) continue;  // the block does not fit a row
        if (const PluginType* p = plugin_type(t); p && !p->supports_row(n)) continue;
        const float* tw = ggml_type_traits(t)->quantized ? imp : nullptr;
        tm.candidates.push_back(gptq && recipe::gptq_applies(*pt.kind, t) ? evaluate_gptq(t, w, rows, n, factor, out, tw)
                                                                  : evaluate(t, w, rows, n, in, out, tw));
      }
    });
    if (tm.candidates.empty()) fail(ExitCode::InputData, "{}: no candidate type fits rows of {}", pt.gguf_name, n);
    if (checkpoint) checkpoint->append(tm);
    m.tensors.push_back(std::move(tm));
    if (opt.progress) opt.progress(i + 1, weights.size());
  }
  return m;
}

nlohmann::json Measurements::to_json() const {
  nlohmann::json t = nlohmann::json::array();
  for (const auto& tm : tensors) t.push_back(tensor_json(tm));
  nlohmann::json j{{"format", "squish.measurements/1"},
                   {"model", model},
                   {"types", candidate_type_names()},
                   {"stats", stats},
                   {"method", method},
                   {"predictor", method == "gptq" ? fmt::format("1/2 sum_i E[(n dL/dy_i)^2] dW_i H dW_iᵀ, H = E[x xᵀ] ({}/), for GPTQ's dW; "
                                                                "the diagonal form for tensors without moments",
                                                                kMomentsFolder)
                                                  : fmt::format("1/2 sum_ij E[(n dL/dy_i)^2] E[x_j^2] (W_ij - Q(W)_ij)^2 (diagonal Fisher, {})",
                                                                ScoreFolder::kFisherFile)},
                   {"tensors", t}};
  if (method == "gptq") j["gptq_damp"] = gptq_damp;
  if (!scope.empty()) j["scope"] = scope;
  return j;
}

Measurements Measurements::from_json(const nlohmann::json& j, const std::string& origin) {
  try {
    auto bad = [&](const std::string& what) -> void { fail(ExitCode::InputData, "{}: invalid measurements: {}", origin, what); };
    if (!j.is_object() || j.value("format", "") != "squish.measurements/1") bad("not a squish.measurements/1 document");
    Measurements m;
    try {
      m.model = j.at("model").get<std::string>();
      m.stats = j.value("stats", "");
      m.method = j.value("method", "rtn");
      if (!recipe::is_quant_method(m.method)) bad("method must be rtn or gptq");
      m.gptq_damp = j.value("gptq_damp", quant::kDefaultDamp);
      m.scope = j.value("scope", "");
      for (const auto& t : j.at("tensors")) m.tensors.push_back(tensor_from_json(t, origin));
    } catch (const nlohmann::json::exception& e) {
      bad(e.what());
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    fail_json_shape(origin, "malformed measurements", e);
  }
}

Measurements Measurements::load(const std::string& path) { return from_json(read_json_file(path, "measurements"), path); }

}  // namespace squish::plan
