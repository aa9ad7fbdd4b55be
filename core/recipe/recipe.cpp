#include "core/recipe/recipe.hpp"

#include "core/quant/gptq.hpp"
#include "core/quant/type_registry.hpp"

#include "core/convert/hf_to_gguf.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include <fmt/ranges.h>
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>
#include <set>

namespace squish::recipe {

namespace {

[[noreturn]] void bad(const std::string& origin, const std::string& what) {
  throw Error(ExitCode::InputData, fmt::format("{}: invalid recipe: {}", origin, what));
}

std::vector<int> int_list(const nlohmann::json& j, const std::string& origin, const std::string& what) {
  if (!j.is_array()) bad(origin, what + " must be a list of integers");
  std::vector<int> v;
  for (const auto& x : j) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > (1 << 24)) bad(origin, what + " must hold non-negative integers (indices)");
    v.push_back(x.get<int>());
  }
  // Indices name things kept or removed: one listed twice is a mistake in whatever wrote the
  // recipe (and would be counted twice by what sizes the result), never a request.
  std::vector<int> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  if (auto d = std::adjacent_find(sorted.begin(), sorted.end()); d != sorted.end())
    bad(origin, fmt::format("{}: index {} is listed twice", what, *d));
  return v;
}

int layer_key(const std::string& k, const std::string& origin, const std::string& what) {
  if (k.empty() || k.size() > 6 || !std::all_of(k.begin(), k.end(), ::isdigit)) bad(origin, fmt::format("{} key '{}' is not a layer index", what, k));
  return std::stoi(k);
}

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"F32",    "F16",    "BF16",   "Q8_0",   "Q6_K",   "Q5_K_M", "Q5_K_S",
                                                 "Q4_K_M", "Q4_K_S", "Q4_0",   "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
                                                 "IQ4_XS", "IQ4_NL", "IQ3_M",  "IQ3_S",  "IQ3_XS", "IQ3_XXS", "IQ2_M",
                                                 "IQ2_S",  "IQ2_XS", "IQ2_XXS", "IQ1_M",  "IQ1_S"};
  return names;
}

bool is_quant_method(const std::string& method) { return method == "rtn" || method == "gptq"; }

bool gptq_kind(const arch::TensorKind& kind) { return kind.weight_matrix() && (kind.per_layer || kind.role == arch::Role::Output); }

bool gptq_applies(const arch::TensorKind& kind, GGMLType type) { return gptq_kind(kind) && quant::gptq_supported(type); }

bool is_recovery(const std::string& r) { return r == "none" || r == "bias" || r == "refit"; }

CompressionRecipe CompressionRecipe::from_json(const nlohmann::json& j, const std::string& origin) {
  try {
    if (!j.is_object()) bad(origin, "not a JSON object");
    static const std::set<std::string> allowed = {"format", "name", "preset", "preset_imatrix", "tensors", "attention", "ffn_channels", "drop_layers",
                                                  "block_fit", "device", "memory_budget_bytes", "source", "method", "gptq_damp",
                                                  "recovery", "recovery_damp", "removals"};
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!allowed.count(it.key())) bad(origin, fmt::format("unknown key '{}'", it.key()));
    if (j.contains("format") && j["format"] != "squish.recipe/1")
      bad(origin, fmt::format("format {} is not squish.recipe/1", json_text(j["format"])));
    CompressionRecipe r;
    r.origin = origin;
    r.name = j.value("name", "");
    if (j.contains("preset") && !j["preset"].is_null()) {
      if (!j["preset"].is_string()) bad(origin, "preset must be a string");
      std::string p = j["preset"].get<std::string>();
      std::transform(p.begin(), p.end(), p.begin(), ::toupper);
      const auto& names = preset_names();
      if (std::find(names.begin(), names.end(), p) == names.end())
        bad(origin, fmt::format("unknown preset '{}' (known: {})", p, fmt::join(names, ", ")));
      r.preset = p;
    }
    if (j.contains("preset_imatrix")) {
      if (!j["preset_imatrix"].is_boolean()) bad(origin, "preset_imatrix must be true or false");
      if (!r.preset) bad(origin, "preset_imatrix needs a preset");
      r.preset_imatrix = j["preset_imatrix"].get<bool>();
    }
    if (j.contains("tensors")) {
      if (!j["tensors"].is_array()) bad(origin, "tensors must be a list of {match, type, reason}");
      for (const auto& t : j["tensors"]) {
        if (!t.is_object() || !t.contains("match") || !t.contains("type") || !t["match"].is_string() || !t["type"].is_string())
          bad(origin, "each tensors entry needs string 'match' and 'type'");
        auto type = ggml_type_from_name(t["type"].get<std::string>());
        if (!type)
          bad(origin, fmt::format("unknown tensor type '{}' (a plugin's type needs its plugin loaded: squish-run --plugin NAME)",
                                  t["type"].get<std::string>()));
        r.tensors.push_back({t["match"].get<std::string>(), *type, t.value("reason", "")});
      }
    }
    if (j.contains("attention")) {
      if (!j["attention"].is_object()) bad(origin, "attention must map layer -> {kv_groups, q_heads}");
      for (auto it = j["attention"].begin(); it != j["attention"].end(); ++it) {
        const int layer = layer_key(it.key(), origin, "attention");
        AttentionKeep k;
        const auto& v = it.value();
        if (!v.is_object()) bad(origin, fmt::format("attention.{} must be an object", it.key()));
        for (auto f = v.begin(); f != v.end(); ++f)
          if (f.key() != "kv_groups" && f.key() != "q_heads") bad(origin, fmt::format("attention.{}: unknown key '{}'", it.key(), f.key()));
        // An empty list would remove every head; in memory "empty" means "all", so it is refused here.
        for (const char* key : {"kv_groups", "q_heads"}) {
          if (!v.contains(key)) continue;
          const std::string what = fmt::format("attention.{}.{}", it.key(), key);
          auto list = int_list(v[key], origin, what);
          if (list.empty()) bad(origin, what + " keeps nothing (omit the key to keep all; a layer needs at least one)");
          (std::string_view(key) == "kv_groups" ? k.kv_groups : k.q_heads) = std::move(list);
        }
        r.attention[layer] = k;
      }
    }
    if (j.contains("ffn_channels")) {
      if (!j["ffn_channels"].is_object()) bad(origin, "ffn_channels must map layer -> [channels kept]");
      for (auto it = j["ffn_channels"].begin(); it != j["ffn_channels"].end(); ++it)
        r.ffn_channels[layer_key(it.key(), origin, "ffn_channels")] = int_list(it.value(), origin, "ffn_channels." + it.key());
    }
    if (j.contains("drop_layers")) r.drop_layers = int_list(j["drop_layers"], origin, "drop_layers");
    r.block_fit = j.value("block_fit", "fallback");
    if (r.block_fit != "fallback" && r.block_fit != "error") bad(origin, "block_fit must be \"fallback\" or \"error\"");
    if (j.contains("method")) {
      if (!j["method"].is_string() || !is_quant_method(j["method"].get<std::string>())) bad(origin, "method must be \"rtn\" or \"gptq\"");
      r.method = j["method"].get<std::string>();
    }
    // Dampening fractions: finite numbers >= 0.
    const auto damping = [&](const char* key, double& out) {
      if (!j.contains(key)) return;
      if (!j[key].is_number() || !(j[key].get<double>() >= 0) || !(j[key].get<double>() < 1e6)) bad(origin, fmt::format("{} must be a number >= 0", key));
      out = j[key].get<double>();
    };
    damping("gptq_damp", r.gptq_damp);
    if (j.contains("recovery")) {
      if (!j["recovery"].is_string() || !is_recovery(j["recovery"].get<std::string>()))
        bad(origin, "recovery must be \"none\", \"bias\" or \"refit\"");
      r.recovery = j["recovery"].get<std::string>();
    }
    damping("recovery_damp", r.recovery_damp);
    if (j.contains("removals")) {
      if (!j["removals"].is_array()) bad(origin, "removals must be a list");
      r.removals = j["removals"];
    }
    if (!j.contains("device") || j["device"].is_string()) r.device = j.value("device", "");
    else bad(origin, "device must be a string");
    if (j.contains("memory_budget_bytes")) {
      if (!j["memory_budget_bytes"].is_number_unsigned()) bad(origin, "memory_budget_bytes must be a non-negative integer");
      r.memory_budget_bytes = j["memory_budget_bytes"].get<uint64_t>();
    }
    if (j.contains("source")) r.source = j["source"];
    if (!r.preset && r.tensors.empty()) bad(origin, "needs a 'preset' or 'tensors' rules (or both)");
    return r;
  } catch (const nlohmann::json::exception& e) {
    fail_json_shape(origin, "malformed recipe", e);
  }
}

CompressionRecipe CompressionRecipe::load(const std::string& path) { return from_json(read_json_file(path, "recipe"), path); }

CompressionRecipe CompressionRecipe::from_preset(const std::string& preset, bool imatrix) {
  return from_json({{"name", preset}, {"preset", preset}, {"preset_imatrix", imatrix}}, "preset " + preset);
}

nlohmann::json CompressionRecipe::to_json() const {
  nlohmann::json j{{"format", "squish.recipe/1"}, {"name", name}};
  if (preset) j["preset"] = *preset;
  if (preset && preset_imatrix) j["preset_imatrix"] = true;
  if (!tensors.empty()) {
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : tensors) j["tensors"].push_back({{"match", t.match}, {"type", ggml_type_name(t.type)}, {"reason", t.reason}});
  }
  if (!attention.empty()) {
    j["attention"] = nlohmann::json::object();
    for (const auto& [l, k] : attention) {
      nlohmann::json e = nlohmann::json::object();
      if (!k.kv_groups.empty()) e["kv_groups"] = k.kv_groups;
      if (!k.q_heads.empty()) e["q_heads"] = k.q_heads;
      j["attention"][std::to_string(l)] = e;
    }
  }
  if (!ffn_channels.empty()) {
    j["ffn_channels"] = nlohmann::json::object();
    for (const auto& [l, c] : ffn_channels) j["ffn_channels"][std::to_string(l)] = c;
  }
  if (!drop_layers.empty()) j["drop_layers"] = drop_layers;
  j["block_fit"] = block_fit;
  if (method != "rtn") j["method"] = method, j["gptq_damp"] = gptq_damp;
  if (recovery != "none") j["recovery"] = recovery, j["recovery_damp"] = recovery_damp;
  if (!removals.empty()) j["removals"] = removals;
  if (!device.empty()) j["device"] = device;
  if (memory_budget_bytes) j["memory_budget_bytes"] = memory_budget_bytes;
  if (!source.empty()) j["source"] = source;
  return j;
}

// ---- llama.cpp's type mixtures (llama-quant.cpp: llama_tensor_get_type) ----------------------

namespace {

struct PresetState {
  std::string preset;
  GGMLType base;
  bool has_imatrix = false;
  bool has_output = false;
  int n_layer = 0;       // output layers
  int n_gqa = 1;         // n_head / n_head_kv of layer 0, as llama.cpp's hparams.n_gqa()
  int n_attention_wv = 0, i_attention_wv = 0, i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
};

GGMLType preset_base(const std::string& p) {
  if (p == "F32") return GGMLType::F32;
  if (p == "F16") return GGMLType::F16;
  if (p == "BF16") return GGMLType::BF16;
  if (p == "Q8_0") return GGMLType::Q8_0;
  if (p == "Q4_0") return GGMLType::Q4_0;
  if (p == "Q6_K") return GGMLType::Q6_K;
  if (p == "IQ4_XS") return GGMLType::IQ4_XS;
  if (p == "IQ4_NL") return GGMLType::IQ4_NL;
  if (p == "IQ3_XS" || p == "IQ3_S" || p == "IQ3_M") return GGMLType::IQ3_S;
  if (p == "IQ3_XXS") return GGMLType::IQ3_XXS;
  if (p == "IQ2_M") return GGMLType::IQ2_S;
  if (p == "IQ2_S" || p == "IQ2_XS") return GGMLType::IQ2_XS;  // IQ2_S is a mixture over IQ2_XS, as in llama.cpp
  if (p == "IQ2_XXS") return GGMLType::IQ2_XXS;
  if (p == "IQ1_S") return GGMLType::IQ1_S;
  if (p == "IQ1_M") return GGMLType::IQ1_M;
  if (p.starts_with("Q5_K")) return GGMLType::Q5_K;
  if (p.starts_with("Q4_K")) return GGMLType::Q4_K;
  if (p.starts_with("Q3_K")) return GGMLType::Q3_K;
  return GGMLType::Q2_K;
}

bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// The type llama-quantize picks for a quantizable weight, with the reason. Counters advance in
// llama.cpp's tensor order, exactly as llama-quant.cpp does, so mixtures match one to one.
std::pair<GGMLType, std::string> preset_type(PresetState& s, const std::string& name) {
  const std::string& p = s.preset;
  GGMLType t = s.base;
  std::string why = fmt::format("{} base type", p);
  if (t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16) return {t, why};
  // The 1- and 2-bit mixtures (IQ2_S and IQ2_M lean on IQ3_S where the others take Q2_K).
  const bool iq2 = p.starts_with("IQ2_") || p.starts_with("IQ1_"), iq2_s = p == "IQ2_S" || p == "IQ2_M";
  const GGMLType iq2_more = iq2_s ? GGMLType::IQ3_S : GGMLType::Q2_K;
  if (name == "output.weight" || (!s.has_output && name == "token_embd.weight")) {
    if (iq2 || p == "IQ3_XXS") t = GGMLType::Q5_K, why = fmt::format("{}: output projection gets Q5_K (llama.cpp)", p);
    else if (t != GGMLType::Q8_0) t = GGMLType::Q6_K, why = fmt::format("{}: output projection gets Q6_K (llama.cpp)", p);
  } else if (name == "token_embd.weight") {
    if (iq2) t = iq2_more, why = fmt::format("{}: token embedding gets {}", p, ggml_type_name(t));
    else if (p == "IQ3_XXS") t = GGMLType::IQ3_S, why = "IQ3_XXS: token embedding gets IQ3_S";
  } else if (iq2) {
    if (contains(name, "attn_v.weight")) {
      ++s.i_attention_wv;
      t = s.n_gqa >= 4 ? GGMLType::Q4_K : iq2_more, why = fmt::format("{}: attn_v with n_gqa {} gets {}", p, s.n_gqa, ggml_type_name(t));
    } else if (contains(name, "ffn_down")) {
      if (s.i_ffn_down++ < s.n_layer / 8) t = iq2_more, why = fmt::format("{}: first ffn_down layers get {}", p, ggml_type_name(t));
    } else if (contains(name, "attn_output.weight") && (iq2_s || p.starts_with("IQ1_"))) {
      t = iq2_s ? GGMLType::IQ3_S : GGMLType::IQ2_XXS, why = fmt::format("{}: attn_output gets {}", p, ggml_type_name(t));
    }
  } else if (contains(name, "attn_v.weight")) {
    const int i = s.i_attention_wv++, n = s.n_attention_wv;
    if (p == "Q2_K") t = s.n_gqa >= 4 ? GGMLType::Q4_K : GGMLType::Q3_K, why = fmt::format("Q2_K: attn_v with n_gqa {} gets more bits", s.n_gqa);
    else if (p == "Q3_K_M") t = i < 2 ? GGMLType::Q5_K : GGMLType::Q4_K, why = "Q3_K_M: attn_v gets more bits";
    else if (p == "Q3_K_L") t = GGMLType::Q5_K, why = "Q3_K_L: attn_v gets Q5_K";
    else if ((p == "Q4_K_M" || p == "Q5_K_M") && use_more_bits(i, n)) t = GGMLType::Q6_K, why = fmt::format("{}: attn_v of a sensitive layer gets Q6_K", p);
    else if ((p == "IQ4_NL" || p == "IQ4_XS") && s.n_gqa >= 4) t = GGMLType::Q5_K, why = fmt::format("{}: attn_v with n_gqa {} gets Q5_K", p, s.n_gqa);
    else if ((p == "IQ3_XS" || p == "IQ3_S") && s.n_gqa >= 4) t = GGMLType::Q4_K, why = fmt::format("{}: attn_v with n_gqa {} gets Q4_K", p, s.n_gqa);
    else if (p == "IQ3_M") t = GGMLType::Q4_K, why = "IQ3_M: attn_v gets Q4_K";
    else if (p == "IQ3_XXS")
      t = s.n_gqa >= 4 ? GGMLType::Q4_K : s.has_imatrix ? GGMLType::IQ3_XXS : GGMLType::IQ3_S,
      why = fmt::format("IQ3_XXS: attn_v with n_gqa {}{} gets {}", s.n_gqa, s.has_imatrix ? "" : " and no imatrix", ggml_type_name(t));
    else if (p == "Q4_K_S" && i < 4) t = GGMLType::Q5_K, why = "Q4_K_S: first attn_v layers get Q5_K";
  } else if (contains(name, "ffn_down")) {
    const int i = s.i_ffn_down++, n = s.n_layer;
    if (p == "Q2_K") t = GGMLType::Q3_K, why = "Q2_K: ffn_down gets Q3_K";
    else if (p == "Q3_K_M") t = i < n / 16 ? GGMLType::Q5_K : GGMLType::Q4_K, why = "Q3_K_M: ffn_down gets more bits";
    else if (p == "IQ3_M" && i < n / 8) t = GGMLType::Q4_K, why = "IQ3_M: first ffn_down layers get Q4_K";
    else if (p == "IQ3_XXS" && !s.has_imatrix)
      t = i < n / 8 ? GGMLType::Q4_K : GGMLType::Q3_K, why = "IQ3_XXS without an importance matrix: ffn_down gets K-quants";
    else if (p == "Q3_K_L") t = GGMLType::Q5_K, why = "Q3_K_L: ffn_down gets Q5_K";
    else if (p == "Q4_K_M" && use_more_bits(i, n)) t = GGMLType::Q6_K, why = "Q4_K_M: ffn_down of a sensitive layer gets Q6_K";
    else if ((p == "IQ4_NL" || p == "IQ4_XS") && i < n / 8 && !s.has_imatrix)
      t = GGMLType::Q5_K, why = fmt::format("{} without an importance matrix: first ffn_down layers get Q5_K", p);
    else if (p == "Q5_K_M" && use_more_bits(i, n)) t = GGMLType::Q6_K, why = "Q5_K_M: ffn_down of a sensitive layer gets Q6_K";
    else if (p == "Q4_K_S" && i < n / 8) t = GGMLType::Q5_K, why = "Q4_K_S: first ffn_down layers get Q5_K";
  } else if (contains(name, "attn_output.weight")) {
    if (p == "Q2_K") t = GGMLType::Q3_K, why = "Q2_K: attn_output gets Q3_K";
    else if (p == "Q3_K_M") t = GGMLType::Q4_K, why = "Q3_K_M: attn_output gets Q4_K";
    else if (p == "Q3_K_L") t = GGMLType::Q5_K, why = "Q3_K_L: attn_output gets Q5_K";
    else if (p == "IQ3_M") t = GGMLType::Q4_K, why = "IQ3_M: attn_output gets Q4_K";
    else if (p == "IQ3_XXS") t = GGMLType::IQ3_S, why = "IQ3_XXS: attn_output gets IQ3_S";
  } else if (contains(name, "attn_q.weight") || contains(name, "attn_k.weight")) {
    if (p == "IQ3_XS") t = GGMLType::IQ3_XXS, why = "IQ3_XS: attn_q and attn_k get IQ3_XXS";
    else if (p == "IQ3_XXS") t = GGMLType::IQ2_S, why = "IQ3_XXS: attn_q and attn_k get IQ2_S";
  } else if (contains(name, "ffn_gate") || contains(name, "ffn_up")) {
    const int i = contains(name, "ffn_gate") ? s.i_ffn_gate++ : s.i_ffn_up++, n = s.n_layer;
    if (p == "IQ3_XS" && i >= n / 8 && i < 7 * n / 8) t = GGMLType::IQ3_XXS, why = "IQ3_XS: middle ffn_gate/ffn_up layers get IQ3_XXS";
  }
  return {t, why};
}

// A type whose block fits a row of n elements: llama.cpp's fallback order, limited to the types
// Squish implements (no Q5_0/Q5_1: Q4_K falls back to Q4_0, Q5_K to Q8_0 where llama.cpp takes
// Q5_0 and Q5_1).
GGMLType fallback_type(GGMLType t, int64_t n) {
  GGMLType f;
  switch (t) {
    case GGMLType::Q2_K: case GGMLType::Q3_K: case GGMLType::IQ1_S: case GGMLType::IQ1_M: case GGMLType::IQ2_XXS:
    case GGMLType::IQ2_XS: case GGMLType::IQ2_S:
    case GGMLType::IQ3_XXS: case GGMLType::IQ3_S: case GGMLType::IQ4_XS:
      f = GGMLType::IQ4_NL;
      break;
    case GGMLType::Q4_K: f = GGMLType::Q4_0; break;
    case GGMLType::Q5_K: case GGMLType::Q6_K: f = GGMLType::Q8_0; break;
    default: f = GGMLType::F16;
  }
  if (n % ggml_type_traits(f)->block_size != 0) f = GGMLType::F16;
  return f;
}

int rule_specificity(const std::string& pattern) {
  if (pattern.find_first_of("*?[") == std::string::npos) return 1 << 20;  // exact name beats any glob
  return static_cast<int>(std::count_if(pattern.begin(), pattern.end(), [](char c) { return c != '*' && c != '?'; }));
}

std::vector<int> sorted_unique(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

}  // namespace

const PlannedTensor* CompressPlan::find_hf(const std::string& hf_name) const {
  auto it = by_hf_name.find(hf_name);
  return it == by_hf_name.end() ? nullptr : &tensors[it->second];
}

const PlannedTensor* CompressPlan::recovery_bias_of(const std::string& projection) const {
  for (const auto& pt : tensors)
    if (pt.recovers == projection) return &pt;
  return nullptr;
}

nlohmann::json CompressPlan::summary() const {
  nlohmann::json t = nlohmann::json::array();
  std::map<std::string, uint64_t> bytes_by_type;
  for (const auto& pt : tensors) {
    t.push_back({{"name", pt.gguf_name}, {"type", ggml_type_name(pt.type)}, {"ne", pt.ne}, {"bytes", pt.nbytes}, {"reason", pt.reason}});
    bytes_by_type[ggml_type_name(pt.type)] += pt.nbytes;
  }
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : this->layers)
    layers.push_back({{"src_layer", l.src_layer}, {"n_head", l.n_head}, {"n_head_kv", l.n_head_kv}, {"n_ff", l.n_ff}});
  uint64_t weight_bytes = 0;
  for (const auto& pt : tensors) weight_bytes += pt.nbytes;
  return {{"recipe", recipe.to_json()},
          {"file_bytes", file_bytes},
          {"bits_per_weight", output_params ? 8.0 * weight_bytes / output_params : 0.0},
          {"source_params", source_params},
          {"output_params", output_params},
          {"bytes_by_type", bytes_by_type},
          {"layers", layers},
          {"tensors", t}};
}

namespace {

// Output layers: every source layer not dropped, renumbered in order, with the heads and
// channels the recipe keeps (all when it says nothing).
std::vector<PrunedLayer> resolve_layers(const CompressionRecipe& recipe, const ModelConfig& cfg, const std::string& origin) {
  std::set<int> dropped(recipe.drop_layers.begin(), recipe.drop_layers.end());
  for (int l : dropped)
    if (l >= cfg.n_layer) bad(origin, fmt::format("drop_layers: layer {} does not exist (model has {})", l, cfg.n_layer));
  if (static_cast<int>(dropped.size()) >= cfg.n_layer) bad(origin, "drop_layers removes every layer");
  for (const auto& [l, k] : recipe.attention)
    if (l >= cfg.n_layer || dropped.count(l)) bad(origin, fmt::format("attention: layer {} does not exist or is dropped", l));
  for (const auto& [l, c] : recipe.ffn_channels)
    if (l >= cfg.n_layer || dropped.count(l)) bad(origin, fmt::format("ffn_channels: layer {} does not exist or is dropped", l));

  const int group = cfg.n_head / cfg.n_head_kv;  // q heads per kv group
  std::vector<PrunedLayer> layers;
  for (int l = 0; l < cfg.n_layer; ++l) {
    if (dropped.count(l)) continue;
    PrunedLayer ls;
    ls.src_layer = l;
    AttentionKeep keep;
    if (auto it = recipe.attention.find(l); it != recipe.attention.end()) keep = it->second;
    std::vector<int> kv = sorted_unique(keep.kv_groups);
    std::vector<int> q = sorted_unique(keep.q_heads);
    for (int g : kv)
      if (g >= cfg.n_head_kv) bad(origin, fmt::format("attention.{}: kv group {} does not exist (model has {})", l, g, cfg.n_head_kv));
    for (int h : q)
      if (h >= cfg.n_head) bad(origin, fmt::format("attention.{}: q head {} does not exist (model has {})", l, h, cfg.n_head));
    if (kv.empty()) {
      if (q.empty()) kv.resize(cfg.n_head_kv), std::iota(kv.begin(), kv.end(), 0);
      else for (int h : q) kv.push_back(h / group);
      kv = sorted_unique(kv);
    }
    if (q.empty())
      for (int g : kv)
        for (int h = g * group; h < (g + 1) * group; ++h) q.push_back(h);
    // Every kept group keeps the same number of q heads (GGUF's GQA layout needs a fixed ratio).
    std::map<int, int> per_group;
    for (int h : q) {
      if (std::find(kv.begin(), kv.end(), h / group) == kv.end())
        bad(origin, fmt::format("attention.{}: q head {} belongs to kv group {}, which is not kept", l, h, h / group));
      per_group[h / group]++;
    }
    for (int g : kv)
      if (per_group[g] != per_group[kv.front()])
        bad(origin, fmt::format("attention.{}: kept groups keep different numbers of q heads ({} in group {}, {} in group {})", l,
                                per_group[kv.front()], kv.front(), per_group[g], g));
    ls.kv_groups = kv;
    ls.q_heads = q;
    ls.n_head = static_cast<int>(q.size());
    ls.n_head_kv = static_cast<int>(kv.size());
    ls.n_ff = cfg.n_ff;
    if (auto it = recipe.ffn_channels.find(l); it != recipe.ffn_channels.end()) {
      ls.ffn_channels = sorted_unique(it->second);
      if (ls.ffn_channels.empty()) bad(origin, fmt::format("ffn_channels.{} keeps no channel", l));
      if (ls.ffn_channels.back() >= cfg.n_ff)
        bad(origin, fmt::format("ffn_channels.{}: channel {} does not exist (n_ff {})", l, ls.ffn_channels.back(), cfg.n_ff));
      ls.n_ff = static_cast<int>(ls.ffn_channels.size());
    }
    layers.push_back(std::move(ls));
  }
  return layers;
}

// Rows (or columns) an axis keeps in a pruned layer; empty = all.
std::vector<int64_t> kept_indices(arch::Axis axis, const PrunedLayer& ls, const ModelConfig& cfg) {
  auto rows_of = [&](const std::vector<int>& heads) {
    std::vector<int64_t> rows;
    for (int h : heads)
      for (int r = 0; r < cfg.head_dim; ++r) rows.push_back(int64_t{h} * cfg.head_dim + r);
    return rows;
  };
  const bool attn_pruned = ls.n_head != cfg.n_head || ls.n_head_kv != cfg.n_head_kv;
  switch (axis) {
    case arch::Axis::QHeads: return attn_pruned ? rows_of(ls.q_heads) : std::vector<int64_t>{};
    case arch::Axis::KvHeads: return attn_pruned ? rows_of(ls.kv_groups) : std::vector<int64_t>{};
    case arch::Axis::FfnChannels: return {ls.ffn_channels.begin(), ls.ffn_channels.end()};
    default: return {};
  }
}

// Every output tensor: the checkpoint's tensors (named, pruned, permuted as the architecture
// says) plus the ones the converter generates, in llama.cpp's order.
void plan_tensors(CompressPlan& plan, const SafetensorsModel& st) {
  const ModelConfig& cfg = plan.config;
  // The checkpoint must hold every tensor its config.json implies, in the implied shape.
  // Every stored tensor must be one the architecture knows, of a float dtype, in a layer that exists.
  for (const auto& d : arch::tensors_of(arch::ModelArch::from_config(cfg))) {
    if (d.hf_name.empty()) continue;
    const auto* e = st.find(d.hf_name);
    if (!e) fail(ExitCode::InputData, "{}: tensor '{}' is missing (config.json implies it)", plan.model_dir, d.hf_name);
    if (e->shape != d.shape)
      fail(ExitCode::InputData, "{}: tensor '{}' has shape [{}] but config.json implies [{}]", plan.model_dir, d.hf_name,
           fmt::join(e->shape, ", "), fmt::join(d.shape, ", "));
  }
  for (const auto& e : st.entries()) {
    if (e.dtype != DType::F32 && e.dtype != DType::F16 && e.dtype != DType::BF16 && e.name.find("rotary_emb") == std::string::npos)
      fail(ExitCode::InputData, "{}: tensor '{}' has dtype {}; weights must be F32, F16 or BF16", st.files()[e.file].path(), e.name,
           dtype_name(e.dtype));
    const auto named = arch::parse_hf_name(e.name);
    if (named && named->layer >= cfg.n_layer)
      fail(ExitCode::InputData, "{}: tensor '{}' is in layer {} but config.json has num_hidden_layers {}", st.files()[e.file].path(),
           e.name, named->layer, cfg.n_layer);
  }
  std::map<int, int> out_of_src;
  for (size_t i = 0; i < plan.layers.size(); ++i) out_of_src[plan.layers[i].src_layer] = static_cast<int>(i);
  for (const auto& e : st.entries()) {
    plan.source_params += static_cast<uint64_t>(std::accumulate(e.shape.begin(), e.shape.end(), int64_t{1}, std::multiplies<>()));
    const auto named = arch::parse_hf_name(e.name);
    if (!named) {
      if (e.name.find("rotary_emb") != std::string::npos) continue;  // recomputed, never stored
      fail(ExitCode::InputData, "{}: tensor '{}' has no GGUF name for architecture {}", plan.model_dir, e.name, cfg.arch);
    }
    if (named->layer >= 0 && !out_of_src.count(named->layer)) continue;  // a dropped layer
    PlannedTensor pt;
    pt.kind = named->kind;
    pt.hf_name = e.name;
    pt.src_shape = e.shape;
    pt.shape = e.shape;
    pt.layer = named->layer >= 0 ? out_of_src.at(named->layer) : -1;
    pt.gguf_name = arch::gguf_name(*pt.kind, pt.layer);
    if (pt.layer >= 0) {
      const PrunedLayer& ls = plan.layers[pt.layer];
      pt.keep_rows = kept_indices(pt.kind->rows, ls, cfg);
      if (pt.kind->weight_matrix()) pt.keep_cols = kept_indices(pt.kind->cols, ls, cfg);
      if (!pt.keep_rows.empty()) pt.shape[0] = static_cast<int64_t>(pt.keep_rows.size());
      if (!pt.keep_cols.empty()) pt.shape[1] = static_cast<int64_t>(pt.keep_cols.size());
      if (gguf::needs_qk_permute(cfg.arch, pt.gguf_name))
        pt.permute_heads = gguf::qk_permute_heads(pt.gguf_name, ls.n_head, ls.n_head_kv);
    }
    pt.ne = gguf::gguf_ne_from_hf_shape(pt.shape);
    plan.tensors.push_back(std::move(pt));
  }
  // Pruning recovery: a bias for every output projection (zeros where nothing was removed, so
  // every layer has one, as the architecture's presence rule says).
  if (plan.recipe.recovery != "none") {
    const auto has_pruned = [&](arch::Role role) {
      for (const auto& pt : plan.tensors)
        if (pt.kind->role == role && !pt.keep_cols.empty()) return true;
      return false;
    };
    for (arch::Role proj : {arch::Role::AttnOut, arch::Role::FfnDown}) {
      if (!has_pruned(proj)) continue;
      const arch::Role bias = proj == arch::Role::AttnOut ? arch::Role::BiasOut : arch::Role::BiasDown;
      (proj == arch::Role::AttnOut ? plan.output_arch.out_bias : plan.output_arch.down_bias) = true;
      std::vector<PlannedTensor> add;
      for (const auto& w : plan.tensors) {
        if (w.kind->role != proj) continue;
        PlannedTensor pt;
        pt.kind = &arch::kind_of(bias);
        pt.layer = w.layer;
        pt.gguf_name = arch::gguf_name(*pt.kind, w.layer);
        pt.hf_name = arch::hf_name(*pt.kind, plan.layers[w.layer].src_layer);
        if (st.find(pt.hf_name))
          fail(ExitCode::InputData, "{}: tensor '{}' exists: pruning recovery of checkpoints with output biases is not supported",
               plan.model_dir, pt.hf_name);
        pt.shape = pt.src_shape = {w.shape[0]};
        pt.ne = pt.shape;
        pt.recovers = w.hf_name;
        add.push_back(std::move(pt));
      }
      for (auto& pt : add) plan.tensors.push_back(std::move(pt));
    }
  }
  // Generated by the converter: Llama 3's rope frequency factors.
  if (!cfg.rope_freq_factors.empty()) {
    PlannedTensor pt;
    pt.kind = &arch::kind_of(arch::Role::RopeFreqs);
    pt.gguf_name = arch::gguf_name(*pt.kind, -1);
    pt.shape = pt.src_shape = {static_cast<int64_t>(cfg.rope_freq_factors.size())};
    pt.ne = pt.shape;
    pt.generated = cfg.rope_freq_factors;
    plan.tensors.push_back(std::move(pt));
  }
  std::sort(plan.tensors.begin(), plan.tensors.end(),
            [](const auto& a, const auto& b) { return gguf::llama_tensor_order_less(a.gguf_name, b.gguf_name); });
  for (size_t i = 0; i < plan.tensors.size(); ++i)
    if (!plan.tensors[i].hf_name.empty()) plan.by_hf_name[plan.tensors[i].hf_name] = i;
}

// Types: preset mixture, then the recipe's rules (most specific wins), then block fit.
void assign_types(CompressPlan& plan, const std::string& origin) {
  const CompressionRecipe& recipe = plan.recipe;
  PresetState ps;
  if (recipe.preset) {
    ps.preset = *recipe.preset;
    ps.base = preset_base(ps.preset);
    ps.has_imatrix = recipe.preset_imatrix;
    ps.n_layer = static_cast<int>(plan.layers.size());
    ps.n_gqa = plan.layers[0].n_head / std::max(1, plan.layers[0].n_head_kv);
    for (const auto& pt : plan.tensors) {
      ps.has_output |= pt.gguf_name == "output.weight";
      ps.n_attention_wv += contains(pt.gguf_name, "attn_v.weight");
    }
  }
  for (auto& pt : plan.tensors) {
    const bool is_weight = pt.kind->weight_matrix();
    if (!is_weight) {
      pt.type = GGMLType::F32;
      pt.reason = pt.kind->role == arch::Role::RopeFreqs ? "rope frequency factors stay F32 (llama.cpp)"
                                                        : "1-D tensors (norms, biases) stay F32";
    } else {
      bool typed = false;
      if (recipe.preset) {
        std::tie(pt.type, pt.reason) = preset_type(ps, pt.gguf_name);
        typed = true;
      }
      int best = -1;
      for (const auto& rule : recipe.tensors) {
        const bool hit = ::fnmatch(rule.match.c_str(), pt.hf_name.c_str(), 0) == 0 ||
                         ::fnmatch(rule.match.c_str(), pt.gguf_name.c_str(), 0) == 0;
        const int spec = rule_specificity(rule.match);
        if (hit && spec >= best) {
          best = spec;
          pt.type = rule.type;
          pt.reason = rule.reason.empty() ? fmt::format("recipe rule '{}'", rule.match) : rule.reason;
          typed = true;
        }
      }
      if (!typed) bad(origin, fmt::format("no type for tensor '{}' (add a preset or a rule that matches it)", pt.hf_name));
      const int64_t row = pt.ne[0];
      const auto* tr = ggml_type_traits(pt.type);
      const PluginType* plug = plugin_type(pt.type);
      if (row % tr->block_size != 0 || (plug && !plug->supports_row(row))) {
        const std::string why = row % tr->block_size != 0 ? fmt::format("not a multiple of {}'s block size {}", tr->name, tr->block_size)
                                                           : fmt::format("not storable as {} (plugin '{}')", tr->name, plug->plugin);
        if (recipe.block_fit == "error") bad(origin, fmt::format("tensor '{}' rows of {} are {}", pt.hf_name, row, why));
        const GGMLType f = fallback_type(pt.type, row);
        pt.reason += fmt::format("; rows of {} {}: fallback to {}", row, why, ggml_type_name(f));
        pt.type = f;
      }
    }
    int64_t rows = 1;
    for (size_t i = 1; i < pt.ne.size(); ++i) rows *= pt.ne[i];
    pt.nbytes = ggml_row_size(pt.type, pt.ne[0]) * static_cast<size_t>(rows);
    plan.output_params += static_cast<uint64_t>(pt.ne[0] * rows);
  }
}

// llama.cpp's general.file_type: the preset's, else that of the type holding the most bytes.
std::optional<gguf::LlamaFileType> file_type_of(const CompressPlan& plan) {
  if (plan.recipe.preset) return gguf::llama_file_type_from_name(*plan.recipe.preset);
  std::map<GGMLType, uint64_t> by;
  for (const auto& pt : plan.tensors) by[pt.type] += pt.nbytes;
  GGMLType dom = std::max_element(by.begin(), by.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  // A plugin type is named in squish.type.* keys; general.file_type says what the rest is closest to.
  if (plugin_type(dom)) {
    by.erase(dom);
    if (by.empty()) return std::nullopt;
    dom = std::max_element(by.begin(), by.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  }
  static const std::map<GGMLType, std::string> ft = {{GGMLType::F32, "F32"},   {GGMLType::F16, "F16"},   {GGMLType::BF16, "BF16"},
                                                     {GGMLType::Q8_0, "Q8_0"}, {GGMLType::Q4_0, "Q4_0"}, {GGMLType::Q6_K, "Q6_K"},
                                                     {GGMLType::Q5_K, "Q5_K_M"}, {GGMLType::Q4_K, "Q4_K_M"}, {GGMLType::Q3_K, "Q3_K_M"},
                                                     {GGMLType::Q2_K, "Q2_K"}, {GGMLType::IQ4_NL, "IQ4_NL"}, {GGMLType::IQ4_XS, "IQ4_XS"},
                                                     {GGMLType::IQ3_S, "IQ3_S"},   {GGMLType::IQ3_XXS, "IQ3_XXS"},
                                                     {GGMLType::IQ2_S, "IQ2_M"},   {GGMLType::IQ2_XS, "IQ2_XS"},
                                                     {GGMLType::IQ2_XXS, "IQ2_XXS"}, {GGMLType::IQ1_S, "IQ1_S"},
                                                     {GGMLType::IQ1_M, "IQ1_M"}};
  return gguf::llama_file_type_from_name(ft.at(dom));
}

// ---- output architecture -------------------------------------------------------------------
// Which GGUF architecture stock llama.cpp (src/llama-model.cpp, Feb 2025) loads a pruned model
// as. Its "llama" and "qwen2" loaders read one head count, KV head count and FFN width for all
// layers (layer 0's) and need attention and an MLP in every layer; "qwen2" also fixes attn_q
// and attn_output to n_embd x n_embd, requires q/k/v biases and has no attn_output / ffn_down
// bias. "deci" (the llama graph, NORM rope) reads all three per layer and takes optional q/k/v,
// attn_output and ffn_down biases, but fixes attn_q.bias to n_embd, derives the head size only
// when layer 0 has heads, and needs an MLP in every layer.

// Why stock llama.cpp's loader of `gguf_arch` rejects the model; "" when it loads it.
std::string stock_rejects(const std::string& gguf_arch, const arch::ModelArch& m) {
  const int E = m.n_embd, D = m.head_dim;
  const auto& L = m.layers;
  const bool llama = gguf_arch == "llama", qwen2 = gguf_arch == "qwen2", deci = gguf_arch == "deci";
  if (!llama && !qwen2 && !deci) return fmt::format("no stock loader is modelled for '{}'", gguf_arch);
  if (llama || qwen2) {
    for (size_t l = 1; l < L.size(); ++l)
      if (L[l].n_head != L[0].n_head || L[l].n_head_kv != L[0].n_head_kv || L[l].n_ff != L[0].n_ff)
        return fmt::format("{} reads one head count, KV head count and FFN width for all layers, but layer {} has {}/{}/{} "
                           "and layer 0 {}/{}/{}", gguf_arch, l, L[l].n_head, L[l].n_head_kv, L[l].n_ff, L[0].n_head,
                           L[0].n_head_kv, L[0].n_ff);
  }
  for (size_t l = 0; l < L.size(); ++l) {
    if (L[l].n_ff == 0) return fmt::format("layer {} has no MLP and {} needs ffn tensors in every layer", l, gguf_arch);
    if (L[l].n_head == 0 && !deci) return fmt::format("layer {} has no attention and {} needs attention in every layer", l, gguf_arch);
  }
  if (L.empty() || L[0].n_head == 0)
    return fmt::format("layer 0 has no attention heads, and {} derives the head size from layer 0's head count", gguf_arch);
  for (size_t l = 0; l < L.size(); ++l) {
    const int64_t q = int64_t{L[l].n_head} * D;
    if (qwen2 && q != E)
      return fmt::format("layer {} has {} q heads x {} = {} attn_q rows, and qwen2 fixes attn_q and attn_output to n_embd {}", l,
                         L[l].n_head, D, q, E);
    if (m.attn_bias && L[l].n_head > 0 && q != E)
      return fmt::format("layer {} has an attn_q.bias of {} values, and {} fixes it to n_embd {}", l, q, gguf_arch, E);
  }
  if (qwen2 && !m.attn_bias) return "qwen2 requires attn_q/attn_k/attn_v biases";
  if (qwen2 && m.out_bias) return "qwen2 has no attn_output.bias (pruning recovery)";
  if (qwen2 && m.down_bias) return "qwen2 has no ffn_down.bias (pruning recovery)";
  return "";
}

struct OutputChoice {
  const arch::Family* family = nullptr;  // what the file is written as
  std::string compat;                    // squish.compat; "" = not written (unpruned output)
};

// The family's own architecture when stock llama.cpp loads the file as it (today's files,
// byte for byte), else "deci" when that loads it, else the family's with the reason recorded:
// Squish's engine runs every one of them.
OutputChoice choose_output_arch(const CompressPlan& plan) {
  const arch::ModelArch& m = plan.output_arch;
  const arch::Family* own = plan.config.family;
  const std::string own_arch = own->gguf_arch;
  bool modified = m.out_bias || m.down_bias || m.n_layer() != plan.config.n_layer;
  for (const auto& l : m.layers)
    modified |= l.n_head != plan.config.n_head || l.n_head_kv != plan.config.n_head_kv || l.n_ff != plan.config.n_ff;
  OutputChoice c;
  const std::string why_own = stock_rejects(own_arch, m);
  if (why_own.empty()) {
    c.family = own;
    if (modified) c.compat = fmt::format("stock llama.cpp loads this file as {}: every layer has the same head counts and FFN width{}",
                                         own_arch, m.out_bias || m.down_bias ? ", and its loader takes the recovery biases" : "");
    return c;
  }
  const std::string why_deci = stock_rejects("deci", m);
  if (why_deci.empty()) {
    c.family = arch::family_by_gguf_arch("deci");
    c.compat = fmt::format("stock llama.cpp loads this file as deci (the llama graph with per-layer head counts and FFN "
                           "widths{}); not as {}: {}",
                           own->permute_qk ? "" : "; q/k rows and biases permuted to its interleaved rope", own_arch, why_own);
    return c;
  }
  c.family = own;
  c.compat = fmt::format("stock llama.cpp cannot load this file: as {}, {}; as deci (the llama graph with per-layer head "
                         "counts), {}", own_arch, why_own, why_deci);
  return c;
}

// Applies the choice: the output architecture and the q/k rope permutation it implies
// (interleaved architectures get HF's rotate-half rows permuted, per layer over its heads).
void apply_output_arch(CompressPlan& plan, const OutputChoice& c) {
  plan.output_arch.family = c.family;
  plan.output_arch.arch = c.family->gguf_arch;
  for (auto& pt : plan.tensors) {
    if (pt.layer < 0) continue;
    const PrunedLayer& ls = plan.layers[pt.layer];
    pt.permute_heads = gguf::needs_qk_permute(plan.output_arch.arch, pt.gguf_name)
                           ? gguf::qk_permute_heads(pt.gguf_name, ls.n_head, ls.n_head_kv)
                           : 0;
  }
}

// Metadata: llama.cpp's keys for the output architecture (per-layer head counts as arrays when
// they differ), then Squish's; and the file size the writer's layout rule gives (header, then
// each tensor aligned).
void plan_metadata_and_size(CompressPlan& plan, const std::string& compat) {
  const ModelConfig& cfg = plan.config;
  gguf::MetadataOptions opt;
  opt.file_type = file_type_of(plan);
  ModelConfig out_cfg = cfg;
  out_cfg.n_layer = static_cast<int>(plan.layers.size());
  out_cfg.family = plan.output_arch.family;  // general.architecture and every "<arch>." key
  out_cfg.arch = plan.output_arch.arch;
  bool uniform = true;
  for (const auto& l : plan.layers) {
    opt.head_count.push_back(l.n_head);
    opt.head_count_kv.push_back(l.n_head_kv);
    opt.feed_forward_length.push_back(l.n_ff);
    uniform &= l.n_head == cfg.n_head && l.n_head_kv == cfg.n_head_kv && l.n_ff == cfg.n_ff;
  }
  if (uniform) opt.head_count.clear(), opt.head_count_kv.clear(), opt.feed_forward_length.clear();
  plan.metadata = gguf::build_metadata(out_cfg, plan.model_dir, opt);
  plan.metadata.emplace_back("squish.version", gguf::Value(std::string(SQUISH_VERSION)));
  plan.metadata.emplace_back("squish.recipe", gguf::Value(json_text(plan.recipe.to_json())));
  if (!compat.empty()) plan.metadata.emplace_back("squish.compat", gguf::Value(compat));
  // Plugin types: which plugin reads them, so a reader without it can say what to load.
  std::set<uint32_t> plugin_ids;
  for (const auto& pt : plan.tensors)
    if (plugin_type(pt.type)) plugin_ids.insert(static_cast<uint32_t>(pt.type));
  for (uint32_t id : plugin_ids) {
    const PluginType* p = plugin_type(id);
    plan.metadata.emplace_back(fmt::format("squish.type.{}.name", id), gguf::Value(p->name));
    plan.metadata.emplace_back(fmt::format("squish.type.{}.plugin", id), gguf::Value(p->plugin));
    plan.metadata.emplace_back(fmt::format("squish.type.{}.plugin_version", id), gguf::Value(p->plugin_version));
  }

  std::vector<gguf::TensorInfo> infos;
  uint64_t off = 0;
  for (const auto& pt : plan.tensors) {
    gguf::TensorInfo ti;
    ti.name = pt.gguf_name;
    ti.ne = pt.ne;
    ti.type = pt.type;
    ti.offset = off;
    ti.nbytes = pt.nbytes;
    infos.push_back(ti);
    off += (pt.nbytes + gguf::kDefaultAlignment - 1) / gguf::kDefaultAlignment * gguf::kDefaultAlignment;
  }
  plan.file_bytes = gguf::serialize_header(plan.metadata, infos, gguf::kDefaultAlignment).size() + off;
}

}  // namespace

CompressPlan resolve(const CompressionRecipe& recipe, const std::string& model_dir, bool enforce_budget) {
  CompressPlan plan;
  plan.recipe = recipe;
  plan.model_dir = model_dir;
  plan.config = ModelConfig::load(model_dir);
  const std::string origin = recipe.origin.empty() ? "recipe" : recipe.origin;
  const auto st = SafetensorsModel::open(model_dir);

  plan.layers = resolve_layers(recipe, plan.config, origin);
  plan.output_arch = arch::ModelArch::from_config(plan.config);
  plan.output_arch.layers.clear();
  for (const auto& l : plan.layers) plan.output_arch.layers.push_back({l.n_head, l.n_head_kv, l.n_ff});
  plan_tensors(plan, st);
  // The GGUF architecture stock llama.cpp loads it as (needs the recovery biases plan_tensors adds).
  const OutputChoice out = choose_output_arch(plan);
  apply_output_arch(plan, out);
  assign_types(plan, origin);
  plan_metadata_and_size(plan, out.compat);
  if (enforce_budget && recipe.memory_budget_bytes && plan.file_bytes > recipe.memory_budget_bytes)
    bad(origin, fmt::format("planned output of {} bytes exceeds the memory budget of {} bytes{}", plan.file_bytes,
                            recipe.memory_budget_bytes, recipe.device.empty() ? "" : " (" + recipe.device + ")"));
  return plan;
}

}  // namespace squish::recipe
