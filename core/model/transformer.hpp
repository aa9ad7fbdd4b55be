#pragma once
// Float reference transformer for every family of core/arch: the API the score stage (gradients
// of head / channel masks, activation statistics) and the float references of inference and
// pruning call. Its pieces, llm.c style, one thing per file: the weights (weights.hpp), the
// masks and statistics it measures (score_stats.hpp), the per-row kernels shared with the
// inference engine, each op's backward beside its forward (kernels.hpp), the same ops over a
// chunk of tokens (reference_ops.hpp), the forward and backward of one chunk
// (reference_model.cpp) and the layer-major pass over many (layer_major.cpp).
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
#include "core/model/score_stats.hpp"
#include "core/model/weights.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace squish {

// The layer-major score pass (Transformer::mask_importance_by_layer).
struct LayerMajorOptions {
  uint64_t activation_memory = 0;  // bytes of activation blocks kept in memory; the rest spill
  std::string scratch_dir;         // where the unnamed scratch file goes
  // Bytes for the top layers' forward activations that backward reads, kept from the forward
  // so those layers are not recomputed (the last layers forward are the first backward).
  uint64_t kept_memory = 0;
  std::function<void(uint64_t done, uint64_t total)> progress;  // steps: (layer or head) x chunk
  // Called when layer l's forward has seen every chunk (l = n_layer: the loss head), so the
  // statistics of its inputs are complete: the caller may write and release them.
  std::function<void(int l)> forward_done;
};
struct LayerMajorReport {
  uint64_t activation_memory_bytes = 0;  // activation blocks allocated in memory
  uint64_t scratch_bytes_peak = 0;       // largest the scratch file got
  uint64_t scratch_bytes_written = 0, scratch_bytes_read = 0;
  int layers_not_recomputed = 0;         // layers whose backward used kept activations
  uint64_t kept_activation_bytes = 0;    // the activations kept for them
};

enum class Precision { F32, F64 };  // F64: slow exact path for gradient checks

struct TransformerOptions {
  // TBB threads of the model's own arena (0: all cores). OpenBLAS stays on one thread (the
  // executables set it, core/cli/process_startup.cpp): the model splits its products over TBB.
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
