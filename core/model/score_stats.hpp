#pragma once
// What the score stage measures with the float reference model: scalar masks on heads, KV
// groups, FFN channels and whole branches (MaskSet; also the shape of their gradients and
// scores), the per-column activation statistics of every linear input and output gradient
// (ActivationStats: imatrix, Fisher factors, means, second moments), and the running mask
// importance over chunks (MaskImportance: Taylor and Fisher).
#include "core/arch/architecture.hpp"

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace squish {

using arch::ModelArch;

// Scalar masks (forward: multiplied in; backward: their gradients), see transformer.hpp.
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
    bool released = false;   // handed on and freed once complete (sum empty); adding more is an error
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

}  // namespace squish
