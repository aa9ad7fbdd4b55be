#include "stages/plan/planner.hpp"

#include "core/arch/architecture.hpp"
#include "core/base/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

namespace squish::plan {

namespace {

// The one list of device presets: what `device` accepts, what help texts and errors list.
constexpr DevicePreset kDevices[] = {{"macbook-air-16gb", 11}, {"macbook-pro-32gb", 24}, {"rtx-5090-24gb", 22}};

// The engine's KV cache element: F16 by default (core/model/attention.hpp).
constexpr int kKvCacheElemBytes = 2;

// One weight of the output model with its candidates: the measured ones, for a pruned tensor
// restricted to the types whose block fits its rows, with its bytes and (scaled by the weights
// it keeps) its predicted loss.
struct Item {
  std::string name;  // output GGUF name (layers renumbered after drop_layers)
  std::vector<int64_t> ne;
  std::vector<Candidate> candidates;
};

uint64_t aligned(uint64_t n) { return (n + gguf::kDefaultAlignment - 1) / gguf::kDefaultAlignment * gguf::kDefaultAlignment; }

std::vector<Item> items_of(const Measurements& m, const recipe::CompressPlan& base) {
  std::vector<Item> items;
  for (const auto& tm : m.tensors) {
    const auto named = arch::parse_gguf_name(tm.name);
    const recipe::PlannedTensor* p = named ? base.find_hf(arch::hf_name(*named->kind, named->layer)) : nullptr;
    if (!p) continue;  // in a dropped layer
    Item it{p->gguf_name, p->ne, {}};
    double src = 1, out = 1;
    for (int64_t x : tm.ne) src *= double(x);
    for (int64_t x : p->ne) out *= double(x);
    for (Candidate c : tm.candidates) {
      if (p->ne[0] % ggml_type_traits(c.type)->block_size != 0) continue;
      int64_t rows = 1;
      for (size_t i = 1; i < p->ne.size(); ++i) rows *= p->ne[i];
      c.bytes = aligned(ggml_row_size(c.type, p->ne[0]) * uint64_t(rows));
      c.predicted *= out / src;
      it.candidates.push_back(c);
    }
    if (it.candidates.empty())
      fail(ExitCode::InputData, "plan: no measured type fits the pruned rows of {} ({} values)", p->gguf_name, p->ne[0]);
    items.push_back(std::move(it));
  }
  return items;
}

recipe::CompressionRecipe make_recipe(const Measurements& m, const std::vector<Item>& items, const recipe::CompressionRecipe& structure,
                                      const Allocation& a, const Target& t, uint64_t budget, const std::string& why) {
  recipe::CompressionRecipe r = structure;  // what pruning removes and how it repairs
  r.preset.reset();
  r.tensors.clear();
  r.name = fmt::format("squish plan {} bytes", budget);
  r.origin = "plan";
  r.memory_budget_bytes = budget;
  r.device = t.device;
  r.method = m.method;  // the quantizer the predictions were measured with
  r.gptq_damp = m.gptq_damp;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& tm = items[i];
    const Candidate& c = tm.candidates[a.choice[i]];
    // The next smaller candidate: what this choice buys over it.
    const Candidate* lower = nullptr;
    for (const auto& k : tm.candidates)
      if (k.bytes < c.bytes && (!lower || k.bytes > lower->bytes)) lower = &k;
    std::string reason = fmt::format("{}: {} — predicted dL {:.3g}", tm.name, ggml_type_name(c.type), c.predicted);
    if (lower)
      reason += fmt::format(" vs {:.3g} at {} ({} bytes less)", lower->predicted, ggml_type_name(lower->type), c.bytes - lower->bytes);
    else if (!m.scope.empty())
      reason += " (" + m.scope + ")";
    reason += "; least total predicted loss within the budget (knapsack)";
    r.tensors.push_back({tm.name, c.type, reason});
  }
  nlohmann::json src = {{"planner", "squish.plan/1"},
                        {"measurements", {{"model", m.model}, {"stats", m.stats}, {"method", m.method}}},
                        {"budget_bytes", budget},
                        {"budget", why},
                        {"predicted_loss", a.loss}};
  if (structure.source.contains("pruning")) src["pruning"] = structure.source["pruning"];
  r.source = src;
  return r;
}

}  // namespace

std::span<const DevicePreset> device_presets() { return kDevices; }

std::string device_presets_text() {
  std::string s;
  for (const auto& d : kDevices) s += fmt::format("{}{} ({} GB usable)", s.empty() ? "" : ", ", d.name, d.usable_gb);
  return s;
}

uint64_t budget_bytes(const Target& t, const recipe::CompressPlan& base, std::string* why) {
  const int set = (t.size > 0) + (t.bpw > 0) + !t.device.empty() + (t.memory_gb > 0);
  if (set != 1) fail(ExitCode::Usage, "plan: give exactly one of size, bpw, device or memory");
  if (t.size) {
    *why = fmt::format("size {} bytes", t.size);
    return t.size;
  }
  if (t.bpw > 0) {
    const uint64_t b = static_cast<uint64_t>(t.bpw * double(base.source_params) / 8.0);
    *why = fmt::format("bpw {} x {} parameters / 8 = {} bytes", t.bpw, base.source_params, b);
    return b;
  }
  double usable = t.memory_gb;
  std::string what = fmt::format("memory {} GB", t.memory_gb);
  if (!t.device.empty()) {
    const DevicePreset* d = nullptr;
    for (const auto& x : kDevices)
      if (t.device == x.name) d = &x;
    if (!d) fail(ExitCode::Usage, "plan: unknown device '{}' (known: {})", t.device, device_presets_text());
    usable = d->usable_gb;
    what = fmt::format("{} ({} GB usable)", d->name, d->usable_gb);
  }
  if (t.ctx <= 0) fail(ExitCode::Usage, "plan: ctx must be positive (got {})", t.ctx);
  const double mem = usable * 1e9;
  const uint64_t kv = base.output_arch.kv_cache_bytes(t.ctx, kKvCacheElemBytes);  // the engine's cache, pruned layers' own heads
  if (mem <= double(kv)) fail(ExitCode::InputData, "plan: {} cannot hold the KV cache of {} tokens ({} bytes)", what, t.ctx, kv);
  const uint64_t b = static_cast<uint64_t>(mem) - kv;
  *why = fmt::format("{} minus the f16 KV cache at ctx {} ({} bytes) = {} bytes", what, t.ctx, kv, b);
  return b;
}

PlanResult plan(const Measurements& m, const std::string& model_dir, const Target& t, const recipe::CompressionRecipe* structure) {
  recipe::CompressionRecipe shape = structure ? *structure : recipe::CompressionRecipe::from_preset("F32");
  shape.preset = "F32";
  shape.tensors.clear();
  shape.memory_budget_bytes = 0;
  const auto source = recipe::resolve(recipe::CompressionRecipe::from_preset("F32"), model_dir);
  const auto base = recipe::resolve(shape, model_dir);  // the output model's tensors, at F32
  std::set<std::string> weights;
  for (const auto& pt : source.tensors)
    if (pt.kind->weight_matrix()) weights.insert(pt.gguf_name);
  std::set<std::string> measured;
  for (const auto& tm : m.tensors) measured.insert(tm.name);
  if (weights != measured)
    fail(ExitCode::InputData, "plan: the measurements ({} tensors, from {}) are not of this model ({} weight tensors)", measured.size(),
         m.model, weights.size());
  std::string why;
  const uint64_t budget = budget_bytes(t, base, &why);

  // Bytes outside the choice: 1-D tensors and the file header (whose recipe text grows with the
  // plan): solve for the weights, resolve, and shrink the weights' budget by any overshoot.
  uint64_t fixed = base.file_bytes;
  for (const auto& pt : base.tensors)
    if (pt.kind->weight_matrix()) fixed -= (pt.nbytes + gguf::kDefaultAlignment - 1) / gguf::kDefaultAlignment * gguf::kDefaultAlignment;
  const std::vector<Item> chosen = items_of(m, base);
  std::vector<std::vector<Option>> items;
  for (const auto& tm : chosen) {
    std::vector<Option> o;
    for (const auto& c : tm.candidates) o.push_back({c.bytes, c.predicted});
    items.push_back(std::move(o));
  }
  if (budget <= fixed) fail(ExitCode::InputData, "plan: budget {} bytes ({}) is below the {} bytes of norms and metadata", budget, why, fixed);
  uint64_t weights_budget = budget - fixed;
  // The plan of allocation a; its summary only when its file (header included) is within the budget.
  auto plan_of = [&](const Allocation& a) {
    PlanResult p;
    p.recipe = make_recipe(m, chosen, shape, a, t, budget, why);
    p.file_bytes = recipe::resolve(p.recipe, model_dir, /*enforce_budget=*/false).file_bytes;
    p.budget = budget;
    p.predicted_loss = a.loss;
    if (p.file_bytes > budget) return p;
    nlohmann::json ts = nlohmann::json::array();
    for (size_t i = 0; i < chosen.size(); ++i) {
      const auto& c = chosen[i].candidates[a.choice[i]];
      ts.push_back({{"name", chosen[i].name}, {"type", ggml_type_name(c.type)}, {"bytes", c.bytes}, {"predicted", c.predicted},
                    {"ne", chosen[i].ne}});
    }
    p.summary = {{"file_bytes", p.file_bytes}, {"budget", budget}, {"budget_from", why}, {"predicted_loss", a.loss}, {"tensors", ts}};
    return p;
  };
  for (int iter = 0; iter < 16; ++iter) {
    Allocation a;
    try {
      a = allocate(items, weights_budget);
    } catch (const Error&) {
      // The smallest file: every tensor at its smallest type, with the header that recipe makes.
      // The shrinking below assumes the header of a larger plan, so that file may still fit.
      Allocation least;
      for (const auto& it : items) {
        const auto k = std::min_element(it.begin(), it.end(), [](const Option& x, const Option& y) { return x.bytes < y.bytes; }) - it.begin();
        least.choice.push_back(static_cast<int>(k));
        least.bytes += it[k].bytes;
        least.loss += it[k].loss;
      }
      const PlanResult smallest = plan_of(least);
      if (smallest.file_bytes <= budget) return smallest;
      fail(ExitCode::InputData, "plan: budget {} bytes ({}) cannot be met: the smallest reachable file is {} bytes", budget, why,
           smallest.file_bytes);
    }
    const PlanResult p = plan_of(a);
    if (p.file_bytes <= budget) return p;
    // Over by the header (tensor index, metadata, the recipe itself): give the weights what the
    // file leaves them at this header size, and always strictly less than before.
    const uint64_t file_bytes = p.file_bytes;
    const uint64_t overhead = file_bytes - a.bytes;
    const uint64_t left = budget > overhead ? budget - overhead : 0;
    weights_budget = std::min(left, weights_budget - std::min(weights_budget, file_bytes - budget));
  }
  fail(ExitCode::Runtime, "plan: could not fit the header into {} bytes", budget);
}

namespace {

// "blk.3.ffn_down.weight" -> {3, "ffn_down"}; globals -> {-1, "token_embd"}.
std::pair<int, std::string> layer_and_kind(const std::string& name) {
  const auto t = arch::parse_gguf_name(name);
  std::string kind = t ? std::string(t->kind->gguf) : name;
  if (auto dot = kind.rfind(".weight"); dot != std::string::npos) kind = kind.substr(0, dot);
  return {t ? t->layer : -1, kind};
}

const char* type_colour(const std::string& type) {
  static const std::map<std::string, const char*> c = {{"Q2_K", "#d73027"}, {"Q3_K", "#fc8d59"}, {"Q4_K", "#fee08b"},
                                                        {"Q5_K", "#d9ef8b"}, {"Q6_K", "#91cf60"}, {"Q8_0", "#1a9850"},
                                                        {"F16", "#4575b4"},  {"F32", "#313695"}, {"Q4_0", "#fdae61"},
                                                        {"IQ4_XS", "#fee090"}, {"IQ4_NL", "#e6f598"}, {"IQ3_XXS", "#f46d43"},
                                                        {"IQ3_S", "#fdb863"},  {"IQ2_XXS", "#a50026"}, {"IQ2_XS", "#b2182b"},
                                                        {"IQ2_S", "#c51b7d"},  {"IQ1_S", "#67001f"},   {"IQ1_M", "#7f0000"}};
  auto it = c.find(type);
  return it == c.end() ? "#999999" : it->second;
}

}  // namespace

std::string summary_text(const PlanResult& p) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_kind;  // kind -> bytes, params
  std::map<int, std::pair<uint64_t, uint64_t>> by_layer;
  std::map<std::string, uint64_t> by_type;
  for (const auto& t : p.summary["tensors"]) {
    const auto [layer, kind] = layer_and_kind(t["name"].get<std::string>());
    uint64_t params = 1;
    for (int64_t x : t["ne"].get<std::vector<int64_t>>()) params *= uint64_t(x);
    const uint64_t b = t["bytes"].get<uint64_t>();
    by_kind[kind].first += b, by_kind[kind].second += params;
    by_layer[layer].first += b, by_layer[layer].second += params;
    by_type[t["type"].get<std::string>()] += b;
  }
  std::string s = fmt::format("plan: {} bytes for a budget of {} ({}); predicted loss increase {:.4g} nats/token\n", p.file_bytes,
                              p.budget, p.summary["budget_from"].get<std::string>(), p.predicted_loss);
  s += "  by tensor kind:";
  for (const auto& [k, v] : by_kind) s += fmt::format(" {} {:.2f} bpw;", k, 8.0 * v.first / double(v.second));
  s += "\n  by layer:";
  for (const auto& [l, v] : by_layer) s += fmt::format(" {} {:.2f};", l < 0 ? std::string("globals") : std::to_string(l), 8.0 * v.first / double(v.second));
  s += "\n  bytes by type:";
  for (const auto& [t, b] : by_type) s += fmt::format(" {} {};", t, b);
  return s + "\n";
}

std::string summary_svg(const PlanResult& p) {
  std::map<int, std::map<std::string, std::string>> grid;  // layer -> kind -> type
  std::vector<std::string> kinds;
  for (const auto& t : p.summary["tensors"]) {
    const auto [layer, kind] = layer_and_kind(t["name"].get<std::string>());
    grid[layer][kind] = t["type"].get<std::string>();
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  }
  const int cw = 86, ch = 22, left = 70, top = 40;
  const int w = left + cw * int(kinds.size()) + 20, h = top + ch * int(grid.size()) + 60;
  std::string s = fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"monospace\" font-size=\"11\">\n", w, h);
  s += fmt::format("<text x=\"4\" y=\"16\" font-size=\"13\">{} bytes (budget {}), predicted dL {:.4g}</text>\n", p.file_bytes, p.budget, p.predicted_loss);
  for (size_t k = 0; k < kinds.size(); ++k)
    s += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", left + cw * int(k) + 2, top - 6, kinds[k]);
  int row = 0;
  for (const auto& [layer, cells] : grid) {
    const int y = top + ch * row++;
    s += fmt::format("<text x=\"4\" y=\"{}\">{}</text>\n", y + 15, layer < 0 ? std::string("globals") : arch::gguf_block_name(layer));
    for (size_t k = 0; k < kinds.size(); ++k) {
      auto it = cells.find(kinds[k]);
      if (it == cells.end()) continue;
      const int x = left + cw * int(k);
      s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#fff\"/><text x=\"{}\" y=\"{}\">{}</text>\n", x, y,
                       cw, ch, type_colour(it->second), x + 4, y + 15, it->second);
    }
  }
  return s + "</svg>\n";
}

}  // namespace squish::plan
