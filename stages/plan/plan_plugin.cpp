// The plan stage's nodes:
//   plan.measure - model + score statistics -> measurements (squish.measurements/1 JSON)
//   plan.recipe  - measurements + a target (size, bpw, device, memory) -> CompressionRecipe JSON,
//                  with a terminal summary and an SVG of the allocation beside it
#include "core/io/atomic_file.hpp"
#include "core/io/score_folder.hpp"
#include "core/io/text_file.hpp"
#include "core/prune/recovery.hpp"
#include "core/quant/gptq.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "core/runtime/ranks.hpp"
#include "core/recipe/recipe.hpp"
#include "stages/plan/measure.hpp"
#include "stages/plan/planner.hpp"
#include "stages/plan/prune_select.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <map>

#include <cstdio>
#include <filesystem>

namespace squish::plan {
namespace {

// Terminal summary of what pruning removed, per layer.
std::string pruning_text(const recipe::CompressionRecipe& r) {
  std::map<int, std::vector<std::string>> by_layer;
  double total = 0;
  for (const auto& x : r.removals) {
    const int l = x.value("layer", -1);
    const std::string kind = x.value("kind", "");
    total += x.value("score", 0.0);
    if (kind == "kv_group") by_layer[l].push_back(fmt::format("kv{}", x.value("index", -1)));
    else if (kind == "q_heads") by_layer[l].push_back(fmt::format("q{}", fmt::join(x.value("q_heads", std::vector<int>{}), ",")));
    else if (kind == "ffn_channels") by_layer[l].push_back(fmt::format("{} ffn", x.value("count", 0)));
    else if (kind == "layer") by_layer[l].push_back("whole layer");
  }
  std::string s = fmt::format("pruning ({} recovery): {} removals, summed cost {:.4g}\n ", r.recovery, r.removals.size(), total);
  for (const auto& [l, v] : by_layer) s += fmt::format(" L{}: {};", l, fmt::join(v, " "));
  return s + "\n";
}

// The budget a plan node's (or measure node's) parameters name: size, bpw, device or memory.
Target target_of(const nlohmann::json& p) {
  Target t;
  const int64_t size = p["size"].get<int64_t>();
  if (size < 0) fail(ExitCode::Usage, "size must be >= 0 (got {})", size);
  t.size = static_cast<uint64_t>(size);
  t.bpw = p["bpw"].get<double>();
  t.device = p["device"].get<std::string>();
  t.memory_gb = p["memory"].get<double>();
  t.ctx = static_cast<int>(p["ctx"].get<int64_t>());
  if (!(t.bpw >= 0) || !(t.memory_gb >= 0)) fail(ExitCode::Usage, "bpw and memory must be >= 0");
  return t;
}

class MeasureNode final : public Node {
 public:
  explicit MeasureNode(const NodeContext& ctx) : ctx_(ctx) {}
  bool produce(Message& out) override {
    if (done_) return false;
    done_ = true;
    // Under mpirun the ranks share the weights out (measure.hpp); one that fails ends them all.
    const Ranks& ranks = Ranks::world();
    ranks.run_or_abort_all([&] { out = Message::of(Document{"measurements", measurements(ranks)}); });  // no rank left waiting
    return true;
  }

 private:
  nlohmann::json measurements(const Ranks& ranks) {
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
    const std::string gptq_types = p["gptq_types"].get<std::string>();
    if (gptq_types != "anchors" && gptq_types != "all") fail(ExitCode::Usage, "gptq_types must be \"anchors\" or \"all\" (got '{}')", gptq_types);
    MeasureOptions opt;
    opt.threads = ctx_.threads_param();
    opt.method = method;
    opt.gptq_damp = damp;
    opt.gptq_every_type = gptq_types == "all";
    opt.gptq_rows = p["gptq_rows"].get<int64_t>();
    namespace fs = std::filesystem;
    std::error_code ec;
    // Rank 0 decides for every rank (the others may not see its files).
    std::string stored;
    if (ranks.rank() == 0 && p["reuse"].get<bool>() && fs::exists(output) &&
        fs::last_write_time(output, ec) >= fs::last_write_time(ScoreFolder(stats).fisher_path(), ec) && !ec &&
        read_json_file(output, "measurements").value("types", nlohmann::json::array()) == nlohmann::json(candidate_type_names())) {
      const Measurements m = Measurements::load(output);
      if (m.model == model && m.stats == stats && m.method == method && (method != "gptq" || m.gptq_damp == damp) &&
          m.gptq_estimated == gptq_estimated_types(opt) && m.gptq_rows == (method == "gptq" ? opt.gptq_rows : 0))
        stored = m.to_json().dump();
    }
    stored = ranks.broadcast(stored);
    if (!stored.empty()) {
      nlohmann::json j = nlohmann::json::parse(stored);
      ctx_.progress("tensors measured (stored)", j["tensors"].size(), j["tensors"].size());
      return j;
    }
    // Where the budget holds every weight at F16, that is each one's least-loss type (its error
    // is half-precision rounding, orders below Q8_0's), so the plan is all-F16 whatever the other
    // types would measure: only F16 is measured (when that plan, header included, fits), and
    // nothing is stored (another budget needs every type).
    const Target target = target_of(p);
    if (target.size || target.bpw > 0 || !target.device.empty() || target.memory_gb > 0) {
      std::string why;
      const uint64_t budget = budget_bytes(target, recipe::resolve(recipe::CompressionRecipe::from_preset("F32"), model), &why);
      const uint64_t f16 = recipe::resolve(recipe::CompressionRecipe::from_preset("F16"), model).file_bytes;
      if (f16 <= budget) {
        MeasureOptions f16_only = opt;
        f16_only.only_types = {GGMLType::F16};
        f16_only.progress = [this](uint64_t done, uint64_t total) { ctx_.progress("tensors measured (F16 only)", done, total); };
        Measurements m = measure(model, stats, f16_only);
        m.scope = fmt::format("F16 only measured: the budget holds every weight at F16, {} bytes", f16);
        bool fits = true;
        try {
          plan::plan(m, model, target);
        } catch (const Error& e) {
          if (e.code() != ExitCode::InputData) throw;
          fits = false;  // the plan's header does not fit beside them: measure everything
        }
        if (fits) {
          ctx_.warn(fmt::format("the budget ({}) holds every weight at F16 ({} bytes): F16 measured only", why, f16));
          return m.to_json();
        }
      }
    }
    opt.progress = [this](uint64_t done, uint64_t total) { ctx_.progress("tensors measured", done, total); };
    opt.checkpoint = output + ".partial";
    if (!p["reuse"].get<bool>()) remove_checkpoint(opt.checkpoint);
    opt.resumed = [this, &opt](uint64_t stored, uint64_t total) {
      ctx_.warn(fmt::format("resuming an interrupted measurement: {} of {} tensors taken from {}", stored, total, opt.checkpoint));
    };
    const Measurements m = measure(model, stats, opt);
    nlohmann::json j = m.to_json();
    if (ranks.rank() == 0) write_json_file(output, j);
    ranks.broadcast("stored");  // the checkpoints go once rank 0 has stored the whole (a failed write aborts every rank first)
    remove_checkpoint(opt.checkpoint);
    return j;
  }

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
    const Target t = target_of(p);
    const Measurements m = Measurements::from_json(in.document().body, "measurements");
    // What to remove (and how compress repairs it), then the types for what is left.
    PruneTarget pt;
    pt.kv = p["prune_kv"].get<double>();
    pt.q = p["prune_q"].get<double>();
    pt.ffn = p["prune_ffn"].get<double>();
    pt.drop_layers = static_cast<int>(p["drop_layers"].get<int64_t>());
    pt.recovery = p["recovery"].get<std::string>();
    pt.damp = p["recovery_damp"].get<double>();
    pt.by = p["prune_by"].get<std::string>();
    pt.ffn_align = static_cast<int>(p["ffn_align"].get<int64_t>());
    const std::string model = p["model"].get<std::string>();
    auto plan_with = [&](const PruneTarget& x) {
      recipe::CompressionRecipe structure = recipe::CompressionRecipe::from_preset("F32");
      select_pruning(model, m.stats, x, structure, [this](uint64_t d, uint64_t n) { ctx_.progress("pruning units costed", d, n); });
      double prune_cost = 0;
      for (const auto& r : structure.removals) prune_cost += r.value("score", 0.0);
      return std::make_pair(plan(m, model, t, &structure), prune_cost);
    };
    PlanResult r;
    if (p["prune_search"].get<bool>()) {
      // Pruning as part of the plan: every structure on a ladder of KV and FFN fractions, each
      // planned for the budget (a device budget keeps the pruned model's smaller KV cache free);
      // the least predicted loss, quantization and pruning together (both nats per token), wins.
      nlohmann::json tried = nlohmann::json::array();
      double best = 0;
      bool have = false;
      for (double kv : {0.0, 0.125, 0.25, 0.375, 0.5})
        for (double ffn : {0.0, 0.1, 0.2, 0.3}) {
          PruneTarget x = pt;
          x.kv = kv, x.ffn = ffn;
          try {
            auto [res, prune_cost] = plan_with(x);
            const double total = res.predicted_loss + prune_cost;
            tried.push_back({{"prune_kv", kv}, {"prune_ffn", ffn}, {"quant_loss", res.predicted_loss}, {"prune_loss", prune_cost},
                             {"total", total}, {"file_bytes", res.file_bytes}});
            if (!have || total < best) best = total, r = std::move(res), have = true;
          } catch (const Error& e) {
            if (e.code() != ExitCode::InputData && e.code() != ExitCode::Usage) throw;
            tried.push_back({{"prune_kv", kv}, {"prune_ffn", ffn}, {"infeasible", e.what()}});
          }
        }
      if (!have) fail(ExitCode::InputData, "plan: no pruning level fits the budget: {}", tried.back().value("infeasible", ""));
      // Not in the recipe: its text is in the file, whose size the plan has already fitted.
      r.summary["prune_search"] = tried;
      const auto& src = r.recipe.source;
      std::fputs(fmt::format("prune search: {} structures planned; chosen prune_kv {} prune_ffn {} (predicted {:.4g} nats/token)\n", tried.size(),
                             src.contains("pruning") ? src["pruning"].value("prune_kv", 0.0) : 0.0,
                             src.contains("pruning") ? src["pruning"].value("prune_ffn", 0.0) : 0.0, best)
                     .c_str(),
                 stdout);
    } else {
      r = plan_with(pt).first;
    }
    const std::string output = p["output"].get<std::string>();
    write_json_file(output, r.recipe.to_json());
    write_file_atomic(std::filesystem::path(output).replace_extension(".svg").string(), summary_svg(r));
    if (r.summary.contains("prune_search"))  // every structure tried, beside the recipe
      write_json_file(std::filesystem::path(output).replace_extension(".prune_search.json").string(), r.summary["prune_search"]);
    std::fputs(summary_text(r).c_str(), stdout);
    if (!r.recipe.removals.empty()) std::fputs(pruning_text(r.recipe).c_str(), stdout);
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
          {"stats", ParamType::Path, true, nullptr,
           fmt::format("score stage output folder ({}, {}; {}/ for gptq)", ScoreFolder::kFisherFile, ScoreFolder::kImatrixFile, kMomentsFolder)},
          {"output", ParamType::Output, false, "", "measurements JSON to write, reused when already there (\"\" = <stats>/measurements.json)"},
          {"reuse", ParamType::Bool, false, true, "reuse the output file when it holds this model's measurements"},
          {"method", ParamType::String, false, "rtn", fmt::format("the quantizer to measure and plan for: rtn | gptq (needs {}/)", kMomentsFolder)},
          {"damp", ParamType::Float, false, quant::kDefaultDamp, "GPTQ dampening, fraction of H's mean diagonal", 0, 1e6},
          {"gptq_types", ParamType::String, false, "anchors",
           "gptq: anchors = GPTQ run at Q2_K, Q3_K, Q6_K and estimated at Q4_K, Q5_K, Q8_0 (half the GPTQ runs); all = run at every type"},
          {"gptq_rows", ParamType::Int, false, kGptqSampleRows,
           "gptq: a larger weight is measured on this many rows spread evenly, the predictions scaled by their share of the "
           "Fisher-weighted energy (0 = every row)",
           0},
          {"threads", ParamType::Int, false, 0, "worker threads (0 = the pipeline's setting / all cores)", 0, 4096},
          // The plan's budget, when known: a budget that holds every weight at F16 needs F16 measured only.
          {"size", ParamType::Int, false, 0, "the plan's file size budget in bytes (0 = not known here)", 0},
          {"bpw", ParamType::Float, false, 0.0, "the plan's budget in bits per source parameter", 0, 64},
          {"device", ParamType::String, false, "", "the plan's device preset"},
          {"memory", ParamType::Float, false, 0.0, "the plan's usable memory in GB", 0, 1e6},
          {"ctx", ParamType::Int, false, 4096, "context whose KV cache a device budget keeps free", 0, 1 << 24}},
         [](const NodeContext& c) { return std::make_unique<MeasureNode>(c); }});
  r.add({"plan.recipe", "choose one type per tensor: least predicted loss with the whole file within the budget", NodeRole::Transform, false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"output", ParamType::Output, true, nullptr, "recipe JSON to write (an .svg of the plan is written beside it)"},
          {"size", ParamType::Int, false, 0, "file size budget in bytes", 0},
          {"bpw", ParamType::Float, false, 0.0, "budget in bits per source parameter", 0, 64},
          {"device", ParamType::String, false, "", "device preset: " + device_presets_text()},
          {"memory", ParamType::Float, false, 0.0, "usable memory in GB (instead of a device)", 0, 1e6},
          {"ctx", ParamType::Int, false, 4096, "context whose KV cache a device budget keeps free", 0, 1 << 24},
          {"prune_kv", ParamType::Float, false, 0.0, "fraction of all KV groups to remove (with their q heads)", 0, 0.99},
          {"prune_q", ParamType::Float, false, 0.0, "fraction of all q heads to remove (one per kept KV group at a time; removed groups' heads count)", 0, 0.99},
          {"prune_ffn", ParamType::Float, false, 0.0, "fraction of all FFN channels to remove", 0, 0.99},
          {"drop_layers", ParamType::Int, false, 0, "whole layers to remove", 0, 4096},
          {"recovery", ParamType::String, false, "none", "repair of the pruned output projections: none | bias | refit"},
          {"recovery_damp", ParamType::Float, false, prune::kDefaultRidge, "refit's ridge, fraction of the kept inputs' mean E[x^2]", 0, 1e6},
          {"prune_by", ParamType::String, false, "predicted", "unit costs: predicted (after recovery, from the moments) | taylor | fisher"},
          {"prune_search", ParamType::Bool, false, false,
           "choose the pruning too: KV 0-50% x FFN 0-30%, each planned for the budget; least predicted loss (quantization + pruning)"},
          {"ffn_align", ParamType::Int, false, 0, "FFN channels removed per layer in multiples of this (0 = 256 if n_ff allows, else 32)", 0, 1 << 22}},
         [](const NodeContext& c) { return std::make_unique<RecipeNode>(c); }});
}

}  // namespace
}  // namespace squish::plan

SQUISH_PLUGIN("plan", "0.1.0", "measured sensitivities + a budget -> a mixed-precision CompressionRecipe", squish::plan::register_nodes)
