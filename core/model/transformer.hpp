#pragma once
// Float reference transformer for every family of core/arch (llm.c style: the whole model's
// math fits in transformer.cpp, its kernels in kernels.hpp, shared with the inference engine). Used by the score stage (gradients of head / channel masks,
// activation statistics) and as the float reference for inference.
//
// Per layer:  x += m_attn * o_proj( concat_h( m_h * m_kv(h) * attn_h(rope(q), rope(k), v) ) )
//             x += m_mlp  * down( m_c * silu(gate(rmsnorm x)) * up(rmsnorm x) )
// where every mask m is a scalar (1 for the unpruned model). The KV-group mask m_kv scales the
// outputs of every query head of its group (Michel et al. 2019 place masks on head outputs;
// zeroing a group's mask is exactly what removing the group does to the forward pass, whereas
// zeroing k only would leave a uniform attention, not a removed head).
//
// Weights are in Hugging Face layout ([out, in] row-major, q/k rows in rotate-half order) and
// reached one layer at a time through WeightLoader, so the backward pass can recompute a layer
// from its checkpointed input while only that layer's weights are resident.
#include "core/arch/architecture.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/safetensors.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
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

// Scalar masks (forward: multiplied in; backward: their gradients), see the header comment.
// Also used for per-mask gradients and importance scores, with the same shape.
struct MaskSet {
  std::vector<std::vector<double>> head;  // [layer][n_head]: head output, before o_proj
  std::vector<std::vector<double>> kv;    // [layer][n_head_kv]: outputs of every q head of the group
  std::vector<std::vector<double>> ffn;   // [layer][n_ff]: silu(gate)*up channel, before down_proj
  std::vector<double> attn;               // [layer]: attention branch before the residual add
  std::vector<double> mlp;                // [layer]: MLP branch before the residual add

  static MaskSet filled(const ModelArch& a, double v);
  static MaskSet ones(const ModelArch& a) { return filled(a, 1.0); }
  size_t count() const;  // number of scalar masks
  // Visits every scalar in a fixed order (head, kv, ffn, attn, mlp; layer-major).
  template <class Fn> void for_each(Fn&& fn) {
    for (auto& l : head) for (auto& v : l) fn(v);
    for (auto& l : kv) for (auto& v : l) fn(v);
    for (auto& l : ffn) for (auto& v : l) fn(v);
    for (auto& v : attn) fn(v);
    for (auto& v : mlp) fn(v);
  }
  template <class Fn> void for_each(Fn&& fn) const { const_cast<MaskSet*>(this)->for_each([&](double& v) { fn(static_cast<const double&>(v)); }); }
  std::vector<double> flatten() const;
};

// Per-column mean of x^2 over the tokens seen, for the input of every linear layer: what
// llama.cpp's llama-imatrix collects. Keyed by the HF name of the weight the input multiplies
// (q/k/v share one input, as do gate/up); the output projection is "lm_head.weight", or
// "model.embed_tokens.weight" when the embeddings are tied.
// With a backward pass, also the per-row mean of (dL/dy)^2 of every linear layer's output y
// (same keys): with the input statistics, the diagonal Fisher estimate E[g_ij^2] ~
// E[dy_i^2] E[x_j^2] of each weight, which predicts what a weight perturbation costs the loss.
struct ActivationStats {
  struct Entry {
    std::vector<double> sum_sq;  // per input column (or output row)
    int64_t count = 0;           // tokens
    std::vector<float> mean() const;  // sum_sq / count
  };
  std::map<std::string, Entry> entries;       // inputs: per column
  std::map<std::string, Entry> output_grads;  // output gradients: per row (backward only)
  // Per-column sums of x (not squared; Entry::mean() is then E[x]) of every per-layer weight's
  // input, same keys: pruning recovery's calibration means (core/prune/recovery.hpp).
  std::map<std::string, Entry> input_sums;
  void accumulate(const std::string& weight, std::span<const double> col_sum_sq, int64_t tokens);
  void accumulate_sum(const std::string& weight, std::span<const double> col_sum, int64_t tokens);
  void accumulate_output_grad(const std::string& weight, std::span<const double> row_sum_sq, int64_t tokens);

  // With `second_moments` set, also the full Σ x xᵀ of every input (GPTQ's H), once per input:
  // keyed by the HF name of the first weight that reads it (q_proj for q/k/v, gate_proj for
  // gate/up, o_proj, down_proj, and the output projection). n² floats each.
  struct SecondMoment {
    int n = 0;
    std::vector<float> sum;  // n x n, row-major; the upper triangle (j >= i) is kept
    int64_t count = 0;       // tokens
  };
  bool second_moments = false;
  std::map<std::string, SecondMoment> moments;
  void accumulate_moment(const std::string& input, const float* x, int tokens, int n);
};

// Running first-order Taylor importance E|m dL/dm| and Fisher E[(dL/dm)^2] over chunks.
class MaskImportance {
 public:
  explicit MaskImportance(const ModelArch& a);
  void add(const MaskSet& masks, const MaskSet& grads);  // one chunk
  // Layer-major accumulation: layer l's masks of one chunk (add_layer for every layer of the
  // chunk, then add_chunks once for all of them). Same sums, same order as add().
  void add_layer(int l, const MaskSet& masks, const MaskSet& grads);
  void add_chunks(int n) { n_ += n; }
  // Sums (Taylor then Fisher, MaskSet::for_each order) and chunk count, to combine processes.
  std::vector<double> sums() const;
  void set_sums(std::span<const double> sums, int chunks);
  MaskSet taylor() const;
  MaskSet fisher() const;
  int chunks() const { return n_; }

 private:
  MaskSet sum_taylor_, sum_fisher_;
  int n_ = 0;
};

// The layer-major score pass (Transformer::mask_importance_by_layer).
struct LayerMajorOptions {
  uint64_t activation_memory = 0;  // bytes of activation blocks kept in memory; the rest spill
  std::string scratch_dir;         // where the unnamed scratch file goes
  std::function<void(uint64_t done, uint64_t total)> progress;  // steps: (layer or head) x chunk
};
struct LayerMajorReport {
  uint64_t activation_memory_bytes = 0;  // activation blocks allocated in memory
  uint64_t scratch_bytes_peak = 0;       // largest the scratch file got
  uint64_t scratch_bytes_written = 0, scratch_bytes_read = 0;
};

enum class Precision { F32, F64 };  // F64: slow exact path for gradient checks

struct TransformerOptions {
  // TBB threads of the model's own arena (0: all cores). OpenBLAS is switched to one thread
  // (process-wide) on every call: the model splits its products over TBB itself.
  int threads = 0;
  Precision precision = Precision::F32;
};

struct LossResult {
  double nll_sum = 0;  // sum of -log p(next token) over the predictions
  int64_t count = 0;   // predictions
  double mean() const { return count ? nll_sum / static_cast<double>(count) : 0.0; }
};

// One call at a time per Transformer (it keeps its work buffers between calls); use one
// Transformer per concurrent user.
class Transformer {
 public:
  explicit Transformer(std::shared_ptr<const WeightLoader> weights, TransformerOptions opt = {});
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelArch& arch() const { return weights_->arch(); }

  // Logits [T, n_vocab] row-major of one sequence at positions 0..T-1.
  std::vector<float> logits(std::span<const int32_t> tokens, const MaskSet* masks = nullptr);

  // Next-token cross-entropy: logits at positions first..T-2 predict tokens[first+1..T-1].
  // nll (optional) receives the T-1-first per-prediction values; stats (optional) accumulates
  // activation statistics over all T tokens.
  LossResult loss(std::span<const int32_t> tokens, int first = 0, const MaskSet* masks = nullptr,
                  ActivationStats* stats = nullptr, std::vector<double>* nll = nullptr);

  // Same loss, then the gradient of its mean over the predictions w.r.t. every mask (grads is
  // overwritten, shaped like masks). Weights are frozen: only activation gradients flow.
  // The forward keeps each layer's input; the backward recomputes the layer from it.
  LossResult loss_and_mask_grads(std::span<const int32_t> tokens, int first, const MaskSet& masks,
                                 MaskSet& grads, ActivationStats* stats = nullptr);

  // Chunks [c0, c1) of n_ctx tokens, scored as loss_and_mask_grads would score each (first = 0,
  // masks all 1) and added to `importance` and `stats` in the same order, so the results are
  // the same; but computed layer by layer over all the chunks: each layer's weights are
  // requested twice in all (forward, then backward), and every chunk's layer inputs
  // (checkpoints) and output gradients are kept within opt.activation_memory, the rest in a
  // scratch file. With a streaming loader only one layer is resident: memory is bounded by
  // the globals, one layer, the work buffers and activation_memory, whatever the depth.
  LossResult mask_importance_by_layer(std::span<const int32_t> tokens, int n_ctx, int c0, int c1, MaskImportance& importance,
                                      ActivationStats* stats, const LayerMajorOptions& opt, LayerMajorReport* report = nullptr);

  // Bytes of the work buffers a Transformer of `threads` threads (0: all cores) allocates for
  // chunks of n_ctx tokens (the layer activations, their gradients, attention and logit
  // scratch), for memory bounds checked before the model is loaded.
  static uint64_t work_bytes(const ModelArch& a, int n_ctx, int threads);

  struct Impl;

 private:
  std::shared_ptr<const WeightLoader> weights_;
  TransformerOptions opt_;
  std::unique_ptr<Impl> impl_;
};

// Scores a calibration stream: chunks of n_ctx tokens (the tail that does not fill a chunk is
// dropped), each chunk's mean next-token loss over all its positions, its mask gradients
// added to `importance` (masks all 1). Returns the loss over all chunks.
LossResult accumulate_mask_importance(Transformer& model, std::span<const int32_t> tokens, int n_ctx,
                                      MaskImportance& importance, ActivationStats* stats = nullptr,
                                      int max_chunks = 0);

}  // namespace squish
