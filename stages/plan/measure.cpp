#include "stages/plan/measure.hpp"

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
#include "core/runtime/ranks.hpp"
#include "core/base/error.hpp"

#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <optional>
#include <tuple>

namespace squish::plan {

namespace fs = std::filesystem;

namespace {
std::vector<std::string> type_names(const std::vector<GGMLType>& types) {
  std::vector<std::string> v;
  for (GGMLType t : types) v.push_back(ggml_type_name(t));
  return v;
}
}  // namespace

std::vector<std::string> candidate_type_names() { return type_names(candidate_types()); }

std::vector<GGMLType> candidate_types() {
  std::vector<GGMLType> t = {GGMLType::IQ2_XXS, GGMLType::IQ2_XS, GGMLType::IQ2_S,  GGMLType::Q2_K, GGMLType::IQ3_XXS,
                             GGMLType::IQ3_S,   GGMLType::Q3_K,   GGMLType::IQ4_XS, GGMLType::Q4_K, GGMLType::IQ4_NL,
                             GGMLType::Q5_K,    GGMLType::Q6_K,   GGMLType::Q8_0,   GGMLType::F16};
  for (const PluginType* p : plugin_types()) t.push_back(p->traits.type);  // types of loaded plugins compete too
  return t;
}

std::vector<GGMLType> gptq_estimated_types(const MeasureOptions& opt) {
  const std::vector<GGMLType> types = opt.only_types.empty() ? candidate_types() : opt.only_types;
  auto among = [&](GGMLType t) { return std::find(types.begin(), types.end(), t) != types.end(); };
  std::vector<GGMLType> e;
  if (opt.method != "gptq" || opt.gptq_every_type || std::none_of(std::begin(kGptqAnchors), std::end(kGptqAnchors), among)) return e;
  for (GGMLType t : kGptqEstimated)
    if (among(t)) e.push_back(t);
  return e;
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

double bits_per_weight(GGMLType t) {
  const auto* tr = ggml_type_traits(t);
  return 8.0 * double(tr->type_size) / double(tr->block_size);
}

// GPTQ's ratio to the rounding proxy at one anchor type of one tensor.
struct AnchorRatio {
  double bpw, predicted, rel_error;
};
double ratio(double gptq, double proxy) { return proxy > 0 ? gptq / proxy : 1.0; }

// The proxy candidate `c` scaled by GPTQ's ratio at the anchors: geometric interpolation in bits
// per weight between the nearest anchors below and above, the nearest one beyond either end.
Candidate estimate_gptq(Candidate c, const std::vector<AnchorRatio>& anchors) {
  const double b = bits_per_weight(c.type);
  const AnchorRatio *lo = nullptr, *hi = nullptr;
  for (const auto& a : anchors) {
    if (a.bpw <= b && (!lo || a.bpw > lo->bpw)) lo = &a;
    if (a.bpw >= b && (!hi || a.bpw < hi->bpw)) hi = &a;
  }
  if (!lo) lo = hi;
  if (!hi) hi = lo;
  const double f = hi->bpw > lo->bpw ? (b - lo->bpw) / (hi->bpw - lo->bpw) : 0.0;
  auto blend = [f](double x, double y) { return f == 0 ? x : f == 1 ? y : std::pow(x, 1 - f) * std::pow(y, f); };
  c.predicted *= blend(lo->predicted, hi->predicted);
  c.rel_error *= blend(lo->rel_error, hi->rel_error);
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
// The lines are kept whole (valid JSON of a tensor's measurements), in any order.
std::vector<std::string> read_checkpoint(const std::string& path, const nlohmann::json& identity) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line) || nlohmann::json::parse(line, nullptr, false) != identity) return lines;
  while (std::getline(in, line) && !in.eof()) {  // a line without its newline was torn
    const auto t = nlohmann::json::parse(line, nullptr, false);
    if (t.is_discarded()) break;
    try {
      tensor_from_json(t, path);
    } catch (const std::exception&) {
      break;
    }
    lines.push_back(line);
  }
  return lines;
}

class Checkpoint {
 public:
  Checkpoint(std::string path, const nlohmann::json& identity) : path_(std::move(path)), kept_(identity.dump() + "\n") {
    lines_ = read_checkpoint(path_, identity);
    for (const auto& line : lines_) kept_ += line + "\n";
  }
  ~Checkpoint() {
    if (out_) std::fclose(out_);
  }
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  const std::vector<std::string>& lines() const { return lines_; }
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
  std::vector<std::string> lines_;
  std::FILE* out_ = nullptr;
};

// Rank r's checkpoint under MPI: rank 0 keeps the path given, the others <path>.rank<r> beside it.
std::string rank_checkpoint(const std::string& path, int rank) { return rank == 0 ? path : fmt::format("{}.rank{}", path, rank); }

// Other ranks' checkpoints on this filesystem (an MPI run on one machine, or with another count).
std::vector<std::string> other_rank_checkpoints(const std::string& path) {
  std::vector<std::string> found;
  const fs::path p(path);
  const std::string prefix = p.filename().string() + ".rank";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p.parent_path().empty() ? fs::path(".") : p.parent_path(), ec))
    if (e.path().filename().string().starts_with(prefix)) found.push_back(e.path().string());
  std::sort(found.begin(), found.end());
  return found;
}

// The weights a rank measures: each layer's weights stay together (q/k/v and gate/up share a
// GPTQ factor); layers and global tensors go, costliest first, to the least loaded rank (ties
// to the lower rank), so every rank computes the same split.
std::vector<size_t> share_of(const std::vector<size_t>& todo, const std::vector<double>& cost,
                             const std::vector<const recipe::PlannedTensor*>& weights, const Ranks& ranks) {
  if (!ranks.distributed()) return todo;
  struct Group {
    int layer;
    double cost = 0;
    std::vector<size_t> members;
  };
  std::vector<Group> groups;
  for (size_t i : todo) {
    const int layer = weights[i]->layer;
    auto g = layer < 0 ? groups.end() : std::find_if(groups.begin(), groups.end(), [&](const Group& x) { return x.layer == layer; });
    if (g == groups.end()) groups.push_back({layer, 0.0, {}}), g = groups.end() - 1;
    g->cost += cost[i];
    g->members.push_back(i);
  }
  std::stable_sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) { return a.cost > b.cost; });
  std::vector<double> load(size_t(ranks.size()), 0.0);
  std::vector<size_t> mine;
  for (const auto& g : groups) {
    const size_t r = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    load[r] += g.cost;
    if (int(r) == ranks.rank()) mine.insert(mine.end(), g.members.begin(), g.members.end());
  }
  std::sort(mine.begin(), mine.end());
  return mine;
}

}  // namespace

// Predicted loss and weighted relative error of quantizing W (rows x n) to `type`.
Candidate rounding_candidate(GGMLType type, const float* w, int64_t rows, int64_t n, const std::vector<float>& in, const float* out,
                             const float* imatrix) {
  Candidate c{type};
  c.bytes = aligned(ggml_row_size(type, n) * uint64_t(rows));
  const int64_t chunk = std::max<int64_t>(1, 65536 / n);
  std::vector<Partial> parts(size_t((rows + chunk - 1) / chunk));
  tbb::parallel_for(int64_t{0}, (rows + chunk - 1) / chunk, [&](int64_t b) {
    const int64_t r0 = b * chunk, r1 = std::min(rows, r0 + chunk);
    std::vector<std::byte> q(ggml_row_size(type, n) * size_t(r1 - r0));
    quantize_rows(type, w + r0 * n, q.data(), r1 - r0, n, imatrix);
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

std::vector<int64_t> measured_rows(int64_t rows, int64_t sample) {
  std::vector<int64_t> r;
  const int64_t s = sample > 0 && sample < rows ? sample : rows;
  for (int64_t i = 0; i < s; ++i) r.push_back(s == rows ? i : (2 * i + 1) * rows / (2 * s));
  return r;
}

double sample_scale(const float* w, int64_t rows, int64_t n, const std::vector<float>& in, const float* out,
                    const std::vector<int64_t>& picked) {
  auto energy = [&](int64_t r) {
    double e = 0;
    for (int64_t j = 0; j < n; ++j) e += double(in[size_t(j)]) * w[size_t(r * n + j)] * w[size_t(r * n + j)];
    return double(out[size_t(r)]) * e;
  };
  double all = 0, some = 0;  // in row order: the same bytes on every run
  for (int64_t r = 0; r < rows; ++r) all += energy(r);
  for (int64_t r : picked) some += energy(r);
  return some > 0 ? all / some : double(rows) / double(picked.size());
}

// GPTQ's result at `type`, with the full second moments in the prediction: each row's
// (W - Q) H (W - Q)ᵀ from GPTQ's own bookkeeping (gptq_quantize's row_error), which saves a
// second rows x n² pass over H per type.
Candidate gptq_candidate(GGMLType type, const float* w, int64_t rows, int64_t n, const quant::GptqFactor& factor, const float* out,
                         const float* imatrix) {
  Candidate c{type};
  c.bytes = aligned(ggml_row_size(type, n) * uint64_t(rows));
  quant::GptqOptions o;
  o.damp = factor.damp;
  std::vector<double> row_error;
  quant::gptq_quantize(type, w, rows, n, factor, imatrix, o, &row_error);
  double pred = 0, err = 0, ref = 0;  // in row order: the same bytes on every run
  for (int64_t r = 0; r < rows; ++r) {
    pred += out[size_t(r)] * row_error[size_t(r)], err += row_error[size_t(r)];
    for (int64_t j = 0; j < n; ++j) ref += double(factor.diag[size_t(j)]) * w[size_t(r * n + j)] * w[size_t(r * n + j)];
  }
  c.predicted = 0.5 * std::max(0.0, pred);
  c.rel_error = ref > 0 ? std::max(0.0, err) / ref : 0;
  return c;
}

void remove_checkpoint(const std::string& path) {
  const Ranks& ranks = Ranks::world();
  std::error_code ec;
  fs::remove(rank_checkpoint(path, ranks.rank()), ec);
  if (ranks.rank() == 0)
    for (const auto& f : other_rank_checkpoints(path)) fs::remove(f, ec);
}

Measurements measure(const std::string& model_dir, const std::string& stats_dir, const MeasureOptions& opt) {
  const Ranks& ranks = Ranks::world();
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
  m.gptq_estimated = gptq_estimated_types(opt);
  if (opt.gptq_rows < 0) fail(ExitCode::Usage, "gptq_rows must be >= 0 (got {})", opt.gptq_rows);
  m.gptq_rows = opt.method == "gptq" ? opt.gptq_rows : 0;
  auto estimated = [&](GGMLType t) { return std::find(m.gptq_estimated.begin(), m.gptq_estimated.end(), t) != m.gptq_estimated.end(); };
  auto anchor = [](GGMLType t) { return std::find(std::begin(kGptqAnchors), std::end(kGptqAnchors), t) != std::end(kGptqAnchors); };
  const std::vector<GGMLType> types = opt.only_types.empty() ? candidate_types() : opt.only_types;
  std::vector<const recipe::PlannedTensor*> weights;
  for (const auto& pt : base.tensors)
    if (pt.kind->weight_matrix()) weights.push_back(&pt);
  // As compress: GPTQ for weight matrices with second moments (not a tied embedding's lookup).
  auto uses_gptq = [&](const recipe::PlannedTensor& pt) {
    return moments && recipe::gptq_kind(*pt.kind) && moments->has(pt.gguf_name) &&
           std::any_of(types.begin(), types.end(), [&](GGMLType t) { return recipe::gptq_applies(*pt.kind, t); });
  };

  // The ranks must measure the same thing: what each sees of the inputs, against rank 0's.
  if (ranks.distributed()) {
    std::string seen = fmt::format("{} {} {} {} {}; fisher.dat {} bytes;", opt.method, opt.gptq_damp, fmt::join(type_names(types), ","),
                                   fmt::join(type_names(m.gptq_estimated), ","), m.gptq_rows, fs::file_size(folder.fisher_path()));
    for (const auto* pt : weights) seen += fmt::format(" {} {}", pt->gguf_name, fmt::join(pt->ne, "x"));
    if (ranks.broadcast(seen) != seen)
      fail(ExitCode::InputData, "the model {} or the statistics {} differ from rank 0's (tensors, shapes, fisher.dat or options)", m.model,
           m.stats);  // Ranks::abort names the rank
  }
  // What interrupted runs of the same measurement stored (every rank's), by GGUF name.
  std::map<std::string, TensorMeasure> measured;
  auto take = [&](const std::string& lines, const std::string& origin) {
    std::istringstream in(lines);
    for (std::string line; std::getline(in, line);) {
      TensorMeasure tm = tensor_from_json(nlohmann::json::parse(line), origin);
      const std::string name = tm.name;
      measured.emplace(name, std::move(tm));
    }
  };
  std::optional<Checkpoint> checkpoint;
  if (!opt.checkpoint.empty()) {
    std::error_code ec;
    const auto fisher_file = folder.fisher_path();
    const auto fisher_time = fs::last_write_time(fisher_file, ec).time_since_epoch().count();
    const nlohmann::json identity{{"format", "squish.measurements-checkpoint/1"}, {"model", m.model}, {"stats", m.stats},
                                  {"method", m.method}, {"gptq_damp", m.gptq_damp}, {"types", candidate_type_names()},
                                  {"gptq_estimated", type_names(m.gptq_estimated)}, {"gptq_rows", m.gptq_rows},
                                  {"fisher", fmt::format("{} bytes, written {}", fs::file_size(fisher_file, ec), fisher_time)}};
    checkpoint.emplace(rank_checkpoint(opt.checkpoint, ranks.rank()), identity);
    std::string stored;
    for (const auto& line : checkpoint->lines()) stored += line + "\n";
    if (ranks.rank() == 0)
      for (const auto& f : other_rank_checkpoints(opt.checkpoint))
        for (const auto& line : read_checkpoint(f, identity)) stored += line + "\n";
    for (const std::string& lines : ranks.all_gather(stored)) take(lines, opt.checkpoint);
  }
  std::vector<size_t> todo;
  std::vector<double> cost(weights.size(), 0.0);  // for sharing the work out: GPTQ's ~rows n² + n³/3, else rows n
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& pt = *weights[i];
    const auto it = measured.find(pt.gguf_name);
    if (it != measured.end() && it->second.ne == pt.ne) continue;
    measured.erase(pt.gguf_name);
    todo.push_back(i);
    const double n = double(pt.ne[0]), rows = double(pt.ne[1]);
    cost[i] = uses_gptq(pt) ? rows * n * n + n * n * n / 3 : rows * n;
  }
  const uint64_t stored = weights.size() - todo.size();
  if (stored > 0 && opt.resumed) opt.resumed(stored, weights.size());
  const std::vector<size_t> mine = share_of(todo, cost, weights, ranks);

  tbb::task_arena arena(opt.threads > 0 ? opt.threads : tbb::task_arena::automatic);
  // The current input's GPTQ factor, for every weight that reads it and every candidate.
  std::optional<std::string> input;
  quant::GptqFactor factor;
  std::string lines;  // this rank's measurements, for the others
  for (size_t k = 0; k < mine.size(); ++k) {
    const auto& pt = *weights[mine[k]];
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
    const bool gptq = uses_gptq(pt);
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
    // A weight GPTQ runs on, of more than gptq_rows rows, is measured on an even sample of its
    // rows, its predicted losses scaled by the sample's share of the Fisher-weighted energy.
    const bool sampled = gptq && opt.gptq_rows > 0 && rows > opt.gptq_rows;
    std::vector<float> ws, outs;
    double scale = 1;
    if (sampled) {
      const std::vector<int64_t> picked = measured_rows(rows, opt.gptq_rows);
      ws.resize(picked.size() * size_t(n));
      outs.resize(picked.size());
      for (size_t i = 0; i < picked.size(); ++i) {
        std::copy_n(w.data() + picked[i] * n, n, ws.data() + i * size_t(n));
        outs[i] = out[size_t(picked[i])];
      }
      scale = sample_scale(w.data(), rows, n, in, out.data(), picked);
    }
    const float* mw = sampled ? ws.data() : w.data();
    const float* mo = sampled ? outs.data() : out.data();
    const int64_t mrows = sampled ? int64_t(outs.size()) : rows;
    arena.execute([&] {
      auto fits = [&](GGMLType t) {
        const PluginType* p = plugin_type(t);
        return n % ggml_type_traits(t)->block_size == 0 && (!p || p->supports_row(n)) &&  // the block fits a row
               (imp || !needs_importance(t));                                              // and it has what it needs
      };
      // Estimates need an anchor GPTQ runs at for this tensor; without one every type is run.
      const bool estimating = gptq && std::any_of(types.begin(), types.end(), [&](GGMLType t) {
                                return anchor(t) && fits(t) && recipe::gptq_applies(*pt.kind, t);
                              });
      std::vector<AnchorRatio> anchors;
      std::vector<size_t> pending;  // candidates holding the proxy until the anchors are known
      for (GGMLType t : types) {
        if (!fits(t)) continue;
        const float* tw = ggml_type_traits(t)->quantized ? imp : nullptr;
        if (!gptq || !recipe::gptq_applies(*pt.kind, t)) {
          // F16's rounding touches few weights (a sample sees next to none of them) and costs
          // little: every row.
          tm.candidates.push_back(ggml_type_traits(t)->quantized ? rounding_candidate(t, mw, mrows, n, in, mo, tw)
                                                                 : rounding_candidate(t, w.data(), rows, n, in, out.data(), tw));
        } else if (estimating && estimated(t)) {
          pending.push_back(tm.candidates.size());
          tm.candidates.push_back(rounding_candidate(t, mw, mrows, n, in, mo, tw));
        } else {
          tm.candidates.push_back(gptq_candidate(t, mw, mrows, n, factor, mo, tw));
          if (estimating && anchor(t)) {
            const Candidate proxy = rounding_candidate(t, mw, mrows, n, in, mo, tw), &g = tm.candidates.back();
            const AnchorRatio a{bits_per_weight(t), ratio(g.predicted, proxy.predicted), ratio(g.rel_error, proxy.rel_error)};
            if (std::isfinite(a.predicted) && std::isfinite(a.rel_error)) anchors.push_back(a);  // a denormal proxy: no ratio
          }
        }
      }
      for (size_t c : pending)  // estimated from the anchors; with none usable, GPTQ runs here too
        tm.candidates[c] = anchors.empty() ? gptq_candidate(tm.candidates[c].type, mw, mrows, n, factor, mo,
                                                          ggml_type_traits(tm.candidates[c].type)->quantized ? imp : nullptr)
                                           : estimate_gptq(tm.candidates[c], anchors);
    });
    if (sampled)
      for (auto& c : tm.candidates)
        if (ggml_type_traits(c.type)->quantized) {  // the others were measured on every row
          c.bytes = aligned(ggml_row_size(c.type, n) * uint64_t(rows));
          c.predicted *= scale;
        }
    if (tm.candidates.empty()) fail(ExitCode::InputData, "{}: no candidate type fits rows of {}", pt.gguf_name, n);
    if (checkpoint) checkpoint->append(tm);
    if (ranks.distributed()) lines += tensor_json(tm).dump() + "\n";
    measured.emplace(pt.gguf_name, std::move(tm));
    if (opt.progress) opt.progress(stored + k + 1, stored + mine.size());
  }
  // Every rank gets every rank's measurements (JSON keeps a double's bits: the same bytes as one process).
  if (ranks.distributed())
    for (int r = 0; const std::string& theirs : ranks.all_gather(lines))
      if (r++ != ranks.rank()) take(theirs, fmt::format("rank {}", r - 1));
  for (const auto* pt : weights) m.tensors.push_back(std::move(measured.at(pt->gguf_name)));
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
  if (gptq_rows > 0) {
    j["gptq_rows"] = gptq_rows;
    j["predictor"] = j["predictor"].get<std::string>() +
                     fmt::format("; a weight GPTQ runs on, of more than {0} rows, is measured on {0} rows spread evenly, its "
                                 "predictions times the rows' share of sum_i E[(n dL/dy_i)^2] sum_j E[x_j^2] W_ij^2",
                                 gptq_rows);
  }
  if (!gptq_estimated.empty()) {
    j["gptq_estimated"] = type_names(gptq_estimated);
    j["predictor"] = j["predictor"].get<std::string>() +
                     fmt::format("; for {} GPTQ's prediction is estimated: the diagonal form times GPTQ's ratio to it at {}, "
                                 "interpolated geometrically in bits per weight",
                                 fmt::join(type_names(gptq_estimated), ", "), fmt::join(type_names({std::begin(kGptqAnchors), std::end(kGptqAnchors)}), ", "));
  }
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
      m.gptq_rows = j.value("gptq_rows", int64_t{0});
      if (m.gptq_rows < 0) bad("gptq_rows must be >= 0");
      for (const auto& name : j.value("gptq_estimated", nlohmann::json::array())) {
        const auto t = ggml_type_from_name(name.get<std::string>());
        if (!t) bad("unknown type in gptq_estimated: " + json_text(name));
        m.gptq_estimated.push_back(*t);
      }
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
