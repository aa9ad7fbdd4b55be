#pragma once
// The float reference model's forward and backward pass over one chunk of T tokens, in float or
// double: ReferenceModel<F> (F = double: the slow exact path for gradient checks), with the
// weights it reads as F (LayerW<F>) and the work buffers it keeps between chunks. The math of
// each layer is transformer.hpp's header comment; its ops are reference_ops.hpp. Internal to
// core/model: callers use Transformer, which runs one ReferenceModel inside its TBB arena.
#include "core/model/score_stats.hpp"
#include "core/model/transformer.hpp"
#include "core/model/weights.hpp"

#include <tbb/task_arena.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace squish {

// Weights seen as F: float weights are used in place, double copies are made for the F64 path.
template <class F>
struct View {
  std::vector<std::vector<F>> own;
  const F* operator()(const std::vector<float>& v);
};

// One layer's weights as F (null where a bias is absent).
template <class F>
struct LayerW {
  std::shared_ptr<const LayerWeights> src;
  View<F> view;
  const F *attn_norm, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ffn_norm, *w_gate, *w_up, *w_down, *b_down;
  explicit LayerW(std::shared_ptr<const LayerWeights> w);
};

// Row block of the causal attention: queries [r0, r1) see keys [0, r1).
inline constexpr int kAttnBlock = 128;

// One call at a time (the work buffers are members); run inside the arena whose threads its
// parallel loops use (Transformer::Impl::run).
template <class F>
struct ReferenceModel {
  using Vec = std::vector<F>;
  const WeightLoader& W;
  const ModelArch& A;
  View<F> gview;
  const F *tok_embd, *out_norm, *output;

  explicit ReferenceModel(const WeightLoader& w);

  // Layer weights as F. The f64 path keeps its converted copies while the loader keeps
  // handing out the same layer objects.
  std::vector<std::shared_ptr<const LayerW<F>>> converted;
  std::shared_ptr<const LayerW<F>> layer(int l);

  // Scalar masks of one layer, as F; head_scale = m_head * m_kv(group).
  struct LayerMasks {
    Vec head_scale, ffn;
    F attn = 1, mlp = 1;
  };
  LayerMasks layer_masks(const MaskSet* m, int l) const;

  // Everything one layer computes, kept for its backward (one layer resident at a time).
  struct Acts {
    Vec xn1, rstd1;   // attention rmsnorm
    Vec q, k, v;      // after bias and RoPE
    Vec o;            // head outputs [T, n_head*hd] before masks
    Vec att;          // masked head outputs: o_proj input
    Vec y_attn;       // o_proj output
    Vec x_mid;        // residual after attention
    Vec xn2, rstd2;   // MLP rmsnorm
    Vec g, u, a;      // gate, up, silu(gate)*up
    Vec h;            // a * channel mask: down_proj input
    Vec y_mlp;        // down_proj output
  };

  // What backward_layer reads of a layer's activations (besides its input): a layer-major pass
  // that keeps these from the forward skips recomputing the layer.
  static constexpr Vec Acts::*kBackwardActs[] = {&Acts::rstd1, &Acts::q,    &Acts::k,     &Acts::v, &Acts::o, &Acts::y_attn,
                                                 &Acts::x_mid, &Acts::rstd2, &Acts::g, &Acts::u, &Acts::a, &Acts::y_mlp};
  // Their values for layer l at T tokens.
  size_t backward_acts_values(int l) const {
    const auto& s = A.layers[l];
    const size_t q = size_t(s.n_head) * A.head_dim, kv = size_t(s.n_head_kv) * A.head_dim;
    return size_t(T) * (2 + 2 * q + 2 * kv + 3 * size_t(A.n_embd) + 3 * size_t(s.n_ff));
  }

  // Backward temporaries of one layer.
  struct Grads {
    Vec dy, dh, dg, du, dxn, datt, dq, dk, dv;
  };

  // Buffers persist across calls: reallocating them per chunk costs page faults and memsets
  // comparable to the attention itself.
  int T = 0;
  Vec cos_t, sin_t;  // RoPE table [T, hd/2]
  std::vector<Vec> scratch_p, scratch_dp;  // per TBB thread: [kAttnBlock, T]
  Acts acts;
  Grads grad_bufs;
  Vec logit_rows;  // [64, n_vocab] logits of one block of scored rows

  // Sizes the buffers for chunks of n_tokens tokens and computes their RoPE table.
  void setup(int n_tokens);

  // Scratch of the calling TBB thread. Attention tasks run serially inside (no nested
  // parallelism: a waiting thread could pick up another head's task and reuse its scratch).
  F* slot_p() { return scratch_p[tbb::this_task_arena::current_thread_index()].data(); }
  F* slot_dp() { return scratch_dp[tbb::this_task_arena::current_thread_index()].data(); }

  // ---- forward ----
  // Token embeddings of the sequence.
  Vec embed(std::span<const int32_t> tokens);
  // Layer l on x_in, everything kept in a; statistics of the layer's inputs (optional).
  void forward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a, ActivationStats* stats);
  // x_out = x_mid + m_mlp * y_mlp
  void residual_out(const Acts& a, F m_mlp, F* x_out);
  // Runs the layers; checkpoints (optional) receive each layer's input.
  Vec run_layers(Vec x, const MaskSet* masks, ActivationStats* stats, std::vector<Vec>* checkpoints);
  // Final norm; statistics of the lm_head input.
  Vec final_norm(const Vec& x, Vec& rstd, ActivationStats* stats);
  // Cross-entropy of positions first..T-2, in row blocks so the [rows, vocab] logits stay
  // small. With dxf, also writes dL/dxf for the mean loss (rows outside the range get 0).
  LossResult head_loss(const Vec& xf, std::span<const int32_t> tokens, int first, std::vector<double>* nll, Vec* dxf,
                       ActivationStats* stats = nullptr);

  // ---- backward ----
  // dx += dL/dx through the final norm (x: its input; dxf: dL/dxf from head_loss).
  void final_norm_backward(const Vec& x, const Vec& rstd, const Vec& dxf, Vec& dx);
  // Backward of layer l (a: its forward, recomputed from x_in): dx holds dL/dx_out on entry
  // and dL/dx_in on return. Mask gradients are added into grads.
  void backward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a, Vec& dx, MaskSet& grads,
                      ActivationStats* stats);
  // An untied embedding is a lookup: a linear map of the one-hot token, so its Fisher factors
  // are the token frequencies (per row) and the gradient at the embedding output dx (per column).
  void embedding_stats(std::span<const int32_t> tokens, const Vec& dx, ActivationStats* stats);

  // ---- whole chunks (Transformer's calls) ----
  std::vector<float> logits(std::span<const int32_t> tokens, const MaskSet* masks);
  LossResult loss(std::span<const int32_t> tokens, int first, const MaskSet* masks, ActivationStats* stats,
                  std::vector<double>* nll);
  LossResult loss_and_grads(std::span<const int32_t> tokens, int first, const MaskSet& masks, MaskSet& grads,
                            ActivationStats* stats);

  // Output gradients at the per-token scale: the loss is a mean over the n predictions of a
  // chunk, so n dL/dy is what one token's loss sends back (n^2 on squares).
  double grad_scale2 = 1;
  std::vector<double> scaled(std::vector<double> v) const;

 private:
  // o = causal GQA attention of rope'd q, k and v, one task per query head.
  void attention(int l, Acts& a);
  // dq (written), dk, dv (zeroed, then added per head of a group) from do, recomputing each
  // row block's probabilities; one task per KV group.
  void attention_backward(int l, const Acts& a, const Vec& dout, Vec& dq, Vec& dk, Vec& dv);
  // Input statistics of layer l's weights (imatrix, means, second moments).
  void input_stats(int l, const Acts& a, ActivationStats& stats);
  // Σ x xᵀ of one input over this chunk's T tokens (statistics are kept in float).
  void add_moment(ActivationStats& st, const std::string& input, const F* x, int n);
};

extern template struct ReferenceModel<float>;
extern template struct ReferenceModel<double>;

}  // namespace squish
