// The plan stage's nodes:
//   plan.measure - model + score statistics -> measurements (squish.measurements/1 JSON)
//   plan.recipe  - measurements + a target (size, bpw, device, memory) -> CompressionRecipe JSON,
//                  with a terminal summary and an SVG of the allocation beside it
#include "core/io/atomic_file.hpp"
#include "core/runtime/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "core/recipe/recipe.hpp"
#include "stages/plan/measure.hpp"
#include "stages/plan/planner.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <filesystem>

namespace squish::plan {
namespace {

class MeasureNode final : public Node {
 public:
  explicit MeasureNode(const NodeContext& ctx) : ctx_(ctx) {}
  bool produce(Message& out) override {
    if (done_) return false;
    done_ = true;
    const auto& p = ctx_.params;
    const std::string model = std::filesystem::absolute(p["model"].get<std::string>()).string();
    const std::string stats = std::filesystem::absolute(p["stats"].get<std::string>()).string();
    const std::string output = p["output"].get<std::string>().empty() ? (std::filesystem::path(stats) / "measurements.json").string()
                                                                      : p["output"].get<std::string>();
    // Stored measurements of the same model and statistics are reused: a new budget plans in
    // well under a second. They are recomputed when the statistics are newer than the file.
    const std::string method = p["method"].get<std::string>();
    const double damp = p["damp"].get<double>();
    if (!recipe::is_quant_method(method)) fail(ExitCode::Usage, "method must be \"rtn\" or \"gptq\" (got '{}')", method);
    if (!(damp >= 0)) fail(ExitCode::Usage, "damp must be >= 0 (got {})", damp);
    namespace fs = std::filesystem;
    std::error_code ec;
    const bool fresh = p["reuse"].get<bool>() && fs::exists(output) &&
                       fs::last_write_time(output, ec) >= fs::last_write_time(fs::path(stats) / "fisher.dat", ec) && !ec;
    if (fresh) {
      const Measurements m = Measurements::load(output);
      if (m.model == model && m.stats == stats && m.method == method && (method != "gptq" || m.gptq_damp == damp)) {
        ctx_.progress("tensors measured (stored)", m.tensors.size(), m.tensors.size());
        out = Message::of(Document{"measurements", m.to_json()});
        return true;
      }
    }
    MeasureOptions opt;
    opt.threads = ctx_.threads_param();
    opt.method = method;
    opt.gptq_damp = damp;
    opt.progress = [this](uint64_t done, uint64_t total) { ctx_.progress("tensors measured", done, total); };
    const Measurements m = measure(model, stats, opt);
    nlohmann::json j = m.to_json();
    write_file_atomic(output, j.dump(1) + "\n");
    out = Message::of(Document{"measurements", std::move(j)});
    return true;
  }

 private:
  NodeContext ctx_;
  bool done_ = false;
};

// Waits for the measurements document on its input edge, then plans.
class RecipeNode final : public Node {
 public:
  explicit RecipeNode(const NodeContext& ctx) : ctx_(ctx) {}
  void consume(const Message& in, Emitter& out) override {
    if (in.is_tensor() || in.document().kind != "measurements") return out.emit(in);
    const auto& p = ctx_.params;
    Target t;
    const int64_t size = p["size"].get<int64_t>();
    if (size < 0) fail(ExitCode::Usage, "size must be >= 0 (got {})", size);
    t.size = static_cast<uint64_t>(size);
    t.bpw = p["bpw"].get<double>();
    t.device = p["device"].get<std::string>();
    t.memory_gb = p["memory"].get<double>();
    t.ctx = static_cast<int>(p["ctx"].get<int64_t>());
    if (!(t.bpw >= 0) || !(t.memory_gb >= 0)) fail(ExitCode::Usage, "bpw and memory must be >= 0");
    const Measurements m = Measurements::from_json(in.document().body, "measurements");
    const PlanResult r = plan(m, p["model"].get<std::string>(), t);
    const std::string output = p["output"].get<std::string>();
    write_file_atomic(output, r.recipe.to_json().dump(1) + "\n");
    write_file_atomic(std::filesystem::path(output).replace_extension(".svg").string(), summary_svg(r));
    std::fputs(summary_text(r).c_str(), stdout);
    std::fflush(stdout);
    // The recipe document compress nodes take (stages/compress): model + recipe, and the summary.
    nlohmann::json doc = r.summary;
    doc["model"] = std::filesystem::absolute(p["model"].get<std::string>()).string();
    doc["recipe"] = r.recipe.to_json();
    out.emit(Message::of(Document{"recipe", std::move(doc)}));
  }

 private:
  NodeContext ctx_;
};

void register_nodes(NodeRegistry& r) {
  r.add({"plan.measure", "predicted loss of every weight at every candidate type (diagonal Fisher x quantization error)",
         NodeRole::Source, false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"stats", ParamType::Path, true, nullptr, "score stage output folder (fisher.dat, imatrix.dat)"},
          {"output", ParamType::String, false, "", "measurements JSON to write, reused when already there (\"\" = <stats>/measurements.json)"},
          {"reuse", ParamType::Bool, false, true, "reuse the output file when it holds this model's measurements"},
          {"method", ParamType::String, false, "rtn", "the quantizer to measure and plan for: rtn | gptq (needs moments/)"},
          {"damp", ParamType::Float, false, 0.01, "GPTQ dampening, fraction of H's mean diagonal"},
          {"threads", ParamType::Int, false, 0, "worker threads (0 = the pipeline's setting / all cores)"}},
         [](const NodeContext& c) { return std::make_unique<MeasureNode>(c); }});
  r.add({"plan.recipe", "choose one type per tensor: least predicted loss with the whole file within the budget", NodeRole::Transform, false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"output", ParamType::Path, true, nullptr, "recipe JSON to write (an .svg of the plan is written beside it)"},
          {"size", ParamType::Int, false, 0, "file size budget in bytes"},
          {"bpw", ParamType::Float, false, 0.0, "budget in bits per source parameter"},
          {"device", ParamType::String, false, "", "device preset: macbook-air-16gb, macbook-pro-32gb, rtx-5090-24gb"},
          {"memory", ParamType::Float, false, 0.0, "usable memory in GB (instead of a device)"},
          {"ctx", ParamType::Int, false, 4096, "context whose KV cache a device budget keeps free"}},
         [](const NodeContext& c) { return std::make_unique<RecipeNode>(c); }});
}

}  // namespace
}  // namespace squish::plan

SQUISH_PLUGIN("plan", "0.1.0", "measured sensitivities + a budget -> a mixed-precision CompressionRecipe", squish::plan::register_nodes)
