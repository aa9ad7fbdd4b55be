#include "core/arch/architecture.hpp"

#include "core/gguf/gguf.hpp"
#include "core/arch/hf_config.hpp"
#include "core/base/error.hpp"

#include <algorithm>
#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <numbers>

namespace squish::arch {

namespace {

// Mistral is the llama graph with a sliding window; llama.cpp's converter writes it as "llama".
// Defaults are those of transformers' LlamaConfig / MistralConfig / Qwen2Config.
constexpr Family kFamilies[] = {
    {"llama", "llama", RopeLayout::Interleaved, true, QkvBias::FromConfig, true, false, 1e-6f, 10000.f},
    {"mistral", "llama", RopeLayout::Interleaved, true, QkvBias::Never, true, true, 1e-6f, 10000.f},
    {"qwen2", "qwen2", RopeLayout::HalfSplit, false, QkvBias::Always, false, true, 1e-6f, 10000.f},
    // GGUF-only alias (no config.json model_type): llama.cpp's "deci" is the llama graph with
    // per-layer head counts and FFN widths (Nemotron/DeciLM), which is what a pruned model
    // with differing layers is written as (core/recipe: output architecture). Interleaved rope,
    // q/k (and their biases) permuted as for llama, optional q/k/v and output biases.
    {nullptr, "deci", RopeLayout::Interleaved, true, QkvBias::FromConfig, true, false, 1e-6f, 10000.f},
};

using A = Axis;
using R = Role;
using P = Presence;
const std::vector<TensorKind> kKinds = {
    {R::TokenEmbd, "token_embd.weight", "model.embed_tokens.weight", false, A::Vocab, A::Embd, P::Always, R::TokenEmbd},
    {R::OutputNorm, "output_norm.weight", "model.norm.weight", false, A::Embd, A::One, P::Always, R::OutputNorm},
    {R::Output, "output.weight", "lm_head.weight", false, A::Vocab, A::Embd, P::Untied, R::Output},
    {R::RopeFreqs, "rope_freqs.weight", nullptr, false, A::RopePairs, A::One, P::RopeScaled, R::RopeFreqs},
    {R::AttnNorm, "attn_norm.weight", "input_layernorm.weight", true, A::Embd, A::One, P::Always, R::AttnNorm},
    {R::AttnQ, "attn_q.weight", "self_attn.q_proj.weight", true, A::QHeads, A::Embd, P::Always, R::AttnQ},
    {R::BiasQ, "attn_q.bias", "self_attn.q_proj.bias", true, A::QHeads, A::One, P::QkvBias, R::BiasQ},
    {R::AttnK, "attn_k.weight", "self_attn.k_proj.weight", true, A::KvHeads, A::Embd, P::Always, R::AttnQ},
    {R::BiasK, "attn_k.bias", "self_attn.k_proj.bias", true, A::KvHeads, A::One, P::QkvBias, R::BiasK},
    {R::AttnV, "attn_v.weight", "self_attn.v_proj.weight", true, A::KvHeads, A::Embd, P::Always, R::AttnQ},
    {R::BiasV, "attn_v.bias", "self_attn.v_proj.bias", true, A::KvHeads, A::One, P::QkvBias, R::BiasV},
    {R::AttnOut, "attn_output.weight", "self_attn.o_proj.weight", true, A::Embd, A::QHeads, P::Always, R::AttnOut},
    {R::BiasOut, "attn_output.bias", "self_attn.o_proj.bias", true, A::Embd, A::One, P::OutBias, R::BiasOut},
    {R::FfnNorm, "ffn_norm.weight", "post_attention_layernorm.weight", true, A::Embd, A::One, P::Always, R::FfnNorm},
    {R::FfnGate, "ffn_gate.weight", "mlp.gate_proj.weight", true, A::FfnChannels, A::Embd, P::Always, R::FfnGate},
    {R::FfnUp, "ffn_up.weight", "mlp.up_proj.weight", true, A::FfnChannels, A::Embd, P::Always, R::FfnGate},
    {R::FfnDown, "ffn_down.weight", "mlp.down_proj.weight", true, A::Embd, A::FfnChannels, P::Always, R::FfnDown},
    {R::BiasDown, "ffn_down.bias", "mlp.down_proj.bias", true, A::Embd, A::One, P::DownBias, R::BiasDown},
};

// The prefixes of a layer's tensor names, "<prefix><N>.<kind>".
constexpr const char* kGgufLayerPrefix = "blk.";
constexpr const char* kHfLayerPrefix = "model.layers.";

bool is_attention(Role r) {
  return r == R::AttnNorm || r == R::AttnQ || r == R::AttnK || r == R::AttnV || r == R::AttnOut || r == R::BiasQ ||
         r == R::BiasK || r == R::BiasV || r == R::BiasOut;
}

// Splits "<prefix><N>.<rest>"; false unless N is a plain decimal layer index.
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

std::optional<NamedTensor> parse_name(const std::string& name, bool hf) {
  const char* prefix = hf ? kHfLayerPrefix : kGgufLayerPrefix;
  int layer = -1;
  std::string rest;
  const bool in_layer = split_layer(name, prefix, &layer, &rest);
  for (const auto& k : kKinds) {
    const char* n = hf ? k.hf : k.gguf;
    if (!n) continue;
    if (k.per_layer && in_layer && rest == n) return NamedTensor{&k, layer};
    if (!k.per_layer && name == n) return NamedTensor{&k, -1};
  }
  return std::nullopt;
}

}  // namespace

const std::vector<TensorKind>& tensor_kinds() { return kKinds; }

const TensorKind& kind_of(Role role) {
  for (const auto& k : kKinds)
    if (k.role == role) return k;
  fail(ExitCode::Runtime, "no tensor kind for role {}", static_cast<int>(role));
}

const TensorKind& projection_reading(Axis unit) {
  const TensorKind* found = nullptr;
  for (const auto& k : kKinds)
    if (k.per_layer && k.weight_matrix() && k.cols == unit) {
      if (found) fail(ExitCode::Runtime, "more than one weight matrix reads axis {}", static_cast<int>(unit));
      found = &k;
    }
  if (!found) fail(ExitCode::Runtime, "no single weight matrix reads axis {}", static_cast<int>(unit));
  return *found;
}

const Family* family_by_model_type(const std::string& t) {
  for (const auto& f : kFamilies)
    if (f.model_type && t == f.model_type) return &f;  // GGUF-only aliases have none
  return nullptr;
}

const Family* family_by_gguf_arch(const std::string& a) {
  for (const auto& f : kFamilies)  // the first family writing an arch is the one read back
    if (a == f.gguf_arch) return &f;
  return nullptr;
}

std::string supported_model_types() {
  std::string s;
  for (const auto& f : kFamilies)
    if (f.model_type) s += (s.empty() ? "" : ", ") + std::string(f.model_type);
  return s;
}

std::string supported_gguf_archs() {
  std::string s;
  for (const auto& f : kFamilies)
    if (family_by_gguf_arch(f.gguf_arch) == &f) s += (s.empty() ? "" : ", ") + std::string(f.gguf_arch);
  return s;
}

// ---- ModelArch -------------------------------------------------------------------------------

ModelArch ModelArch::from_config(const ModelConfig& c) {
  ModelArch a;
  a.family = c.family;
  a.arch = c.arch;
  a.n_embd = c.n_embd;
  a.head_dim = c.head_dim;
  a.n_vocab = c.vocab_size;
  a.n_ctx_train = c.max_position;
  a.rope_theta = c.rope_theta;
  a.rms_eps = c.rms_eps;
  a.rope_freq_factors = c.rope_freq_factors;
  a.sliding_window = c.sliding_window;
  a.attn_bias = c.attn_bias;
  a.tie_embeddings = c.tie_embeddings;
  a.layers.assign(c.n_layer, LayerDims{c.n_head, c.n_head_kv, c.n_ff});
  return a;
}

ModelArch ModelArch::from_gguf(const gguf::Reader& r) {
  const std::string& path = r.path();
  ModelArch m;
  m.arch = r.get_string("general.architecture", "");
  m.family = family_by_gguf_arch(m.arch);
  if (!m.family)
    fail(ExitCode::InputData, "{}: architecture '{}' is not supported ({})", path, m.arch, supported_gguf_archs());
  const std::string a = m.arch + ".";
  // The same bounds as config.json's (core/arch/hf_config.cpp): far above any released model, and
  // small enough that no size computed from them overflows or allocates without limit.
  const auto bounded = [&](const std::string& key, int64_t def, int64_t lo, int64_t hi) {
    const int64_t v = r.get_int(key, def);
    if (v < lo || v > hi) fail(ExitCode::InputData, "{}: metadata key {} is {}, outside {}..{}", path, key, v, lo, hi);
    return static_cast<int>(v);
  };
  const int n_layer = bounded(a + "block_count", 0, 1, 4096);
  m.n_embd = bounded(a + "embedding_length", 0, 1, 1 << 20);
  m.n_ctx_train = bounded(a + "context_length", 0, 0, 1 << 24);
  m.rope_theta = static_cast<float>(r.get_float(a + "rope.freq_base", m.family->default_rope_theta));
  m.rms_eps = static_cast<float>(r.get_float(a + "attention.layer_norm_rms_epsilon", m.family->default_rms_eps));
  m.sliding_window = bounded(a + "attention.sliding_window", 0, 0, 1 << 24);

  const std::vector<int> heads = gguf::per_layer_values(r, a + "attention.head_count", n_layer, -1);
  const std::vector<int> heads_kv = gguf::per_layer_values(r, a + "attention.head_count_kv", n_layer, -1);
  const std::vector<int> ffs = gguf::per_layer_values(r, a + "feed_forward_length", n_layer, -1);
  int first_heads = 0;
  for (int l = 0; l < n_layer; ++l) {
    if (heads[l] < 0) fail(ExitCode::InputData, "{}: metadata key {}attention.head_count missing", path, a);
    if (ffs[l] < 0) fail(ExitCode::InputData, "{}: metadata key {}feed_forward_length missing", path, a);
    if (heads[l] > 8192 || heads_kv[l] > 8192 || ffs[l] > (1 << 22))
      fail(ExitCode::InputData, "{}: layer {}: {} heads, {} KV heads, FFN {} (limits 8192, 8192, {})", path, l, heads[l], heads_kv[l], ffs[l], 1 << 22);
    // head_count_kv absent: no grouping.
    m.layers.push_back({heads[l], heads_kv[l] < 0 ? heads[l] : heads_kv[l], ffs[l]});
    if (!first_heads) first_heads = heads[l];
  }
  // Head size: key_length when written (always after head pruning), else n_embd / n_head.
  m.head_dim = bounded(a + "attention.key_length", first_heads ? m.n_embd / first_heads : 0, 0, 1 << 16);
  const int64_t vlen = r.get_int(a + "attention.value_length", m.head_dim);
  if (vlen != m.head_dim)
    fail(ExitCode::InputData, "{}: value_length {} differs from key_length {} (unsupported)", path, vlen, m.head_dim);

  // Vocabulary: the token list, else the embedding's rows.
  if (const auto* t = r.get("tokenizer.ggml.tokens"); t && t->is_array()) m.n_vocab = static_cast<int>(t->size());
  else if (const auto* e = r.find(gguf_name(R::TokenEmbd, -1)); e && e->ne.size() == 2) m.n_vocab = static_cast<int>(e->ne[1]);
  else fail(ExitCode::InputData, "{}: no vocabulary (no tokenizer.ggml.tokens, no token_embd.weight)", path);
  m.tie_embeddings = r.find(gguf_name(R::Output, -1)) == nullptr;
  for (int l = 0; l < n_layer; ++l) {
    m.attn_bias |= r.find(gguf_name(R::BiasQ, l)) != nullptr;
    m.out_bias |= r.find(gguf_name(R::BiasOut, l)) != nullptr;
    m.down_bias |= r.find(gguf_name(R::BiasDown, l)) != nullptr;
  }
  if (const auto* f = r.find(gguf_name(R::RopeFreqs, -1))) {
    if (f->type != GGMLType::F32 || f->ne.size() != 1 || f->ne[0] != m.head_dim / 2)
      fail(ExitCode::InputData, "{}: {} must be F32 [{}]", path, f->name, m.head_dim / 2);
    const float* v = reinterpret_cast<const float*>(f->data.data());
    m.rope_freq_factors.assign(v, v + f->ne[0]);
  }
  m.validate(path);
  return m;
}

void ModelArch::validate(const std::string& origin) const {
  if (!family) fail(ExitCode::InputData, "{}: no model family", origin);
  if (n_embd <= 0 || head_dim <= 0 || n_vocab <= 0 || layers.empty())
    fail(ExitCode::InputData, "{}: empty model dimensions", origin);
  if (head_dim % 2 != 0) fail(ExitCode::InputData, "{}: head_dim {} is odd (RoPE needs pairs)", origin, head_dim);
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) fail(ExitCode::InputData, "{}: rope theta {} is not positive", origin, rope_theta);
  if (!(rms_eps > 0) || !std::isfinite(rms_eps)) fail(ExitCode::InputData, "{}: RMS epsilon {} is not positive", origin, rms_eps);
  if (sliding_window < 0) fail(ExitCode::InputData, "{}: negative sliding window {}", origin, sliding_window);
  if (!rope_freq_factors.empty()) {
    if (static_cast<int>(rope_freq_factors.size()) != head_dim / 2)
      fail(ExitCode::InputData, "{}: {} rope frequency factors for head_dim {}", origin, rope_freq_factors.size(), head_dim);
    for (float f : rope_freq_factors)
      if (!(f > 0) || !std::isfinite(f)) fail(ExitCode::InputData, "{}: rope frequency factor {} is not positive", origin, f);
  }
  // Layers may lose their attention (or MLP) to pruning, but a model with no attention at all
  // cannot read its context: a broken file, not a pruned one.
  if (std::none_of(layers.begin(), layers.end(), [](const LayerDims& s) { return s.n_head > 0; }))
    fail(ExitCode::InputData, "{}: no layer has attention heads (head_count is 0 everywhere)", origin);
  for (int l = 0; l < n_layer(); ++l) {
    const auto& s = layers[l];
    if (s.n_head < 0 || s.n_head_kv < 0 || s.n_ff < 0) fail(ExitCode::InputData, "{}: layer {} has negative widths", origin, l);
    if (s.n_head > 0 && (s.n_head_kv <= 0 || s.n_head % s.n_head_kv != 0))
      fail(ExitCode::InputData, "{}: layer {}: {} query heads are not a multiple of {} KV heads", origin, l, s.n_head, s.n_head_kv);
  }
}

int64_t ModelArch::axis_size(Axis x, int l) const {
  switch (x) {
    case A::One: return 1;
    case A::Embd: return n_embd;
    case A::Vocab: return n_vocab;
    case A::RopePairs: return head_dim / 2;
    case A::QHeads: return int64_t{layers.at(l).n_head} * head_dim;
    case A::KvHeads: return int64_t{layers.at(l).n_head_kv} * head_dim;
    case A::FfnChannels: return layers.at(l).n_ff;
  }
  return 0;
}

std::vector<int64_t> ModelArch::hf_shape(const TensorKind& k, int l) const {
  if (!k.weight_matrix()) return {axis_size(k.rows, l)};
  return {axis_size(k.rows, l), axis_size(k.cols, l)};
}

bool ModelArch::has(const TensorKind& k, int l) const {
  if (k.per_layer) {
    const auto& s = layers.at(l);
    if (is_attention(k.role) ? s.n_head == 0 : s.n_ff == 0) return false;  // removed by pruning
  }
  switch (k.presence) {
    case P::Always: return true;
    case P::Untied: return !tie_embeddings;
    case P::QkvBias: return attn_bias;
    case P::RopeScaled: return !rope_freq_factors.empty();
    case P::OutBias: return out_bias;
    case P::DownBias: return down_bias;
  }
  return false;
}

std::vector<float> ModelArch::rope_inv_freq() const {
  std::vector<float> f(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    double v = std::pow(double(rope_theta), -2.0 * i / head_dim);
    if (!rope_freq_factors.empty()) v /= rope_freq_factors[i];
    f[i] = static_cast<float>(v);
  }
  return f;
}

uint64_t ModelArch::kv_cache_bytes(int n_ctx, int elem_bytes) const {
  uint64_t heads = 0;
  for (const auto& l : layers) heads += uint64_t(l.n_head_kv);
  return heads * 2 * uint64_t(kv_cache_positions(n_ctx)) * uint64_t(head_dim) * uint64_t(elem_bytes);
}

int kv_cache_positions(int n_ctx) { return (n_ctx + kKvCacheBlock - 1) / kKvCacheBlock * kKvCacheBlock; }

std::vector<TensorDesc> tensors_of(const ModelArch& a) {
  std::vector<TensorDesc> out;
  auto add = [&](const TensorKind& k, int l) {
    if (a.has(k, l)) out.push_back({&k, l, gguf_name(k, l), hf_name(k, l), a.hf_shape(k, l)});
  };
  for (const auto& k : kKinds)
    if (!k.per_layer) add(k, -1);
  for (int l = 0; l < a.n_layer(); ++l)
    for (const auto& k : kKinds)
      if (k.per_layer) add(k, l);
  return out;
}

// ---- names -----------------------------------------------------------------------------------

std::optional<NamedTensor> parse_hf_name(const std::string& n) { return parse_name(n, true); }
std::optional<NamedTensor> parse_gguf_name(const std::string& n) { return parse_name(n, false); }

std::string gguf_name(const TensorKind& k, int layer) {
  return k.per_layer ? fmt::format("{}{}.{}", kGgufLayerPrefix, layer, k.gguf) : std::string(k.gguf);
}

std::string hf_name(const TensorKind& k, int layer) {
  if (!k.hf) return "";
  return k.per_layer ? fmt::format("{}{}.{}", kHfLayerPrefix, layer, k.hf) : std::string(k.hf);
}

std::string gguf_name(Role role, int layer) { return gguf_name(kind_of(role), layer); }
std::string hf_name(Role role, int layer) { return hf_name(kind_of(role), layer); }

std::string gguf_block_name(int layer) { return fmt::format("{}{}", kGgufLayerPrefix, layer); }

// ---- RoPE scaling ----------------------------------------------------------------------------

std::vector<float> llama3_rope_factors(int head_dim, float theta, float factor, float low, float high, int original_ctx) {
  const double low_wavelen = double(original_ctx) / low, high_wavelen = double(original_ctx) / high;
  std::vector<float> out;
  for (int i = 0; i < head_dim / 2; ++i) {
    const double freq = std::pow(double(theta), -2.0 * i / head_dim);
    const double wavelen = 2 * std::numbers::pi / freq;
    double f;
    if (wavelen < high_wavelen) {
      f = 1.0;
    } else if (wavelen > low_wavelen) {
      f = factor;
    } else {
      const double s = (original_ctx / wavelen - low) / (high - low);
      f = 1.0 / ((1 - s) / factor + s);
    }
    out.push_back(static_cast<float>(f));
  }
  return out;
}

}  // namespace squish::arch
