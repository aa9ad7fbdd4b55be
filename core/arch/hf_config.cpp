#include "core/arch/hf_config.hpp"
#include "core/io/text_file.hpp"

#include "core/arch/architecture.hpp"
#include "core/base/error.hpp"

#include <cmath>
#include <cstdio>

#include <filesystem>
#include <fstream>

namespace squish {

ModelConfig ModelConfig::load(const std::string& path) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) {
    p /= "config.json";
    if (!std::filesystem::exists(p, ec)) fail(ExitCode::InputData, "{}: not a Hugging Face model folder (no config.json)", path);
  } else if (std::filesystem::is_regular_file(p, ec) && p.extension() != ".json") {
    // Say what the file is rather than "invalid JSON": a GGUF or a single shard given as the model.
    std::string magic(4, '\0');
    if (std::FILE* f = std::fopen(p.c_str(), "rb")) {
      magic.resize(std::fread(magic.data(), 1, 4, f));
      std::fclose(f);
    }
    fail(ExitCode::InputData, "{}: {}; this needs a Hugging Face model folder (config.json and safetensors)", path,
         magic == "GGUF" ? "is a GGUF file" : "is a file, not a model folder");
  }
  return from_json(read_json_file(p.string(), "config.json"), p.string());
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  try {
    if (!j.is_object()) fail(ExitCode::InputData, "{}: config is not a JSON object", origin);
    ModelConfig c;
    c.raw = j;
    c.model_type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
    c.family = arch::family_by_model_type(c.model_type);
    if (!c.family)
      fail(ExitCode::InputData, "{}: unsupported model_type '{}' (supported: {})", origin, c.model_type, arch::supported_model_types());
    c.arch = c.family->gguf_arch;

    // Every size is range-checked here, once, so nothing downstream truncates or overflows.
    // The bounds are far above any released model (Llama 3.1 405B: 126 layers, hidden 16384,
    // FFN 53248, 128 heads, vocabulary 128256) and keep every product within int64.
    auto need_int = [&](const char* key, int64_t max) -> int {
      if (!j.contains(key) || !j[key].is_number_integer()) fail(ExitCode::InputData, "{}: '{}' must be a positive integer", origin, key);
      // nlohmann keeps non-negative integers unsigned and negative ones signed: check both in 1..max.
      const bool in_range = j[key].is_number_unsigned() ? j[key].get<uint64_t>() >= 1 && j[key].get<uint64_t>() <= uint64_t(max)
                                                        : j[key].get<int64_t>() >= 1 && j[key].get<int64_t>() <= max;
      if (!in_range)
        fail(ExitCode::InputData, "{}: '{}' is {}, outside 1..{}", origin, key, json_text(j[key]), max);
      return j[key].get<int>();
    };
    c.n_layer = need_int("num_hidden_layers", 4096);
    c.n_embd = need_int("hidden_size", 1 << 20);
    c.n_ff = need_int("intermediate_size", 1 << 22);
    c.n_head = need_int("num_attention_heads", 8192);
    c.n_head_kv = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null() ? need_int("num_key_value_heads", 8192) : c.n_head;
    c.vocab_size = need_int("vocab_size", 1 << 24);
    c.max_position = j.contains("max_position_embeddings") && !j["max_position_embeddings"].is_null() ? need_int("max_position_embeddings", 1 << 24) : 2048;
    if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = need_int("head_dim", 1 << 16);
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
    if (!(c.rope_theta > 0) || !(c.rope_theta < 1e12f)) fail(ExitCode::InputData, "{}: rope_theta must be in (0, 1e12), got {}", origin, c.rope_theta);
    const nlohmann::json& scaling = j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"] : rope_params;
    const std::string rope_type = scaling.value("rope_type", scaling.value("type", std::string("default")));
    if (rope_type == "llama3") {
      // What llama.cpp's converter turns into rope_freqs.weight.
      const double factor = number(scaling, "factor", 8.0), low = number(scaling, "low_freq_factor", 1.0),
                   high = number(scaling, "high_freq_factor", 4.0), orig = number(scaling, "original_max_position_embeddings", 8192);
      if (!(factor > 0) || !(factor < 1e6) || !(low > 0) || !(high > low) || !(high < 1e6) || !(orig >= 1) || !(orig <= (1 << 24)))
        fail(ExitCode::InputData,
             "{}: rope_scaling llama3 needs 0 < factor < 1e6, 0 < low_freq_factor < high_freq_factor < 1e6, original_max_position_embeddings in 1..{}",
             origin, 1 << 24);
      c.rope_freq_factors = arch::llama3_rope_factors(c.head_dim, c.rope_theta, float(factor), float(low), float(high), int(orig));
    } else if (rope_type != "default") {
      fail(ExitCode::InputData, "{}: rope scaling '{}' is not supported (default, llama3)", origin, rope_type);
    }
    c.rms_eps = static_cast<float>(number(j, "rms_norm_eps", c.family->default_rms_eps));
    if (!(c.rms_eps > 0) || !(c.rms_eps < 1)) fail(ExitCode::InputData, "{}: rms_norm_eps must be in (0, 1), got {}", origin, c.rms_eps);
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
        if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0 || j["sliding_window"].get<int64_t>() > (1 << 24))
          fail(ExitCode::InputData, "{}: 'sliding_window' must be an integer in 1..{} or null", origin, 1 << 24);
        c.sliding_window = j["sliding_window"].get<int>();
      }
    }
    // Special ids: absent/null/a list = unknown (-1); a single id must be in the vocabulary.
    auto id = [&](const char* key) {
      if (!j.contains(key) || !j[key].is_number()) return -1;
      if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0 || j[key].get<int64_t>() >= c.vocab_size)
        fail(ExitCode::InputData, "{}: '{}' is {}, not a token id below vocab_size {}", origin, key, json_text(j[key]), c.vocab_size);
      return j[key].get<int>();
    };
    c.bos_token_id = id("bos_token_id");
    c.eos_token_id = id("eos_token_id");
    return c;
  } catch (const nlohmann::json::exception& e) {
    fail_json_shape(origin, "malformed config", e);
  }
}

}  // namespace squish
