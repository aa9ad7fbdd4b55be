#include "core/io/hf_config.hpp"

#include "core/arch/architecture.hpp"
#include "core/runtime/error.hpp"

#include <cmath>

#include <filesystem>
#include <fstream>

namespace squish {

ModelConfig ModelConfig::load(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) p /= "config.json";
  std::ifstream in(p);
  if (!in) fail(ExitCode::InputData, "{}: cannot open config.json", p.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::InputData, "{}: invalid JSON ({})", p.string(), e.what());
  }
  return from_json(j, p.string());
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) fail(ExitCode::InputData, "{}: config is not a JSON object", origin);
  ModelConfig c;
  c.raw = j;
  c.model_type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
  c.family = arch::family_by_model_type(c.model_type);
  if (!c.family)
    fail(ExitCode::InputData, "{}: unsupported model_type '{}' (supported: {})", origin, c.model_type, arch::supported_model_types());
  c.arch = c.family->gguf_arch;

  auto need_int = [&](const char* key) -> int {
    if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<long long>() <= 0)
      fail(ExitCode::InputData, "{}: '{}' must be a positive integer", origin, key);
    return j[key].get<int>();
  };
  c.n_layer = need_int("num_hidden_layers");
  c.n_embd = need_int("hidden_size");
  c.n_ff = need_int("intermediate_size");
  c.n_head = need_int("num_attention_heads");
  c.n_head_kv = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null() ? need_int("num_key_value_heads") : c.n_head;
  c.vocab_size = need_int("vocab_size");
  c.max_position = j.value("max_position_embeddings", 2048);
  if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = need_int("head_dim");
  else {
    if (c.n_embd % c.n_head != 0)
      fail(ExitCode::InputData, "{}: hidden_size {} not divisible by num_attention_heads {}", origin, c.n_embd, c.n_head);
    c.head_dim = c.n_embd / c.n_head;
  }
  if (c.n_head % c.n_head_kv != 0)
    fail(ExitCode::InputData, "{}: num_attention_heads {} not a multiple of num_key_value_heads {}", origin, c.n_head, c.n_head_kv);

  // rope_theta at top level (older configs) or inside rope_parameters (newer transformers),
  // which then also holds what older configs call rope_scaling.
  auto number = [&](const nlohmann::json& o, const char* key, double def) {
    if (!o.contains(key) || o[key].is_null()) return def;
    if (!o[key].is_number()) fail(ExitCode::InputData, "{}: '{}' must be a number", origin, key);
    return o[key].get<double>();
  };
  const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& rope_params = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"] : none;
  c.rope_theta = static_cast<float>(number(j, "rope_theta", number(rope_params, "rope_theta", c.family->default_rope_theta)));
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) fail(ExitCode::InputData, "{}: rope_theta must be positive", origin);
  const nlohmann::json& scaling = j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"] : rope_params;
  const std::string rope_type = scaling.value("rope_type", scaling.value("type", std::string("default")));
  if (rope_type == "llama3") {
    // What llama.cpp's converter turns into rope_freqs.weight.
    const double factor = number(scaling, "factor", 8.0), low = number(scaling, "low_freq_factor", 1.0),
                 high = number(scaling, "high_freq_factor", 4.0), orig = number(scaling, "original_max_position_embeddings", 8192);
    if (!(factor > 0) || !(low > 0) || !(high > low) || !(orig > 0))
      fail(ExitCode::InputData, "{}: rope_scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0", origin);
    c.rope_freq_factors = arch::llama3_rope_factors(c.head_dim, c.rope_theta, float(factor), float(low), float(high), int(orig));
  } else if (rope_type != "default") {
    fail(ExitCode::InputData, "{}: rope scaling '{}' is not supported (default, llama3)", origin, rope_type);
  }
  c.rms_eps = static_cast<float>(number(j, "rms_norm_eps", c.family->default_rms_eps));
  if (!(c.rms_eps > 0) || !std::isfinite(c.rms_eps)) fail(ExitCode::InputData, "{}: rms_norm_eps must be positive", origin);
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  switch (c.family->qkv_bias) {
    case arch::QkvBias::Never: c.attn_bias = false; break;
    case arch::QkvBias::Always: c.attn_bias = true; break;
    case arch::QkvBias::FromConfig: c.attn_bias = j.value("attention_bias", false); break;
  }
  if (j.value("hidden_act", "silu") != "silu")
    fail(ExitCode::InputData, "{}: hidden_act '{}' is not supported (silu only)", origin, j.value("hidden_act", ""));
  // Sliding-window attention: Mistral's sliding_window (null = none); Qwen2 only uses one when
  // use_sliding_window is set, and then only above max_window_layers, which is not supported.
  if (c.family->sliding_window && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    const bool used = c.model_type != "qwen2" || j.value("use_sliding_window", false);
    if (used && c.model_type == "qwen2")
      fail(ExitCode::InputData, "{}: use_sliding_window (per-layer sliding attention) is not supported", origin);
    if (used) {
      if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0)
        fail(ExitCode::InputData, "{}: 'sliding_window' must be a positive integer or null", origin);
      c.sliding_window = j["sliding_window"].get<int>();
    }
  }
  auto id = [&](const char* key) { return j.contains(key) && j[key].is_number_integer() ? j[key].get<int>() : -1; };
  c.bos_token_id = id("bos_token_id");
  c.eos_token_id = id("eos_token_id");
  return c;
}

}  // namespace squish
