// The compress stage: a checkpoint streams through prune -> quantize -> GGUF writer nodes,
// following one recipe that reaches them as a document on their input edge.
//   compress.recipe       - source: a recipe file or a llama.cpp preset -> the "recipe" document
//                           (plan.recipe sends the same document from a measured plan)
//   compress.prune        - slice heads / channels, drop layers, rope-permute llama q/k; to F32
//   compress.quantize     - quantize each tensor to its planned type (parallel)
//   compress.gguf_writer  - write each tensor at its final offset as it arrives; commit at the end
// The tensor reader has an edge from the recipe's sender, so it starts only after the recipe has
// reached every compress node (core/runtime/graph.hpp: gated sources).
#include "core/gguf/gguf.hpp"
#include "core/io/text_file.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/io/score_folder.hpp"
#include "core/prune/recovery.hpp"
#include "core/quant/gptq.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "stages/compress/prune.hpp"
#include "core/recipe/recipe.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>

namespace squish::compress {
using namespace squish::recipe;
namespace {

// The "recipe" document: {"model": <hf folder>, "recipe": <squish.recipe/1 JSON>, ...}.
Document recipe_document(const std::string& model, const CompressionRecipe& r) {
  return Document{"recipe", {{"model", std::filesystem::absolute(model).string()}, {"recipe", r.to_json()}}};
}

// A compress node's plan, resolved from the first recipe document it receives. Every node
// resolves the same document, so they agree on every tensor's shape and type.
class PlanSlot {
 public:
  explicit PlanSlot(std::string node) : node_(std::move(node)) {}
  // True when `in` is a recipe document (then the plan is set; a different second recipe fails).
  bool take(const Message& in) {
    if (in.is_tensor() || in.document().kind != "recipe") return false;
    const auto& body = in.document().body;
    if (!body.is_object() || !body.contains("model") || !body["model"].is_string() || !body.contains("recipe"))
      fail(ExitCode::Runtime, "{}: the recipe document has no 'model' and 'recipe'", node_);
    const std::string key = body["model"].get<std::string>() + '\n' + json_text(body["recipe"]);
    std::lock_guard lock(mu_);
    if (plan_) {
      if (key != key_) fail(ExitCode::Usage, "{}: received two different recipes", node_);
      return true;
    }
    plan_ = std::make_shared<const CompressPlan>(
        resolve(CompressionRecipe::from_json(body["recipe"], "recipe document"), body["model"].get<std::string>()));
    key_ = key;
    return true;
  }
  const CompressPlan& get() const {
    std::lock_guard lock(mu_);
    if (!plan_)
      fail(ExitCode::Usage, "{}: a tensor arrived before any recipe: connect a compress.recipe or plan.recipe node to this node "
           "and to the tensor reader", node_);
    return *plan_;
  }
  bool has() const {
    std::lock_guard lock(mu_);
    return plan_ != nullptr;
  }

 private:
  std::string node_;
  mutable std::mutex mu_;
  std::shared_ptr<const CompressPlan> plan_;
  std::string key_;
};

// Source: a recipe file or a llama.cpp preset, checked against the checkpoint when the pipeline
// is built (before anything runs), sent as the recipe document.
class RecipeSource final : public Node {
 public:
  explicit RecipeSource(const NodeContext& ctx) {
    const std::string model = ctx.params["model"].get<std::string>();
    const std::string recipe = ctx.params["recipe"].get<std::string>();
    const std::string preset = ctx.params["preset"].get<std::string>();
    if (recipe.empty() == preset.empty())
      fail(ExitCode::Usage, "give exactly one of 'recipe' (a recipe JSON file) or 'preset' (e.g. Q4_K_M)");
    // A preset (given here or in a recipe file) mixes as llama-quantize's does with or without the
    // importance matrix the quantize node will use: its own `imatrix`, else the stats folder's.
    const std::string imatrix = ctx.params["imatrix"].get<std::string>(), stats = ctx.params["stats"].get<std::string>();
    const bool has_imatrix = !imatrix.empty() || (!stats.empty() && std::filesystem::exists(ScoreFolder(stats).imatrix_path()));
    CompressionRecipe r = recipe.empty() ? CompressionRecipe::from_preset(preset, has_imatrix) : CompressionRecipe::load(recipe);
    if (r.preset) r.preset_imatrix = has_imatrix;
    (void)resolve(r, model);  // every error in the recipe or the checkpoint, now
    doc_ = recipe_document(model, r);
  }
  bool produce(Message& out) override {
    if (sent_) return false;
    sent_ = true;
    out = Message::of(doc_);
    return true;
  }
  uint64_t expected_count() const override { return 1; }

 private:
  Document doc_;
  bool sent_ = false;
};

Tensor with_bytes(const Tensor& like, std::string name, std::vector<std::byte> bytes) {
  Tensor t;
  t.name = std::move(name);
  t.shape = like.shape;
  t.meta = like.meta;
  t.data = Buffer::owned(std::move(bytes));
  return t;
}

// Slices what the recipe removes; with a recipe `recovery`, repairs the output projections whose
// inputs were removed (core/prune/recovery.hpp) from the score stage's statistics and emits the
// bias that repair computes right after the projection.
class Prune final : public Node {
 public:
  explicit Prune(const NodeContext& ctx) : plan_(ctx.node_name), stats_(ctx.params["stats"].get<std::string>()) {}
  void consume(const Message& in, Emitter& out) override {
    if (plan_.take(in)) {
      std::lock_guard lock(setup_mu_);
      if (!ready_) setup(plan_.get());
      return out.emit(in);  // the recipe travels on to quantize and write
    }
    if (!in.is_tensor()) return out.emit(in);
    const Tensor& t = in.tensor();
    const CompressPlan& plan = plan_.get();
    const PlannedTensor* p = plan.find_hf(t.name);
    if (!p) return;  // a dropped layer's tensor, or one with no GGUF counterpart
    const std::string origin = t.meta.value("source", plan.model_dir);
    const PlannedTensor* bias = plan.recovery_bias_of(t.name);
    std::vector<float> f, b;
    if (bias && !p->keep_cols.empty()) {
      std::tie(f, b) = repaired(t, *p, origin);
    } else {
      f = prune_tensor(t, *p, origin);
      if (bias) b.assign(size_t(bias->shape[0]), 0.0f);  // nothing removed: nothing to repair
    }
    out.emit(in.derive(f32_tensor(t, *p, std::move(f))));
    if (bias) out.emit(in.derive(f32_tensor(t, *bias, std::move(b))));
  }

 private:
  // The float values become the message without a copy (a 152k-vocabulary matrix of a 32B is
  // 3.1 GB in float32).
  static Tensor f32_tensor(const Tensor& like, const PlannedTensor& p, std::vector<float> f) {
    Tensor o;
    o.name = p.hf_name;
    o.meta = like.meta;
    o.data = Buffer::owned_floats(std::move(f));
    o.dtype = DType::F32;
    o.shape = p.shape;
    o.meta["gguf_name"] = p.gguf_name;
    return o;
  }

  void setup(const CompressPlan& plan) {
    ready_ = true;
    bool repairs = false;
    for (const auto& pt : plan.tensors) repairs |= !pt.recovers.empty();
    if (!repairs) return;  // no recovery, or nothing removed that it would repair
    if (stats_.empty())
      fail(ExitCode::Usage, "recipe recovery '{}' needs 'stats' on compress.prune: the score stage's output folder", plan.recipe.recovery);
    const ScoreFolder folder(stats_);
    fisher_ = folder.fisher();
    if (plan.recipe.recovery == "refit") moments_ = folder.require_moments("recovery refit needs the second moments");
  }

  // The projection's kept columns refit (or kept, with the removed inputs' mean folded into a
  // bias), and that bias.
  std::pair<std::vector<float>, std::vector<float>> repaired(const Tensor& t, const PlannedTensor& p, const std::string& origin) const {
    PlannedTensor whole = p;  // checks (shape, finite values) without slicing
    whole.keep_cols.clear();
    whole.keep_rows.clear();
    whole.shape = p.src_shape;
    std::vector<float> w = prune_tensor(t, whole, origin);
    const int64_t rows = p.src_shape[0];
    const int n = static_cast<int>(p.src_shape[1]);
    const std::string src = *gguf::hf_to_gguf_name(p.hf_name);
    prune::InputStats s;
    s.n = n;
    s.mean = fisher_.at(src, FisherFactor::Mean, size_t(n));
    const auto mode = prune::recovery_from_name(plan_.get().recipe.recovery);
    if (mode == prune::Recovery::Refit) {
      int hn = 0;
      if (!moments_->has(src)) fail(ExitCode::InputData, "{}: no moments for '{}'", moments_->dir(), src);
      s.h = moments_->load(src, &hn);
      if (hn != n) fail(ExitCode::InputData, "{}: the moments of '{}' are {} x {}, the tensor has {} columns", moments_->dir(), src, hn, hn, n);
    } else {
      s.h.assign(size_t(n) * n, 0.0f);  // unused by bias compensation
    }
    prune::Repair r = prune::repair(w.data(), rows, n, p.keep_cols, s, mode, plan_.get().recipe.recovery_damp);
    return {std::move(r.weight), std::move(r.bias)};
  }

  PlanSlot plan_;
  std::string stats_;
  std::mutex setup_mu_;
  bool ready_ = false;
  FisherFactors fisher_;
  std::optional<Moments> moments_;
};

// Quantizes each tensor to its planned type. Method "rtn": ggml's rounding (imatrix-weighted when
// an importance matrix is given); "gptq": error-compensating (core/quant/gptq.hpp) for every
// weight matrix whose input's second moments the score stage wrote, ggml's rounding for the rest
// (norms, the embedding lookup, types without integer levels). The method is the recipe's unless
// the node's parameter overrides it.
class Quantize final : public Node {
 public:
  explicit Quantize(const NodeContext& ctx)
      : ctx_(ctx), plan_(ctx.node_name), imatrix_path_(ctx.params["imatrix"].get<std::string>()),
        stats_(ctx.params["stats"].get<std::string>()), method_(ctx.params["method"].get<std::string>()) {
    if (!method_.empty() && !is_quant_method(method_))
      fail(ExitCode::Usage, "method must be \"rtn\" or \"gptq\" (got '{}')", method_);
    damp_ = ctx.params["damp"].get<double>();  // < 0: the recipe's
    if (std::isnan(damp_) || damp_ > 1e6) fail(ExitCode::Usage, "damp must be a fraction >= 0 (got {})", damp_);
    if (imatrix_path_.empty() && !stats_.empty()) imatrix_path_ = ScoreFolder(stats_).imatrix_path();
  }
  void consume(const Message& in, Emitter& out) override {
    if (plan_.take(in)) {
      // Read with the recipe, not at construction: in one pipeline the score stage writes them.
      std::lock_guard lock(setup_mu_);
      if (!ready_) setup(plan_.get());
      return out.emit(in);
    }
    if (!in.is_tensor()) return out.emit(in);
    const Tensor& t = in.tensor();
    const PlannedTensor* p = plan_.get().find_hf(t.name);
    if (!p) fail(ExitCode::Runtime, "tensor '{}' is not in the plan", t.name);
    if (t.dtype != DType::F32) fail(ExitCode::Runtime, "tensor '{}' reached quantize as {} (expected F32 from compress.prune)", t.name, dtype_name(t.dtype));
    // A view of the float32 values, not a copy.
    const std::span<const float> f(reinterpret_cast<const float*>(t.bytes().data()), t.bytes().size() / sizeof(float));
    const std::vector<float> w = importance_for(*p);
    Tensor o = with_bytes(t, t.name, use_gptq(*p) ? quantize_gptq(f, *p, w) : quantize_tensor(f, *p, w.empty() ? nullptr : w.data()));
    o.dtype = DType::Quantized;
    o.ggml_type = static_cast<int>(p->type);
    out.emit(in.derive(std::move(o)));
  }

 private:
  void setup(const CompressPlan& plan) {
    if (method_.empty()) method_ = plan.recipe.method;
    if (damp_ < 0) damp_ = plan.recipe.gptq_damp;
    if (!imatrix_path_.empty()) imatrix_ = read_imatrix(imatrix_path_);
    for (const PlannedTensor& p : plan.tensors)  // before any work: a type that needs an imatrix has one
      if (needs_importance(p.type) && importance_for(p).empty())
        fail(ExitCode::Usage, "{}: {} needs an importance matrix and {}", p.gguf_name, ggml_type_name(p.type),
             imatrix_path_.empty() ? "none is given (imatrix= or stats=)" : fmt::format("{} has no entry for it", imatrix_path_));
    if (method_ == "gptq") {
      if (stats_.empty()) fail(ExitCode::Usage, "method gptq needs 'stats': the score stage's output folder (scored with moments=true)");
      moments_ = ScoreFolder(stats_).require_moments("second moments for gptq");
    }
    ready_ = true;
  }

  bool use_gptq(const PlannedTensor& p) const {
    if (method_ != "gptq" || !p.kind || !gptq_applies(*p.kind, p.type)) return false;
    const auto src = gguf::hf_to_gguf_name(p.hf_name);
    return src && moments_->has(*src);
  }

  std::vector<std::byte> quantize_gptq(std::span<const float> f, const PlannedTensor& p, const std::vector<float>& imp) const {
    const int64_t cols = p.ne[0], rows = static_cast<int64_t>(f.size()) / cols;
    quant::GptqOptions opt;
    opt.damp = damp_;
    opt.act_order = ctx_.params["act_order"].get<bool>();
    const auto factor = factor_for(p, cols, opt);
    return quant::gptq_quantize(p.type, f.data(), rows, cols, *factor, imp.empty() ? nullptr : imp.data(), opt);
  }

  // H of the tensor's input (pruned inputs: the kept rows and columns).
  std::vector<float> moments_of(const PlannedTensor& p) const {
    int n = 0;
    std::vector<float> h = moments_->load(*gguf::hf_to_gguf_name(p.hf_name), &n);
    if (n != p.src_shape.back())
      fail(ExitCode::InputData, "{}: the moments of '{}' are {} x {}, the tensor has {} columns", moments_->dir(), p.hf_name, n, n, p.src_shape.back());
    if (p.keep_cols.empty()) return h;
    const size_t k = p.keep_cols.size();
    std::vector<float> s(k * k);
    for (size_t i = 0; i < k; ++i)
      for (size_t j = 0; j < k; ++j) s[i * k + j] = h[size_t(p.keep_cols[i]) * n + size_t(p.keep_cols[j])];
    return s;
  }

  // q/k/v (and gate/up) read one input: its factor is computed once, by the first tensor that
  // needs it, which alone reads H (n² floats: 1.4 GB for a 7B's down_proj). Tensors arrive in
  // layer order, so the few most recent inputs are kept.
  std::shared_ptr<const quant::GptqFactor> factor_for(const PlannedTensor& p, int64_t cols, const quant::GptqOptions& opt) const {
    std::string key = *moments_->input_of(*gguf::hf_to_gguf_name(p.hf_name));
    for (int64_t c : p.keep_cols) key += ',' + std::to_string(c);
    std::shared_ptr<FactorSlot> slot;
    {
      std::lock_guard lock(factors_mu_);
      for (auto& [k, s] : factors_)
        if (k == key) slot = s;
      if (!slot) {
        slot = std::make_shared<FactorSlot>();
        factors_.emplace_back(key, slot);
        if (factors_.size() > 4) factors_.erase(factors_.begin());
      }
    }
    std::call_once(slot->once, [&] {
      const std::vector<float> h = moments_of(p);
      slot->factor = std::make_shared<const quant::GptqFactor>(quant::gptq_factor(h.data(), cols, opt));
    });
    return slot->factor;
  }

  // The imatrix is keyed by the source model's GGUF names; pruned columns are sliced out.
  std::vector<float> importance_for(const PlannedTensor& p) const {
    if (imatrix_.empty() || !ggml_type_traits(p.type)->quantized) return {};
    const auto src = gguf::hf_to_gguf_name(p.hf_name);
    auto it = src ? imatrix_.find(*src) : imatrix_.end();
    if (it == imatrix_.end()) return {};  // as llama-quantize: quantize this one without
    const auto& v = it->second;
    const size_t src_cols = static_cast<size_t>(p.src_shape.back());
    if (v.size() != src_cols)
      fail(ExitCode::InputData, "{}: entry '{}' has {} columns, the tensor {}", imatrix_path_, it->first, v.size(), src_cols);
    if (p.keep_cols.empty()) return v;
    std::vector<float> out;
    for (int64_t c : p.keep_cols) out.push_back(v[static_cast<size_t>(c)]);
    return out;
  }

  NodeContext ctx_;
  PlanSlot plan_;
  std::string imatrix_path_, stats_, method_;
  double damp_ = -1;
  std::mutex setup_mu_;
  bool ready_ = false;
  Imatrix imatrix_;
  std::optional<Moments> moments_;
  struct FactorSlot {
    std::once_flag once;
    std::shared_ptr<const quant::GptqFactor> factor;
  };
  mutable std::mutex factors_mu_;
  mutable std::vector<std::pair<std::string, std::shared_ptr<FactorSlot>>> factors_;
};

class GGUFWriterNode final : public Node {
 public:
  explicit GGUFWriterNode(const NodeContext& ctx) : ctx_(ctx), plan_(ctx.node_name) {}
  void consume(const Message& in, Emitter&) override {
    if (plan_.take(in)) {
      std::lock_guard lock(open_mu_);
      if (!writer_) {  // the layout is known once the plan is: open the (temporary) output now
        std::vector<gguf::TensorDecl> decls;
        for (const auto& pt : plan_.get().tensors) decls.push_back({pt.gguf_name, pt.ne, pt.type});
        writer_ = std::make_unique<gguf::Writer>(ctx_.params["output"].get<std::string>(), plan_.get().metadata, std::move(decls));
      }
      return;
    }
    if (!in.is_tensor()) return;
    const Tensor& t = in.tensor();
    const PlannedTensor* p = plan_.get().find_hf(t.name);
    if (!p) fail(ExitCode::Runtime, "tensor '{}' is not in the plan", t.name);
    if (t.dtype != DType::Quantized || t.ggml_type != static_cast<int>(p->type))
      fail(ExitCode::Runtime, "tensor '{}' reached the writer as {} instead of {}", t.name, t.dtype == DType::Quantized ? ggml_type_name(static_cast<GGMLType>(t.ggml_type)) : dtype_name(t.dtype), ggml_type_name(p->type));
    writer_->write_tensor(p->gguf_name, t.bytes());
    const uint64_t done = ++written_;
    ctx_.progress("tensors written", done, plan_.get().tensors.size());
  }
  void finish(Emitter& out) override {
    const CompressPlan& plan = plan_.get();
    if (!writer_) fail(ExitCode::Runtime, "{}: no recipe reached the writer", ctx_.node_name);
    for (const auto& pt : plan.tensors)  // tensors the converter generates (rope_freqs)
      if (!pt.generated.empty())
        writer_->write_tensor(pt.gguf_name, std::as_bytes(std::span(pt.generated)));
    writer_->commit();  // fails if any tensor is missing
    nlohmann::json report = plan.summary();
    report["output"] = writer_->path();
    report["file_bytes"] = writer_->file_size();
    out.emit(Message::of(Document{"compress_report", std::move(report)}));
  }

 private:
  NodeContext ctx_;
  PlanSlot plan_;
  std::mutex open_mu_;
  std::unique_ptr<gguf::Writer> writer_;
  std::atomic<uint64_t> written_{0};
};

// Writes the plan (types, reasons, sizes) without compressing: `squish-run` with a plan-only
// pipeline, or beside the GGUF for audit.
class PlanReport final : public Node {
 public:
  explicit PlanReport(const NodeContext& ctx) : plan_(ctx.node_name), output_(ctx.params["output"].get<std::string>()) {}
  void consume(const Message& in, Emitter&) override { plan_.take(in); }
  void finish(Emitter&) override;

 private:
  PlanSlot plan_;
  std::string output_;
};

}  // namespace
}  // namespace squish::compress

#include "core/io/atomic_file.hpp"

namespace squish::compress {
using namespace squish::recipe;
namespace {

void PlanReport::finish(Emitter&) {
  if (!plan_.has()) fail(ExitCode::Usage, "no recipe reached this node: connect a compress.recipe or plan.recipe node to it");
  write_json_file(output_, plan_.get().summary());
}

void register_nodes(NodeRegistry& r) {
  r.add({"compress.recipe", "a recipe file or a llama.cpp preset, checked against the checkpoint, sent as the recipe document",
         NodeRole::Source, false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"recipe", ParamType::Path, false, "", "CompressionRecipe JSON file (docs/recipe.md)"},
          {"preset", ParamType::String, false, "", "llama.cpp mixture instead of a recipe: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, Q3_K_S, Q2_K, IQ4_XS, ..."},
          {"imatrix", ParamType::Path, false, "", "the quantize node's importance matrix, if any (a preset mixes as llama-quantize's with or without one)"},
          {"stats", ParamType::Path, false, "", "the quantize node's stats folder, if any (its imatrix.dat counts as above)"}},
         [](const NodeContext& c) { return std::make_unique<RecipeSource>(c); }});
  r.add({"compress.prune", "prune heads, KV groups, FFN channels and layers as the recipe says, repair as its recovery says; output F32",
         NodeRole::Transform, true,
         {{"stats", ParamType::Path, false, "",
           fmt::format("score stage output folder ({} input means, {}/): needed by a recipe's recovery", ScoreFolder::kFisherFile, kMomentsFolder)}},
         [](const NodeContext& c) { return std::make_unique<Prune>(c); }});
  r.add({"compress.quantize", "quantize each tensor to the type the recipe gives it", NodeRole::Transform, true,
         {{"imatrix", ParamType::Path, false, "",
           fmt::format("importance matrix (llama.cpp's imatrix format); \"\" = <stats>/{} when stats is set", ScoreFolder::kImatrixFile)},
          {"stats", ParamType::Path, false, "", fmt::format("score stage output folder ({}, {}/ for gptq)", ScoreFolder::kImatrixFile, kMomentsFolder)},
          {"method", ParamType::String, false, "", "rtn | gptq; \"\" = the recipe's (rtn unless it says)"},
          {"damp", ParamType::Float, false, -1.0, fmt::format("GPTQ dampening, fraction of H's mean diagonal; < 0 = the recipe's ({})", quant::kDefaultDamp)},
          {"act_order", ParamType::Bool, false, false, "GPTQ columns by decreasing activity, block scales fixed first (static groups)"}},
         [](const NodeContext& c) { return std::make_unique<Quantize>(c); }});
  r.add({"compress.gguf_writer", "write the GGUF: layout from the recipe, tensors at their offsets as they arrive", NodeRole::Sink, true,
         {{"output", ParamType::Output, true, nullptr, "GGUF file to write (atomically)"}},
         [](const NodeContext& c) { return std::make_unique<GGUFWriterNode>(c); }});
  r.add({"compress.plan_report", "write the resolved plan of the recipe it receives (every tensor's type, reason and size) as JSON",
         NodeRole::Sink, false, {{"output", ParamType::Output, true, nullptr, "plan JSON file"}},
         [](const NodeContext& c) { return std::make_unique<PlanReport>(c); }});
}

}  // namespace
}  // namespace squish::compress

SQUISH_PLUGIN("compress", "0.1.0", "prune + mixed-precision quantize + GGUF write", squish::compress::register_nodes)
