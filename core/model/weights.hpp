#pragma once
// The float reference model's weights: float32 tensors in Hugging Face layout ([out, in]
// row-major, q/k rows in rotate-half order), reached one layer at a time through WeightLoader
// (from a safetensors folder, converted on load, or already in memory), and the per-layer widths
// of a checkpoint read from its tensor shapes.
#include "core/arch/architecture.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/safetensors.hpp"

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace squish {

using arch::LayerDims;
using arch::ModelArch;

// Per-layer widths read from the tensor shapes (q_proj rows / head_dim, ...): handles pruned
// checkpoints whose config only holds the original counts.
ModelArch arch_from_checkpoint(const ModelConfig& c, const SafetensorsModel& st);

// One layer's weights as float32, HF layout: w* are [out, in] row-major.
struct LayerWeights {
  std::vector<float> attn_norm;        // [n_embd]
  std::vector<float> wq, bq;           // [n_head*head_dim, n_embd], [n_head*head_dim] (bias empty if none)
  std::vector<float> wk, bk;           // [n_head_kv*head_dim, n_embd]
  std::vector<float> wv, bv;           // [n_head_kv*head_dim, n_embd]
  std::vector<float> wo, bo;           // [n_embd, n_head*head_dim], [n_embd] (bias: pruning recovery)
  std::vector<float> ffn_norm;         // [n_embd]
  std::vector<float> w_gate, w_up;     // [n_ff, n_embd]
  std::vector<float> w_down, b_down;   // [n_embd, n_ff], [n_embd]
};

struct GlobalWeights {
  std::vector<float> tok_embd;  // [n_vocab, n_embd]
  std::vector<float> out_norm;  // [n_embd]
  std::vector<float> lm_head;   // [n_vocab, n_embd]; empty when tied
  const std::vector<float>& output() const { return lm_head.empty() ? tok_embd : lm_head; }
};

// Where the transformer gets its weights, one layer at a time. layer() may be called from one
// thread at a time per Transformer; the returned weights stay valid while the pointer lives.
class WeightLoader {
 public:
  virtual ~WeightLoader() = default;
  virtual const ModelArch& arch() const = 0;
  virtual const GlobalWeights& globals() const = 0;
  virtual std::shared_ptr<const LayerWeights> layer(int il) const = 0;
};

// Weights straight from a Hugging Face folder (any dtype safetensors converts to f32).
// keep_layers: convert each layer once and keep it (fast; memory = f32 model), otherwise
// convert on every request (streaming; only the layers in use are resident).
class SafetensorsWeights final : public WeightLoader {
 public:
  static std::shared_ptr<SafetensorsWeights> open(const std::string& dir, bool keep_layers = true);
  const ModelArch& arch() const override { return arch_; }
  const GlobalWeights& globals() const override { return globals_; }
  std::shared_ptr<const LayerWeights> layer(int il) const override;
  const ModelConfig& config() const { return config_; }
  const SafetensorsModel& checkpoint() const { return st_; }

 private:
  SafetensorsWeights(ModelConfig c, SafetensorsModel st, bool keep);
  std::shared_ptr<const LayerWeights> read_layer(int il) const;
  ModelConfig config_;
  SafetensorsModel st_;
  ModelArch arch_;
  GlobalWeights globals_;
  bool keep_;
  mutable std::mutex mu_;
  mutable std::vector<std::shared_ptr<const LayerWeights>> cache_;
};

// Weights already in memory (e.g. a pruned model built by another stage). Validates shapes.
class InMemoryWeights final : public WeightLoader {
 public:
  InMemoryWeights(ModelArch arch, GlobalWeights globals, std::vector<LayerWeights> layers);
  const ModelArch& arch() const override { return arch_; }
  const GlobalWeights& globals() const override { return globals_; }
  std::shared_ptr<const LayerWeights> layer(int il) const override { return layers_.at(il); }

 private:
  ModelArch arch_;
  GlobalWeights globals_;
  std::vector<std::shared_ptr<const LayerWeights>> layers_;
};

}  // namespace squish
