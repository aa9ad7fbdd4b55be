#include "core/gguf/hf_to_gguf.hpp"

#include "core/runtime/error.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

namespace squish::gguf {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Tensor names

namespace {

// Non-layer tensors.
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

// Per-layer suffixes (after "model.layers.N." / "blk.N.").
constexpr std::pair<const char*, const char*> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

// Splits "<prefix><N>.<rest>" into N and rest; false if the name does not have that form.
bool split_layer(const std::string& name, const std::string& prefix, int* layer, std::string* rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t p = prefix.size(), q = p;
  while (q < name.size() && std::isdigit(static_cast<unsigned char>(name[q]))) ++q;
  if (q == p || q - p > 6 || q >= name.size() || name[q] != '.') return false;
  if (name[p] == '0' && q - p > 1) return false;  // "07" is not a layer index
  *layer = std::stoi(name.substr(p, q - p));
  *rest = name.substr(q + 1);
  return true;
}

}  // namespace

std::optional<std::string> hf_to_gguf_name(const std::string& hf) {
  for (const auto& [h, g] : kGlobalNames)
    if (hf == h) return std::string(g);
  int layer;
  std::string rest;
  if (!split_layer(hf, "model.layers.", &layer, &rest)) return std::nullopt;
  for (const auto& [h, g] : kLayerNames)
    if (rest == h) return "blk." + std::to_string(layer) + "." + g;
  return std::nullopt;
}

std::optional<std::string> gguf_to_hf_name(const std::string& gg) {
  for (const auto& [h, g] : kGlobalNames)
    if (gg == g) return std::string(h);
  int layer;
  std::string rest;
  if (!split_layer(gg, "blk.", &layer, &rest)) return std::nullopt;
  for (const auto& [h, g] : kLayerNames)
    if (rest == g) return "model.layers." + std::to_string(layer) + "." + h;
  return std::nullopt;
}

std::vector<int64_t> gguf_ne_from_hf_shape(const std::vector<int64_t>& shape) {
  return std::vector<int64_t>(shape.rbegin(), shape.rend());
}

int gguf_layer_of(const std::string& name) {
  int layer;
  std::string rest;
  return split_layer(name, "blk.", &layer, &rest) ? layer : -1;
}

bool llama_tensor_order_less(const std::string& a, const std::string& b) {
  // Same rule as llama_model_loader's weight_name_comparer (sscanf "blk.%d."), so
  // "blk.10" sorts after "blk.9" and globals (layer -1) come first.
  int la = -1, lb = -1;
  std::sscanf(a.c_str(), "blk.%d.", &la);
  std::sscanf(b.c_str(), "blk.%d.", &lb);
  if (la != lb) return la < lb;
  return a < b;
}

// ---------------------------------------------------------------------------------------------
// q/k permutation

static bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

bool needs_qk_permute(const std::string& arch, const std::string& name) {
  if (arch != "llama") return false;
  return ends_with(name, ".attn_q.weight") || ends_with(name, ".attn_k.weight") || ends_with(name, ".attn_q.bias") ||
         ends_with(name, ".attn_k.bias");
}

int qk_permute_heads(const std::string& name, int n_head, int n_head_kv) {
  if (name.find(".attn_q.") != std::string::npos) return n_head;
  if (name.find(".attn_k.") != std::string::npos) return n_head_kv;
  fail(ExitCode::Runtime, "tensor '{}' is not a q or k projection", name);
}

std::vector<int64_t> qk_permutation(int64_t n_rows, int n_heads) {
  if (n_heads <= 0 || n_rows % n_heads != 0 || (n_rows / n_heads) % 2 != 0)
    fail(ExitCode::InputData, "cannot permute {} q/k rows into {} heads of even size", n_rows, n_heads);
  const int64_t d = n_rows / n_heads, half = d / 2;
  std::vector<int64_t> map(static_cast<size_t>(n_rows));
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int64_t i = 0; i < 2; ++i) map[h * d + 2 * j + i] = h * d + i * half + j;
  return map;
}

void permute_qk_rows(const float* in, float* out, int64_t n_rows, int64_t row_len, int n_heads) {
  const auto map = qk_permutation(n_rows, n_heads);
  for (int64_t r = 0; r < n_rows; ++r)
    std::memcpy(out + r * row_len, in + map[r] * row_len, static_cast<size_t>(row_len) * sizeof(float));
}

void unpermute_qk_rows(const float* in, float* out, int64_t n_rows, int64_t row_len, int n_heads) {
  const auto map = qk_permutation(n_rows, n_heads);
  for (int64_t r = 0; r < n_rows; ++r)
    std::memcpy(out + map[r] * row_len, in + r * row_len, static_cast<size_t>(row_len) * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Metadata

std::optional<LlamaFileType> llama_file_type_from_name(const std::string& name) {
  static const std::pair<const char*, LlamaFileType> kNames[] = {
      {"F32", LlamaFileType::ALL_F32},         {"F16", LlamaFileType::MOSTLY_F16},
      {"BF16", LlamaFileType::MOSTLY_BF16},    {"Q4_0", LlamaFileType::MOSTLY_Q4_0},
      {"Q4_1", LlamaFileType::MOSTLY_Q4_1},    {"Q5_0", LlamaFileType::MOSTLY_Q5_0},
      {"Q5_1", LlamaFileType::MOSTLY_Q5_1},    {"Q8_0", LlamaFileType::MOSTLY_Q8_0},
      {"Q2_K", LlamaFileType::MOSTLY_Q2_K},    {"Q3_K_S", LlamaFileType::MOSTLY_Q3_K_S},
      {"Q3_K_M", LlamaFileType::MOSTLY_Q3_K_M}, {"Q3_K_L", LlamaFileType::MOSTLY_Q3_K_L},
      {"Q4_K_S", LlamaFileType::MOSTLY_Q4_K_S}, {"Q4_K_M", LlamaFileType::MOSTLY_Q4_K_M},
      {"Q5_K_S", LlamaFileType::MOSTLY_Q5_K_S}, {"Q5_K_M", LlamaFileType::MOSTLY_Q5_K_M},
      {"Q6_K", LlamaFileType::MOSTLY_Q6_K},
  };
  std::string up = name;
  for (auto& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& [n, t] : kNames)
    if (up == n) return t;
  return std::nullopt;
}

namespace {

// One UINT32 when all layers agree, else an INT32 array (the only array type llama.cpp reads).
Value per_layer_value(const std::vector<int>& v, int uniform, int n_layer, const char* what) {
  if (v.empty()) return static_cast<uint32_t>(uniform);
  if (static_cast<int>(v.size()) != n_layer)
    fail(ExitCode::Runtime, "{}: {} per-layer values for {} layers", what, v.size(), n_layer);
  for (int x : v)
    if (x < 0) fail(ExitCode::Runtime, "{}: negative per-layer value {}", what, x);
  if (std::all_of(v.begin(), v.end(), [&](int x) { return x == v[0]; })) return static_cast<uint32_t>(v[0]);
  return Value::int32s(std::vector<int32_t>(v.begin(), v.end()));
}

nlohmann::json read_json(const fs::path& p, bool required) {
  std::ifstream in(p);
  if (!in) {
    if (required) fail(ExitCode::InputData, "{}: cannot open", p.string());
    return nullptr;
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::InputData, "{}: invalid JSON ({})", p.string(), e.what());
  }
}

// Model folder (or the folder of a config.json path).
fs::path model_folder(const std::string& model_dir) {
  fs::path p(model_dir);
  if (!fs::is_directory(p)) p = p.parent_path();
  return p;
}

// Pre-tokenizer regexes llama.cpp implements, keyed by what convert_hf_to_gguf names them.
constexpr std::pair<const char*, const char*> kPreRegexes[] = {
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
};

std::string detect_pre(const nlohmann::json& pre, const std::string& origin) {
  // Split(regex) + ByteLevel(use_regex=false): the regex names the pre-tokenizer.
  std::vector<nlohmann::json> steps;
  if (pre.is_object() && pre.value("type", "") == "Sequence") {
    for (const auto& s : pre.value("pretokenizers", nlohmann::json::array())) steps.push_back(s);
  } else if (pre.is_object()) {
    steps.push_back(pre);
  }
  for (const auto& s : steps) {
    if (s.value("type", "") != "Split" || !s.contains("pattern") || !s["pattern"].contains("Regex")) continue;
    std::string rx = s["pattern"]["Regex"].get<std::string>();
    for (const auto& [name, known] : kPreRegexes)
      if (rx == known) return name;
    fail(ExitCode::InputData, "{}: pre-tokenizer regex is not one llama.cpp implements (known: qwen2, llama-bpe)", origin);
  }
  if (steps.size() == 1 && steps[0].value("type", "") == "ByteLevel" && steps[0].value("use_regex", true)) return "gpt-2";
  fail(ExitCode::InputData, "{}: unsupported pre-tokenizer for a byte-level BPE vocabulary", origin);
}

// llama.cpp token types (llama_token_type / gguf TokenType).
enum TokenType : int32_t { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };

// convert_hf_to_gguf's does_token_look_special: some models forget to flag control tokens.
bool looks_special(const std::string& t) {
  auto starts = [&](const char* p) { return t.rfind(p, 0) == 0; };
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts("<|") && ends_with(t, "|>")) return true;
  if (starts("<\xEF\xBD\x9C") && ends_with(t, "\xEF\xBD\x9C>")) return true;  // <｜...｜> (deepseek)
  if (starts("<unused") && ends_with(t, ">")) return true;
  return false;
}

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// The special-token string of `typ` in tokenizer_config.json ("bos_token": "<s>" or {"content": ...}).
std::optional<std::string> config_token(const nlohmann::json& tc, const std::string& typ) {
  if (!tc.is_object() || !tc.contains(typ + "_token")) return std::nullopt;
  const auto& e = tc[typ + "_token"];
  if (e.is_string()) return e.get<std::string>();
  if (e.is_object() && e.contains("content") && e["content"].is_string()) return e["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

std::vector<KeyValue> hparams_metadata(const ModelConfig& cfg, const MetadataOptions& opt) {
  const std::string& a = cfg.arch;
  if (a != "llama" && a != "qwen2") fail(ExitCode::InputData, "architecture '{}' is not supported (llama, qwen2)", a);
  std::vector<KeyValue> kv;
  kv.emplace_back("general.architecture", a);
  kv.emplace_back("general.name", opt.name);
  kv.emplace_back(a + ".context_length", static_cast<uint32_t>(cfg.max_position));
  kv.emplace_back(a + ".embedding_length", static_cast<uint32_t>(cfg.n_embd));
  kv.emplace_back(a + ".block_count", static_cast<uint32_t>(cfg.n_layer));
  kv.emplace_back(a + ".feed_forward_length", per_layer_value(opt.feed_forward_length, cfg.n_ff, cfg.n_layer, "feed_forward_length"));
  kv.emplace_back(a + ".attention.head_count", per_layer_value(opt.head_count, cfg.n_head, cfg.n_layer, "head_count"));
  kv.emplace_back(a + ".attention.head_count_kv",
                  per_layer_value(opt.head_count_kv, cfg.n_head_kv, cfg.n_layer, "head_count_kv"));
  // Always explicit: after head pruning n_embd / n_head no longer gives the head size.
  kv.emplace_back(a + ".attention.key_length", static_cast<uint32_t>(cfg.head_dim));
  kv.emplace_back(a + ".attention.value_length", static_cast<uint32_t>(cfg.head_dim));
  if (a == "llama") kv.emplace_back(a + ".rope.dimension_count", static_cast<uint32_t>(cfg.head_dim));
  kv.emplace_back(a + ".rope.freq_base", cfg.rope_theta);
  kv.emplace_back(a + ".attention.layer_norm_rms_epsilon", cfg.rms_eps);
  return kv;
}

std::vector<KeyValue> tokenizer_metadata(const ModelConfig& cfg, const std::string& model_dir) {
  const fs::path dir = model_folder(model_dir);
  const fs::path tok_path = dir / "tokenizer.json";
  const std::string origin = tok_path.string();
  const auto tok = read_json(tok_path, true);
  const auto tc = read_json(dir / "tokenizer_config.json", false);
  const nlohmann::json& model = tok.contains("model") ? tok["model"] : nlohmann::json();
  if (!model.is_object() || model.value("type", "") != "BPE" || !model.contains("vocab") || !model["vocab"].is_object())
    fail(ExitCode::InputData, "{}: only BPE tokenizers are supported", origin);

  // id -> text, from the vocabulary and the added tokens (which may extend it).
  const int n_vocab = cfg.vocab_size;
  std::vector<std::string> text(n_vocab);
  std::vector<char> present(n_vocab, 0);
  auto place = [&](int id, const std::string& t) {
    if (id < 0 || id >= n_vocab) fail(ExitCode::InputData, "{}: token id {} ('{}') is outside vocab_size {}", origin, id, t, n_vocab);
    text[id] = t;
    present[id] = 1;
  };
  for (const auto& [t, id] : model["vocab"].items()) place(id.get<int>(), t);
  struct Added { bool special, normalized; };
  std::map<int, Added> added;
  for (const auto& a : tok.value("added_tokens", nlohmann::json::array())) {
    int id = a.at("id").get<int>();
    place(id, a.at("content").get<std::string>());
    added[id] = {a.value("special", false), a.value("normalized", false)};
  }

  // SentencePiece-style BPE (byte fallback, "▁" for spaces) -> llama.cpp's "llama" (SPM) vocab;
  // byte-level BPE -> "gpt2".
  const bool spm = model.value("byte_fallback", false);
  std::vector<KeyValue> kv;
  std::vector<std::string> tokens(n_vocab);
  std::vector<int32_t> types(n_vocab);
  std::vector<float> scores;
  const std::string unk = model.contains("unk_token") && model["unk_token"].is_string() ? model["unk_token"].get<std::string>() : "";
  int normal_rank = 0;
  if (spm) scores.resize(n_vocab);
  for (int i = 0; i < n_vocab; ++i) {
    if (!present[i]) {
      tokens[i] = "[PAD" + std::to_string(i) + "]";
      types[i] = UNUSED;
      if (spm) scores[i] = -1000.0f;
      continue;
    }
    tokens[i] = text[i];
    auto a = added.find(i);
    if (spm && text[i] == unk) types[i] = UNKNOWN;
    else if (a != added.end()) types[i] = (a->second.special || looks_special(text[i])) ? CONTROL : USER_DEFINED;
    else if (spm && is_byte_token(text[i])) types[i] = BYTE;
    else types[i] = NORMAL;
    // SentencePiece scores a BPE piece by its negated rank among the normal pieces (earlier
    // merge = higher score); tokenizer.json keeps that rank as the id order.
    if (spm) scores[i] = types[i] == NORMAL ? -static_cast<float>(normal_rank++) : 0.0f;
  }

  if (spm) {
    kv.emplace_back("tokenizer.ggml.model", "llama");
    kv.emplace_back("tokenizer.ggml.tokens", Value::strings(tokens));
    kv.emplace_back("tokenizer.ggml.scores", Value::float32s(scores));
    kv.emplace_back("tokenizer.ggml.token_type", Value::int32s(types));
  } else {
    kv.emplace_back("tokenizer.ggml.model", "gpt2");
    kv.emplace_back("tokenizer.ggml.pre", detect_pre(tok.value("pre_tokenizer", nlohmann::json()), origin));
    kv.emplace_back("tokenizer.ggml.tokens", Value::strings(tokens));
    kv.emplace_back("tokenizer.ggml.token_type", Value::int32s(types));
    // Merges as "left right"; the pair form (tokenizers >= 0.20) may hold spaces, which the
    // string form cannot, so they are shifted to U+0120 like the converter does.
    std::vector<std::string> merges;
    for (const auto& m : model.value("merges", nlohmann::json::array())) {
      if (m.is_string()) {
        merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2) {
        std::string s;
        for (int side = 0; side < 2; ++side) {
          if (side) s += ' ';
          for (char c : m[side].get<std::string>()) s += c == ' ' ? std::string("\xC4\xA0") : std::string(1, c);
        }
        merges.push_back(std::move(s));
      } else {
        fail(ExitCode::InputData, "{}: unknown merges format", origin);
      }
    }
    kv.emplace_back("tokenizer.ggml.merges", Value::strings(merges));
  }

  // Special ids: the tokenizer_config.json string looked up among the added tokens, else
  // config.json's <typ>_token_id (the converter's SpecialVocab rules).
  auto special_id = [&](const std::string& typ) -> std::optional<uint32_t> {
    if (auto s = config_token(tc, typ))
      for (const auto& [id, a] : added)
        if (text[id] == *s) return static_cast<uint32_t>(id);
    const auto& raw = cfg.raw;
    if (raw.contains(typ + "_token_id") && raw[typ + "_token_id"].is_number_integer()) {
      int id = raw[typ + "_token_id"].get<int>();
      if (id >= 0 && id < n_vocab) return static_cast<uint32_t>(id);
    }
    return std::nullopt;
  };
  const std::pair<const char*, const char*> kSpecial[] = {
      {"eos", "tokenizer.ggml.eos_token_id"},       {"bos", "tokenizer.ggml.bos_token_id"},
      {"unk", "tokenizer.ggml.unknown_token_id"},   {"sep", "tokenizer.ggml.seperator_token_id"},
      {"pad", "tokenizer.ggml.padding_token_id"},
  };
  for (const auto& [typ, key] : kSpecial)
    if (auto id = special_id(typ)) kv.emplace_back(key, *id);

  // add_bos/add_eos: tokenizer_config.json when it says so, else the post-processor template
  // (a leading / trailing special token). add_bos is always written (llama.cpp's default differs
  // by vocab type); add_eos only when known.
  std::optional<bool> add_bos, add_eos;
  if (tc.is_object() && tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean()) add_bos = tc["add_bos_token"].get<bool>();
  if (tc.is_object() && tc.contains("add_eos_token") && tc["add_eos_token"].is_boolean()) add_eos = tc["add_eos_token"].get<bool>();
  const auto& post = tok.contains("post_processor") ? tok["post_processor"] : nlohmann::json();
  if (post.is_object() && post.value("type", "") == "TemplateProcessing" && post.contains("single") && post["single"].is_array() &&
      !post["single"].empty()) {
    if (!add_bos) add_bos = post["single"].front().contains("SpecialToken");
    if (!add_eos) add_eos = post["single"].back().contains("SpecialToken");
  }
  kv.emplace_back("tokenizer.ggml.add_bos_token", add_bos.value_or(false));
  if (add_eos) kv.emplace_back("tokenizer.ggml.add_eos_token", *add_eos);
  if (tc.is_object() && tc.contains("chat_template") && tc["chat_template"].is_string())
    kv.emplace_back("tokenizer.chat_template", tc["chat_template"].get<std::string>());
  return kv;
}

std::vector<KeyValue> build_metadata(const ModelConfig& cfg, const std::string& model_dir, const MetadataOptions& opt) {
  MetadataOptions o = opt;
  if (o.name.empty()) o.name = model_folder(model_dir).filename().string();
  auto kv = hparams_metadata(cfg, o);
  auto tk = tokenizer_metadata(cfg, model_dir);
  kv.insert(kv.end(), std::make_move_iterator(tk.begin()), std::make_move_iterator(tk.end()));
  if (o.file_type) {
    kv.emplace_back("general.quantization_version", kQuantizationVersion);
    kv.emplace_back("general.file_type", static_cast<uint32_t>(*o.file_type));
  }
  return kv;
}

std::vector<int> per_layer_values(const Reader& r, const std::string& key, int n_layer, int def) {
  const Value* v = r.get(key);
  if (!v) return std::vector<int>(n_layer, def);
  auto checked = [&](int64_t x) {
    if (x < 0 || x > (int64_t{1} << 30)) fail(ExitCode::InputData, "{}: key '{}': value {} out of range", r.path(), key, x);
    return static_cast<int>(x);
  };
  try {
    if (!v->is_array()) return std::vector<int>(n_layer, checked(v->as_int()));
    if (static_cast<int>(v->size()) != n_layer)
      fail(ExitCode::InputData, "{}: key '{}' has {} entries for {} layers", r.path(), key, v->size(), n_layer);
    std::vector<int> out;
    for (auto x : v->as_ints()) out.push_back(checked(x));
    return out;
  } catch (const Error& e) {
    if (std::string(e.what()).rfind(r.path(), 0) == 0) throw;
    fail(ExitCode::InputData, "{}: key '{}': {}", r.path(), key, e.what());
  }
}

}  // namespace squish::gguf
