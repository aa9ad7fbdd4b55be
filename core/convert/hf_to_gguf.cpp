#include "core/convert/hf_to_gguf.hpp"

#include "core/arch/architecture.hpp"
#include "core/base/error.hpp"
#include "core/tokenizer/vocab.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace squish::gguf {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Tensor names

std::optional<std::string> hf_to_gguf_name(const std::string& hf) {
  const auto t = arch::parse_hf_name(hf);
  return t ? std::optional(arch::gguf_name(*t->kind, t->layer)) : std::nullopt;
}

std::optional<std::string> gguf_to_hf_name(const std::string& gg) {
  const auto t = arch::parse_gguf_name(gg);
  if (!t || !t->kind->hf) return std::nullopt;
  return arch::hf_name(*t->kind, t->layer);
}

std::vector<int64_t> gguf_ne_from_hf_shape(const std::vector<int64_t>& shape) {
  return std::vector<int64_t>(shape.rbegin(), shape.rend());
}

int gguf_layer_of(const std::string& name) {
  const auto t = arch::parse_gguf_name(name);
  return t ? t->layer : -1;
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

bool needs_qk_permute(const std::string& gguf_arch, const std::string& name) {
  const arch::Family* f = arch::family_by_gguf_arch(gguf_arch);
  const auto t = arch::parse_gguf_name(name);
  if (!f || !f->permute_qk || !t) return false;
  const arch::Role r = t->kind->role;
  return r == arch::Role::AttnQ || r == arch::Role::AttnK || r == arch::Role::BiasQ || r == arch::Role::BiasK;
}

int qk_permute_heads(const std::string& name, int n_head, int n_head_kv) {
  const auto t = arch::parse_gguf_name(name);
  if (t && (t->kind->rows == arch::Axis::QHeads)) return n_head;
  if (t && (t->kind->rows == arch::Axis::KvHeads)) return n_head_kv;
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
      {"Q6_K", LlamaFileType::MOSTLY_Q6_K},    {"IQ4_NL", LlamaFileType::MOSTLY_IQ4_NL},
      {"IQ4_XS", LlamaFileType::MOSTLY_IQ4_XS}, {"IQ3_XXS", LlamaFileType::MOSTLY_IQ3_XXS},
      {"IQ3_XS", LlamaFileType::MOSTLY_IQ3_XS}, {"IQ3_S", LlamaFileType::MOSTLY_IQ3_S},
      {"IQ3_M", LlamaFileType::MOSTLY_IQ3_M},   {"IQ2_XXS", LlamaFileType::MOSTLY_IQ2_XXS},
      {"IQ2_XS", LlamaFileType::MOSTLY_IQ2_XS}, {"IQ2_S", LlamaFileType::MOSTLY_IQ2_S},
      {"IQ2_M", LlamaFileType::MOSTLY_IQ2_M},   {"IQ1_S", LlamaFileType::MOSTLY_IQ1_S},
      {"IQ1_M", LlamaFileType::MOSTLY_IQ1_M},
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

// Model folder (or the folder of a config.json path).
fs::path model_folder(const std::string& model_dir) {
  fs::path p(model_dir);
  if (!fs::is_directory(p)) p = p.parent_path();
  return p;
}

}  // namespace

std::vector<KeyValue> hparams_metadata(const ModelConfig& cfg, const MetadataOptions& opt) {
  const std::string& a = cfg.arch;
  if (!cfg.family) fail(ExitCode::InputData, "architecture '{}' is not supported ({})", a, arch::supported_gguf_archs());
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
  if (cfg.family->rope_dimension_key) kv.emplace_back(a + ".rope.dimension_count", static_cast<uint32_t>(cfg.head_dim));
  kv.emplace_back(a + ".rope.freq_base", cfg.rope_theta);
  kv.emplace_back(a + ".attention.layer_norm_rms_epsilon", cfg.rms_eps);
  // Not read by llama.cpp's llama graph (it attends over the whole context); Squish's engine
  // honours it, so the two agree wherever the context fits the window.
  if (cfg.sliding_window > 0) kv.emplace_back(a + ".attention.sliding_window", static_cast<uint32_t>(cfg.sliding_window));
  return kv;
}

std::vector<KeyValue> tokenizer_metadata(const ModelConfig& cfg, const std::string& model_dir) {
  // The one tokenizer.json -> GGUF conversion: the vocabulary Squish's tokenizer also reads back.
  return Vocab::from_tokenizer_json((model_folder(model_dir) / "tokenizer.json").string(), cfg.vocab_size).gguf_metadata();
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

}  // namespace squish::gguf
