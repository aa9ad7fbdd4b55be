#pragma once
// CompressionRecipe: the contract between the plan, compress and verify stages (schema in
// docs/recipe.md). resolve() turns a recipe + checkpoint into a CompressPlan: every output
// tensor's GGUF name, shape, type, the slicing that prunes it and the reason for its type.
// Deterministic: the same recipe and checkpoint always give the same plan (and the same bytes).
#include "core/arch/architecture.hpp"
#include "core/gguf/gguf.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/safetensors.hpp"
#include "core/prune/recovery.hpp"
#include "core/quant/ggml_types.hpp"
#include "core/quant/gptq.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace squish::recipe {

struct TensorRule {
  std::string match;  // HF tensor name or glob (fnmatch), e.g. "model.layers.*.mlp.down_proj.weight"
  GGMLType type;
  std::string reason;
};

// Heads kept in one layer, as indices of the original model. Empty lists mean "all".
struct AttentionKeep {
  std::vector<int> kv_groups;  // KV heads kept
  std::vector<int> q_heads;    // q heads kept; each must belong to a kept group, same count per group
};

struct CompressionRecipe {
  std::string name;
  std::string origin;                      // where it came from (file path), for error messages
  std::optional<std::string> preset;       // llama.cpp mixture, e.g. "Q4_K_M"
  // The preset as llama-quantize mixes it when given an importance matrix (IQ4_NL and IQ4_XS
  // give the first eighth of the ffn_down layers Q5_K without one; llama.cpp's Q4_0 gives them
  // Q4_1 with one, which Squish does not implement: Q4_0 stays Q4_0 there).
  // compress.yaml's recipe node sets it from the imatrix its quantize node will use.
  bool preset_imatrix = false;
  std::vector<TensorRule> tensors;         // overrides; the most specific match wins
  std::map<int, AttentionKeep> attention;  // by original layer index
  std::map<int, std::vector<int>> ffn_channels;  // by original layer: intermediate channels kept
  std::vector<int> drop_layers;            // original layer indices removed entirely
  std::string block_fit = "fallback";      // rows not a multiple of the block size: "fallback" | "error"
  std::string method = "rtn";              // quantizer: "rtn" (ggml's rounding, imatrix-weighted) | "gptq"
  double gptq_damp = quant::kDefaultDamp;              // GPTQ: H's diagonal damping, fraction of its mean
  // Retrain-free repair of the output projections (o_proj, down_proj) whose inputs pruning
  // removes (core/prune/recovery.hpp): "none", "bias" (FLAP bias compensation) or "refit"
  // (least-squares refit of the kept columns and a bias). Needs the score stage's statistics.
  std::string recovery = "none";
  double recovery_damp = prune::kDefaultRidge;          // refit: ridge, fraction of the kept inputs' mean E[x²]
  nlohmann::json removals = nlohmann::json::array();  // audit: what was removed, its score, why
  std::string device;                      // what it was planned for (free text)
  uint64_t memory_budget_bytes = 0;        // 0 = none; the output file must fit
  nlohmann::json source = nlohmann::json::object();  // provenance: scores, plan settings

  static CompressionRecipe from_json(const nlohmann::json& j, const std::string& origin);
  static CompressionRecipe load(const std::string& path);
  static CompressionRecipe from_preset(const std::string& preset, bool imatrix = false);  // {"preset": preset}
  nlohmann::json to_json() const;
};

// The quantizers a recipe may name: "rtn" and "gptq".
bool is_quant_method(const std::string& method);
// Whether compress quantizes this tensor with GPTQ under method "gptq": weight matrices that
// only multiply an input (per layer, and an untied output projection; a tied embedding is also
// the token lookup, whose error GPTQ does not see) at a type with integer levels.
bool gptq_kind(const arch::TensorKind& kind);
bool gptq_applies(const arch::TensorKind& kind, GGMLType type);
// The recoveries a recipe may name: "none", "bias", "refit".
bool is_recovery(const std::string& recovery);

// Names of the presets (llama.cpp mixtures) Squish reproduces.
const std::vector<std::string>& preset_names();

// One output layer after pruning: its widths and which original heads / channels it keeps.
struct PrunedLayer {
  int src_layer = 0;
  int n_head = 0, n_head_kv = 0, n_ff = 0;
  std::vector<int> q_heads;      // original q-head indices kept, grouped by kept kv group
  std::vector<int> kv_groups;    // original kv-group indices kept
  std::vector<int> ffn_channels; // original channels kept (empty = all)
};

struct PlannedTensor {
  const arch::TensorKind* kind = nullptr;
  std::string hf_name;            // empty for tensors the converter generates (rope_freqs)
  std::string gguf_name;
  int layer = -1;                 // output layer (-1 for globals)
  std::vector<int64_t> src_shape; // HF shape (outermost first)
  std::vector<int64_t> shape;     // output HF-order shape after pruning
  std::vector<int64_t> ne;        // GGUF ne (innermost first)
  GGMLType type = GGMLType::F32;
  std::string reason;
  std::vector<int64_t> keep_rows; // HF rows kept, in output order (empty = all)
  std::vector<int64_t> keep_cols; // HF columns kept (empty = all)
  int permute_heads = 0;          // > 0: llama q/k rope permutation over this many heads
  size_t nbytes = 0;
  std::vector<float> generated;   // values of a generated tensor (not in the checkpoint)
  // A bias pruning recovery computes (not in the checkpoint): the HF name of the projection
  // whose pruning it repairs; compress.prune emits it with that tensor.
  std::string recovers;
};

struct CompressPlan {
  ModelConfig config;              // of the source checkpoint
  std::string model_dir;
  CompressionRecipe recipe;
  std::vector<PrunedLayer> layers; // output layers
  arch::ModelArch output_arch;     // the output model's architecture
  std::vector<PlannedTensor> tensors;  // in GGUF (llama.cpp) order
  std::map<std::string, size_t> by_hf_name;
  std::vector<gguf::KeyValue> metadata;
  uint64_t file_bytes = 0;         // predicted size of the GGUF
  uint64_t source_params = 0, output_params = 0;

  const PlannedTensor* find_hf(const std::string& hf_name) const;
  // The recovery bias planned for this projection (HF name), or nullptr.
  const PlannedTensor* recovery_bias_of(const std::string& projection_hf_name) const;
  nlohmann::json summary() const;  // per-tensor types and reasons, sizes: for reports and squish.recipe
};

// Resolves the recipe against a checkpoint. Throws Error(InputData) naming the recipe for
// inconsistent pruning (unknown heads, uneven q heads per group, ...) and unknown tensors.
// enforce_budget = false predicts the file size without refusing a plan over the budget.
CompressPlan resolve(const CompressionRecipe& recipe, const std::string& model_dir, bool enforce_budget = true);

}  // namespace squish::recipe
