// The compress stage: a checkpoint streams through prune -> quantize -> GGUF writer nodes,
// following one CompressPlan (resolved once per process from the same parameters).
//   compress.prune        - slice heads / channels, drop layers, rope-permute llama q/k; to F32
//   compress.quantize     - quantize each tensor to its planned type (parallel)
//   compress.gguf_writer  - write each tensor at its final offset as it arrives; commit at the end
#include "core/gguf/gguf.hpp"
#include "core/gguf/hf_to_gguf.hpp"
#include "core/io/imatrix.hpp"
#include "core/runtime/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "stages/compress/prune.hpp"
#include "core/recipe/recipe.hpp"

#include <cstring>
#include <mutex>

namespace squish::compress {
using namespace squish::recipe;
namespace {

// One plan per (model, recipe, preset) in the process: every node sees the same object.
std::shared_ptr<const CompressPlan> plan_for(const NodeContext& ctx) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const CompressPlan>> cache;
  const std::string model = ctx.params["model"].get<std::string>();
  const std::string recipe = ctx.params["recipe"].get<std::string>();
  const std::string preset = ctx.params["preset"].get<std::string>();
  if (recipe.empty() == preset.empty())
    fail(ExitCode::Usage, "give exactly one of 'recipe' (a recipe JSON file) or 'preset' (e.g. Q4_K_M)");
  const std::string key = model + '\n' + recipe + '\n' + preset;
  std::lock_guard lock(mu);
  auto& slot = cache[key];
  if (!slot) {
    const CompressionRecipe r = recipe.empty() ? CompressionRecipe::from_preset(preset) : CompressionRecipe::load(recipe);
    slot = std::make_shared<const CompressPlan>(resolve(r, model));
  }
  return slot;
}

std::vector<ParamSpec> plan_params() {
  return {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"recipe", ParamType::String, false, "", "CompressionRecipe JSON file (docs/recipe.md)"},
          {"preset", ParamType::String, false, "", "llama.cpp mixture instead of a recipe: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, Q3_K_S, Q2_K, ..."}};
}

Tensor with_bytes(const Tensor& like, std::string name, std::vector<std::byte> bytes) {
  Tensor t;
  t.name = std::move(name);
  t.shape = like.shape;
  t.meta = like.meta;
  t.data = Buffer::owned(std::move(bytes));
  return t;
}

class Prune final : public Node {
 public:
  explicit Prune(const NodeContext& ctx) : plan_(plan_for(ctx)) {}
  void consume(const Message& in, Emitter& out) override {
    if (!in.is_tensor()) return out.emit(in);
    const Tensor& t = in.tensor();
    const PlannedTensor* p = plan_->find_hf(t.name);
    if (!p) return;  // a dropped layer's tensor, or one with no GGUF counterpart
    std::vector<float> f = prune_tensor(t, *p, t.meta.value("source", plan_->model_dir));
    std::vector<std::byte> bytes(f.size() * sizeof(float));
    std::memcpy(bytes.data(), f.data(), bytes.size());
    Tensor o = with_bytes(t, t.name, std::move(bytes));
    o.dtype = DType::F32;
    o.shape = p->shape;
    o.meta["gguf_name"] = p->gguf_name;
    out.emit(in.derive(std::move(o)));
  }

 private:
  std::shared_ptr<const CompressPlan> plan_;
};

class Quantize final : public Node {
 public:
  explicit Quantize(const NodeContext& ctx) : plan_(plan_for(ctx)) {
    const std::string path = ctx.params["imatrix"].get<std::string>();
    if (!path.empty()) {
      imatrix_ = read_imatrix(path);
      imatrix_path_ = path;
    }
  }
  void consume(const Message& in, Emitter& out) override {
    if (!in.is_tensor()) return out.emit(in);
    const Tensor& t = in.tensor();
    const PlannedTensor* p = plan_->find_hf(t.name);
    if (!p) fail(ExitCode::Runtime, "tensor '{}' is not in the plan", t.name);
    if (t.dtype != DType::F32) fail(ExitCode::Runtime, "tensor '{}' reached quantize as {} (expected F32 from compress.prune)", t.name, dtype_name(t.dtype));
    std::vector<float> f = t.to_f32();
    const std::vector<float> w = importance_for(*p);
    Tensor o = with_bytes(t, t.name, quantize_tensor(f, *p, w.empty() ? nullptr : w.data()));
    o.dtype = DType::Quantized;
    o.ggml_type = static_cast<int>(p->type);
    out.emit(in.derive(std::move(o)));
  }

 private:
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

  std::shared_ptr<const CompressPlan> plan_;
  Imatrix imatrix_;
  std::string imatrix_path_;
};

class GGUFWriterNode final : public Node {
 public:
  explicit GGUFWriterNode(const NodeContext& ctx) : ctx_(ctx), plan_(plan_for(ctx)) {
    std::vector<gguf::TensorDecl> decls;
    for (const auto& pt : plan_->tensors) decls.push_back({pt.gguf_name, pt.ne, pt.type});
    writer_ = std::make_unique<gguf::Writer>(ctx.params["output"].get<std::string>(), plan_->metadata, std::move(decls));
  }
  void consume(const Message& in, Emitter&) override {
    if (!in.is_tensor()) return;
    const Tensor& t = in.tensor();
    const PlannedTensor* p = plan_->find_hf(t.name);
    if (!p) fail(ExitCode::Runtime, "tensor '{}' is not in the plan", t.name);
    if (t.dtype != DType::Quantized || t.ggml_type != static_cast<int>(p->type))
      fail(ExitCode::Runtime, "tensor '{}' reached the writer as {} instead of {}", t.name, t.dtype == DType::Quantized ? ggml_type_name(static_cast<GGMLType>(t.ggml_type)) : dtype_name(t.dtype), ggml_type_name(p->type));
    writer_->write_tensor(p->gguf_name, t.bytes());
    const uint64_t done = ++written_;
    ctx_.progress("tensors written", done, plan_->tensors.size());
  }
  void finish(Emitter& out) override {
    for (const auto& pt : plan_->tensors)  // tensors the converter generates (rope_freqs)
      if (!pt.generated.empty())
        writer_->write_tensor(pt.gguf_name, std::as_bytes(std::span(pt.generated)));
    writer_->commit();  // fails if any tensor is missing
    nlohmann::json report = plan_->summary();
    report["output"] = writer_->path();
    report["file_bytes"] = writer_->file_size();
    out.emit(Message::of(Document{"compress_report", std::move(report)}));
  }

 private:
  NodeContext ctx_;
  std::shared_ptr<const CompressPlan> plan_;
  std::unique_ptr<gguf::Writer> writer_;
  std::atomic<uint64_t> written_{0};
};

// Writes the plan (types, reasons, sizes) without compressing: `squish-run` with a plan-only
// pipeline, or beside the GGUF for audit.
class PlanReport final : public Node {
 public:
  explicit PlanReport(const NodeContext& ctx) : plan_(plan_for(ctx)), output_(ctx.params["output"].get<std::string>()) {}
  void consume(const Message&, Emitter&) override {}
  void finish(Emitter&) override;

 private:
  std::shared_ptr<const CompressPlan> plan_;
  std::string output_;
};

}  // namespace
}  // namespace squish::compress

#include "core/io/atomic_file.hpp"

namespace squish::compress {
using namespace squish::recipe;
namespace {

void PlanReport::finish(Emitter&) { write_file_atomic(output_, plan_->summary().dump(1) + "\n"); }

void register_nodes(NodeRegistry& r) {
  auto with = [](std::vector<ParamSpec> extra) {
    auto p = plan_params();
    p.insert(p.end(), extra.begin(), extra.end());
    return p;
  };
  r.add({"compress.prune", "prune heads, KV groups, FFN channels and layers as the plan says; output F32", NodeRole::Transform, true,
         plan_params(), [](const NodeContext& c) { return std::make_unique<Prune>(c); }});
  r.add({"compress.quantize", "quantize each tensor to the type the plan gives it", NodeRole::Transform, true,
         with({{"imatrix", ParamType::String, false, "", "importance matrix (llama.cpp imatrix.dat, e.g. from the score stage)"}}),
         [](const NodeContext& c) { return std::make_unique<Quantize>(c); }});
  r.add({"compress.gguf_writer", "write the GGUF: layout from the plan, tensors at their offsets as they arrive", NodeRole::Sink, true,
         with({{"output", ParamType::Path, true, nullptr, "GGUF file to write (atomically)"}}),
         [](const NodeContext& c) { return std::make_unique<GGUFWriterNode>(c); }});
  r.add({"compress.plan_report", "write the resolved plan (every tensor's type, reason and size) as JSON", NodeRole::Sink, false,
         with({{"output", ParamType::Path, true, nullptr, "plan JSON file"}}),
         [](const NodeContext& c) { return std::make_unique<PlanReport>(c); }});
}

}  // namespace
}  // namespace squish::compress

SQUISH_PLUGIN("compress", "0.1.0", "prune + mixed-precision quantize + GGUF write", squish::compress::register_nodes)
