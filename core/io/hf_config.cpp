#include "core/io/hf_config.hpp"

#include "core/runtime/error.hpp"

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
  c.model_type = j.value("model_type", "");
  if (c.model_type == "llama") c.arch = "llama";
  else if (c.model_type == "qwen2") c.arch = "qwen2";
  else fail(ExitCode::InputData, "{}: unsupported model_type '{}' (supported: llama, qwen2)", origin, c.model_type);

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

  // rope_theta at top level (older configs) or inside rope_parameters (newer transformers).
  if (j.contains("rope_theta") && j["rope_theta"].is_number()) c.rope_theta = j["rope_theta"].get<float>();
  else if (j.contains("rope_parameters") && j["rope_parameters"].is_object() && j["rope_parameters"].contains("rope_theta"))
    c.rope_theta = j["rope_parameters"]["rope_theta"].get<float>();
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    auto type = j["rope_scaling"].value("rope_type", j["rope_scaling"].value("type", "default"));
    if (type != "default") fail(ExitCode::InputData, "{}: rope scaling '{}' is not supported", origin, type);
  }
  if (j.contains("rms_norm_eps") && j["rms_norm_eps"].is_number()) c.rms_eps = j["rms_norm_eps"].get<float>();
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.attn_bias = c.arch == "qwen2" ? true : j.value("attention_bias", false);
  if (j.value("hidden_act", "silu") != "silu")
    fail(ExitCode::InputData, "{}: hidden_act '{}' is not supported (silu only)", origin, j.value("hidden_act", ""));
  auto id = [&](const char* key) { return j.contains(key) && j[key].is_number_integer() ? j[key].get<int>() : -1; };
  c.bos_token_id = id("bos_token_id");
  c.eos_token_id = id("eos_token_id");
  return c;
}

}  // namespace squish
