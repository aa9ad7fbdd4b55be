#pragma once
// The one description of each supported model family: which tensors a model has, their
// Hugging Face and GGUF names, what their rows and columns index (so shapes, pruning and
// importance statistics follow from the same table), how RoPE is laid out and scaled, which
// biases exist, and the defaults Hugging Face's config classes apply.
//
// Everything that touches a model's structure reads this: the HF -> GGUF converter, the recipe
// resolver and pruner, verify's shape check, the float reference transformer and the inference
// engine. Adding a family is one entry in kFamilies (architecture.cpp) plus its tests.
//
// Per layer (llama graph; every family here is one):
//   x += attn_output( attention( rope(attn_q(n)), rope(attn_k(n)), attn_v(n) ) ),  n = rmsnorm(x)
//   x += ffn_down( silu(ffn_gate(n)) * ffn_up(n) ),                                  n = rmsnorm(x)
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace squish {
struct ModelConfig;
namespace gguf {
class Reader;
}
}  // namespace squish

namespace squish::arch {

// How a head's rotary pairs are laid out in the stored q/k rows.
//  Interleaved: pairs (2i, 2i+1) — llama.cpp's LLAMA_ROPE_TYPE_NORM; the converter permutes
//               Hugging Face's llama q/k rows into it.
//  HalfSplit:   pairs (i, i + d/2) — Hugging Face's rotate-half; llama.cpp's NEOX (qwen2).
enum class RopeLayout { Interleaved, HalfSplit };

// What one dimension of a tensor counts; a pruned model changes QHeads, KvHeads, FfnChannels.
enum class Axis { One, Embd, Vocab, QHeads, KvHeads, FfnChannels, RopePairs };

enum class Role {
  TokenEmbd, OutputNorm, Output, RopeFreqs,                       // model-wide
  AttnNorm, AttnQ, AttnK, AttnV, AttnOut, BiasQ, BiasK, BiasV,    // per layer: attention
  BiasOut,                                                        //   o_proj bias (pruning recovery)
  FfnNorm, FfnGate, FfnUp, FfnDown, BiasDown,                     // per layer: MLP
};

// When a tensor of a role is in the model.
enum class Presence {
  Always,
  Untied,       // output.weight: absent when the embeddings are tied
  QkvBias,      // q/k/v biases: the family or config.json says so
  RopeScaled,   // rope_freqs: llama3-style per-frequency factors (not in HF checkpoints)
  OutBias,      // attn_output / ffn_down biases: written by pruning recovery (docs/pruning.md),
  DownBias,     //   never read from HF checkpoints
};

struct TensorKind {
  Role role;
  const char* gguf;  // GGUF name, or per-layer suffix after "blk.N."
  const char* hf;    // HF name, or suffix after "model.layers.N."; nullptr: not in checkpoints
  bool per_layer;
  Axis rows, cols;   // HF layout [rows = outputs, cols = inputs]; 1-D tensors: cols = One
  Presence presence;
  // Role of the weight whose input statistics this weight shares (q/k/v read one input,
  // gate/up another): the key of activation statistics and imatrix entries.
  Role input_of;
  bool weight_matrix() const { return cols != Axis::One; }  // 2-D: quantized, pruned by columns
};

// Every tensor kind any family can have, in a fixed order.
const std::vector<TensorKind>& tensor_kinds();
const TensorKind& kind_of(Role role);
// The per-layer weight matrix whose input columns count `unit` (QHeads: attn_output, fed by
// every q head; FfnChannels: ffn_down, fed by every FFN channel): what removing such a unit
// takes columns from, and what pruning recovery repairs. Error(Runtime) for other axes.
const TensorKind& projection_reading(Axis unit);

enum class QkvBias { Never, FromConfig, Always };

struct Family {
  const char* model_type;    // config.json model_type; nullptr: a GGUF architecture only (deci)
  const char* gguf_arch;     // general.architecture written (and read back as this family)
  RopeLayout gguf_rope;      // layout of q/k rows in the GGUF
  bool permute_qk;           // the converter permutes HF q/k rows (rotate-half -> interleaved)
  QkvBias qkv_bias;
  bool rope_dimension_key;   // writes <arch>.rope.dimension_count (llama.cpp's converter does for llama)
  bool sliding_window;       // config.json may set sliding_window (Mistral)
  float default_rms_eps;     // config class default when rms_norm_eps is absent
  float default_rope_theta;
};

// By config.json model_type ("llama", "mistral", "qwen2"); nullptr when unsupported ("deci"
// is read from GGUFs only: no Hugging Face model_type maps to it).
const Family* family_by_model_type(const std::string& model_type);
// By GGUF general.architecture ("llama", "qwen2", "deci"); nullptr when unsupported.
const Family* family_by_gguf_arch(const std::string& gguf_arch);
// "llama, mistral, qwen2": for error messages.
std::string supported_model_types();
std::string supported_gguf_archs();

// One layer's widths. A pruned model has different counts per layer; 0 heads (or 0 channels)
// means the layer has no attention (or no MLP) at all.
struct LayerDims {
  int n_head = 0;
  int n_head_kv = 0;
  int n_ff = 0;
};

// One concrete model: family, sizes, per-layer widths and the numbers the math needs.
struct ModelArch {
  const Family* family = nullptr;
  std::string arch;  // GGUF architecture name ("llama" | "qwen2" | "deci"), = family->gguf_arch
  int n_embd = 0;
  int head_dim = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  float rope_theta = 10000.f;
  float rms_eps = 1e-6f;
  std::vector<float> rope_freq_factors;  // per rotary pair, theta_i is divided by it; empty = 1
  int sliding_window = 0;                // > 0: a query sees only the last sliding_window keys
  bool attn_bias = false;                // q/k/v biases
  bool out_bias = false;                 // attn_output.bias in every layer with attention
  bool down_bias = false;                // ffn_down.bias in every layer with an MLP
  bool tie_embeddings = false;           // output = token embedding
  std::vector<LayerDims> layers;

  int n_layer() const { return static_cast<int>(layers.size()); }
  RopeLayout gguf_rope() const { return family->gguf_rope; }

  // Every layer as config.json says.
  static ModelArch from_config(const ModelConfig& c);
  // From GGUF metadata (per-layer head counts may be INT32 arrays; head size from key_length
  // or n_embd / n_head; vocabulary from the token list or token_embd; rope_freqs when present).
  // Throws Error(InputData) "<path>: <problem>".
  static ModelArch from_gguf(const gguf::Reader& r);
  // Throws Error(InputData) "<origin>: <problem>" for inconsistent dimensions.
  void validate(const std::string& origin) const;

  // Size of one axis in layer `layer` (-1 for model-wide axes).
  int64_t axis_size(Axis a, int layer) const;
  // HF shape (outermost first) of a tensor kind in a layer.
  std::vector<int64_t> hf_shape(const TensorKind& k, int layer) const;
  // Whether the model has this kind (in this layer: 0-head layers have no attention tensors).
  bool has(const TensorKind& k, int layer) const;

  // rotary frequency of pair i: theta^(-2i/head_dim) / rope_freq_factors[i].
  std::vector<float> rope_inv_freq() const;

  // Bytes of the inference engine's KV cache for n_ctx positions: keys and values of every KV
  // head of every layer (a pruned layer's own count), head_dim elements of `elem_bytes` each
  // (2: F16, the engine's default; 4: F32), positions padded to kv_cache_positions(n_ctx).
  uint64_t kv_cache_bytes(int n_ctx, int elem_bytes) const;
};

// The engine's KV cache stores keys in transposed blocks of this many positions (one AVX-512
// vector of floats), so a cache for n_ctx positions holds kv_cache_positions(n_ctx) of them:
// n_ctx rounded up to a multiple of the block.
inline constexpr int kKvCacheBlock = 16;
int kv_cache_positions(int n_ctx);

// One tensor of a concrete model.
struct TensorDesc {
  const TensorKind* kind;
  int layer;                  // -1 for model-wide
  std::string gguf_name, hf_name;  // hf_name empty when the tensor is generated (rope_freqs)
  std::vector<int64_t> shape; // HF order (outermost first)
  std::vector<int64_t> ne() const { return {shape.rbegin(), shape.rend()}; }  // GGUF order
};
// Every tensor the model has, model-wide first, then layer by layer, in kind order.
std::vector<TensorDesc> tensors_of(const ModelArch& a);

// ---- names -----------------------------------------------------------------------------------

// "model.layers.3.self_attn.q_proj.weight" <-> "blk.3.attn_q.weight" (any family: the names
// are shared). nullopt for names with no counterpart (rotary_emb.inv_freq, unknown names).
struct NamedTensor {
  const TensorKind* kind;
  int layer;  // -1 for model-wide
};
std::optional<NamedTensor> parse_hf_name(const std::string& hf_name);
std::optional<NamedTensor> parse_gguf_name(const std::string& gguf_name);
std::string gguf_name(const TensorKind& k, int layer);
std::string hf_name(const TensorKind& k, int layer);  // "" when not in checkpoints
std::string gguf_name(Role role, int layer);           // of kind_of(role)
std::string hf_name(Role role, int layer);
// A layer's GGUF block, "blk.3": the prefix of its tensors' names (labels, reports).
std::string gguf_block_name(int layer);

// ---- RoPE scaling ----------------------------------------------------------------------------

// Llama 3's per-frequency factors (rope_scaling.rope_type = "llama3"), what the converter writes
// as rope_freqs.weight: 1 for high frequencies (wavelength < original_ctx / high_freq_factor),
// `factor` for low ones (wavelength > original_ctx / low_freq_factor), and in between
// 1 / ((1 - s) / factor + s) with s = (original_ctx / wavelength - low) / (high - low).
std::vector<float> llama3_rope_factors(int head_dim, float theta, float factor, float low_freq_factor,
                                       float high_freq_factor, int original_ctx);

}  // namespace squish::arch
