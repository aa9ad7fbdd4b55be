// The float reference model's forward and backward pass over one chunk (ReferenceModel<F>, float
// and double): each layer forward with the statistics of its inputs, its backward as a sequence
// of the ops' backwards (reference_ops.hpp, kernels.hpp), the loss head, and the whole-chunk
// calls (logits, loss, loss and mask gradients) that Transformer runs.
#include "core/model/reference_model.hpp"

#include "core/base/error.hpp"
#include "core/model/kernels.hpp"
#include "core/model/parallel.hpp"
#include "core/model/reference_ops.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <type_traits>
#include <utility>

namespace squish {

namespace ops = reference_ops;
using arch::Role;

template <class F>
const F* View<F>::operator()(const std::vector<float>& v) {
  if (v.empty()) return nullptr;
  if constexpr (std::is_same_v<F, float>) {
    return v.data();
  } else {
    own.emplace_back(v.begin(), v.end());
    return own.back().data();
  }
}

template <class F>
LayerW<F>::LayerW(std::shared_ptr<const LayerWeights> w) : src(std::move(w)) {
  view.own.reserve(14);
  attn_norm = view(src->attn_norm);
  wq = view(src->wq), bq = view(src->bq);
  wk = view(src->wk), bk = view(src->bk);
  wv = view(src->wv), bv = view(src->bv);
  wo = view(src->wo), bo = view(src->bo);
  ffn_norm = view(src->ffn_norm);
  w_gate = view(src->w_gate), w_up = view(src->w_up), w_down = view(src->w_down), b_down = view(src->b_down);
}

template <class F>
ReferenceModel<F>::ReferenceModel(const WeightLoader& w) : W(w), A(w.arch()) {
  gview.own.reserve(3);
  tok_embd = gview(W.globals().tok_embd);
  out_norm = gview(W.globals().out_norm);
  output = gview(W.globals().output());
}

template <class F>
std::shared_ptr<const LayerW<F>> ReferenceModel<F>::layer(int l) {
  auto src = W.layer(l);
  if constexpr (std::is_same_v<F, float>) {
    return std::make_shared<const LayerW<F>>(std::move(src));
  } else {
    converted.resize(A.n_layer());
    if (!converted[l] || converted[l]->src != src) converted[l] = std::make_shared<const LayerW<F>>(std::move(src));
    return converted[l];
  }
}

template <class F>
typename ReferenceModel<F>::LayerMasks ReferenceModel<F>::layer_masks(const MaskSet* m, int l) const {
  const auto& s = A.layers[l];
  LayerMasks lm;
  lm.head_scale.assign(s.n_head, F(1));
  lm.ffn.assign(s.n_ff, F(1));
  if (!m) return lm;
  const int per = s.n_head / s.n_head_kv;
  for (int h = 0; h < s.n_head; ++h) lm.head_scale[h] = F(m->head[l][h] * m->kv[l][h / per]);
  for (int c = 0; c < s.n_ff; ++c) lm.ffn[c] = F(m->ffn[l][c]);
  lm.attn = F(m->attn[l]);
  lm.mlp = F(m->mlp[l]);
  return lm;
}

template <class F>
void ReferenceModel<F>::setup(int n_tokens) {
  T = n_tokens;
  kernels::rope_table(A.rope_inv_freq(), 0, T, cos_t, sin_t);
  const int slots = tbb::this_task_arena::max_concurrency();
  scratch_p.resize(slots), scratch_dp.resize(slots);
  for (int i = 0; i < slots; ++i) {
    scratch_p[i].resize(size_t(std::min(T, kAttnBlock)) * T);
    scratch_dp[i].resize(scratch_p[i].size());
  }
}

template <class F>
std::vector<double> ReferenceModel<F>::scaled(std::vector<double> v) const {
  for (double& x : v) x *= grad_scale2;
  return v;
}

template <class F>
void ReferenceModel<F>::add_moment(ActivationStats& st, const std::string& input, const F* x, int n) {
  if constexpr (std::is_same_v<F, float>) {
    st.accumulate_moment(input, x, T, n);
  } else {
    const std::vector<float> f(x, x + size_t(T) * n);
    st.accumulate_moment(input, f.data(), T, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <class F>
typename ReferenceModel<F>::Vec ReferenceModel<F>::embed(std::span<const int32_t> tokens) {
  const int D = A.n_embd;
  Vec x(size_t(T) * D);
  for (int t = 0; t < T; ++t) {
    const int id = tokens[t];
    if (id < 0 || id >= A.n_vocab) fail(ExitCode::InputData, "token id {} at position {} is outside the vocabulary ({})", id, t, A.n_vocab);
    std::copy_n(tok_embd + size_t(id) * D, D, x.data() + size_t(t) * D);
  }
  return x;
}

// Causal GQA attention, one task per head (each writes its own columns of o), in row blocks:
// P[r0:r1, 0:r1] = causal (sliding-window) softmax(scale q k^T), o[r0:r1] = P v.
template <class F>
void ReferenceModel<F>::attention(int l, Acts& a) {
  const auto& s = A.layers[l];
  const int hd = A.head_dim, nq = s.n_head, Q = nq * hd, KV = s.n_head_kv * hd, per = nq / s.n_head_kv;
  const F scale = F(1.0 / std::sqrt(double(hd)));
  par_for_balanced(nq, 2.0 * T * T * hd, [&](int h) {
    const int g = h / per;
    F* P = slot_p();
    for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
      const int r1 = std::min(T, r0 + kAttnBlock);
      kernels::attention_probs(P, a.q.data() + size_t(r0) * Q + size_t(h) * hd, Q, a.k.data() + size_t(g) * hd, KV,
                               r1 - r0, r0, r1, hd, scale, A.sliding_window);
      kernels::attention_apply(P, a.v.data() + size_t(g) * hd, KV, a.o.data() + size_t(r0) * Q + size_t(h) * hd, Q,
                               r1 - r0, r1, hd);
    }
  });
}

template <class F>
void ReferenceModel<F>::forward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a,
                                      ActivationStats* stats) {
  const auto& s = A.layers[l];
  const int D = A.n_embd, hd = A.head_dim, nq = s.n_head, nkv = s.n_head_kv, FF = s.n_ff;
  const int Q = nq * hd, KV = nkv * hd;
  const auto lm = layer_masks(masks, l);
  const size_t TD = size_t(T) * D, TF = size_t(T) * FF;
  a.xn1.resize(TD), a.rstd1.resize(T);
  a.q.resize(size_t(T) * Q), a.k.resize(size_t(T) * KV), a.v.resize(size_t(T) * KV);
  a.o.resize(size_t(T) * Q), a.att.resize(size_t(T) * Q), a.y_attn.resize(TD), a.x_mid.resize(TD);
  a.xn2.resize(TD), a.rstd2.resize(T);
  a.g.resize(TF), a.u.resize(TF), a.a.resize(TF), a.h.resize(TF), a.y_mlp.resize(TD);

  // Attention: x_mid = x_in + m_attn * o_proj(att), att_h = m_h m_kv(h) o_h,
  // o = attention(rope(q), rope(k), v), (q, k, v) = projections of rmsnorm(x_in).
  ops::rmsnorm(x_in, w.attn_norm, a.xn1.data(), a.rstd1.data(), T, D, A.rms_eps);
  ops::linear(a.xn1.data(), w.wq, w.bq, a.q.data(), T, D, Q);
  ops::linear(a.xn1.data(), w.wk, w.bk, a.k.data(), T, D, KV);
  ops::linear(a.xn1.data(), w.wv, w.bv, a.v.data(), T, D, KV);
  ops::rope(a.q.data(), T, nq, hd, cos_t, sin_t);
  ops::rope(a.k.data(), T, nkv, hd, cos_t, sin_t);
  attention(l, a);
  ops::scale_heads(a.o.data(), lm.head_scale.data(), a.att.data(), T, nq, hd);
  ops::linear(a.att.data(), w.wo, w.bo, a.y_attn.data(), T, Q, D);
  ops::add_branch(x_in, lm.attn, a.y_attn.data(), a.x_mid.data(), TD);

  // SwiGLU MLP: x_out = x_mid + m_mlp * down(h), h = m_c * silu(gate(xn2)) * up(xn2),
  // xn2 = rmsnorm(x_mid) (x_out: residual_out).
  ops::rmsnorm(a.x_mid.data(), w.ffn_norm, a.xn2.data(), a.rstd2.data(), T, D, A.rms_eps);
  ops::linear(a.xn2.data(), w.w_gate, (const F*)nullptr, a.g.data(), T, D, FF);
  ops::linear(a.xn2.data(), w.w_up, (const F*)nullptr, a.u.data(), T, D, FF);
  ops::swiglu(a.g.data(), a.u.data(), a.a.data(), T, FF);
  ops::scale_channels(a.a.data(), lm.ffn.data(), a.h.data(), T, FF);
  ops::linear(a.h.data(), w.w_down, w.b_down, a.y_mlp.data(), T, FF, D);

  if (stats) input_stats(l, a, *stats);
}

template <class F>
void ReferenceModel<F>::input_stats(int l, const Acts& a, ActivationStats& stats) {
  const auto& s = A.layers[l];
  const int D = A.n_embd, Q = s.n_head * A.head_dim, FF = s.n_ff;
  // One entry per weight matrix, from the input it reads (the table says which one).
  const auto inputs = std::map<Role, std::vector<double>>{{Role::AttnQ, ops::col_sum_sq(a.xn1.data(), T, D)},
                                                          {Role::AttnOut, ops::col_sum_sq(a.att.data(), T, Q)},
                                                          {Role::FfnGate, ops::col_sum_sq(a.xn2.data(), T, D)},
                                                          {Role::FfnDown, ops::col_sum_sq(a.h.data(), T, FF)}};
  const auto sums = std::map<Role, std::vector<double>>{{Role::AttnQ, ops::col_sum(a.xn1.data(), T, D)},
                                                        {Role::AttnOut, ops::col_sum(a.att.data(), T, Q)},
                                                        {Role::FfnGate, ops::col_sum(a.xn2.data(), T, D)},
                                                        {Role::FfnDown, ops::col_sum(a.h.data(), T, FF)}};
  for (const auto& k : arch::tensor_kinds())
    if (k.per_layer && k.weight_matrix()) {
      stats.accumulate(arch::hf_name(k, l), inputs.at(k.input_of), T);
      stats.accumulate_sum(arch::hf_name(k, l), sums.at(k.input_of), T);
    }
  if (stats.second_moments) {
    const std::pair<Role, std::pair<const F*, int>> moment_inputs[] = {
        {Role::AttnQ, {a.xn1.data(), D}}, {Role::AttnOut, {a.att.data(), Q}}, {Role::FfnGate, {a.xn2.data(), D}}, {Role::FfnDown, {a.h.data(), FF}}};
    for (const auto& [role, in] : moment_inputs) add_moment(stats, arch::hf_name(role, l), in.first, in.second);
  }
}

template <class F>
void ReferenceModel<F>::residual_out(const Acts& a, F m_mlp, F* x_out) {
  ops::add_branch(a.x_mid.data(), m_mlp, a.y_mlp.data(), x_out, a.x_mid.size());
}

template <class F>
typename ReferenceModel<F>::Vec ReferenceModel<F>::run_layers(Vec x, const MaskSet* masks, ActivationStats* stats,
                                                              std::vector<Vec>* checkpoints) {
  Acts& a = acts;
  for (int l = 0; l < A.n_layer(); ++l) {
    const auto held = layer(l);  // keeps the layer's weights alive for this iteration
    const LayerW<F>& w = *held;
    forward_layer(l, w, x.data(), masks, a, stats);
    if (checkpoints) (*checkpoints)[l] = x;
    residual_out(a, layer_masks(masks, l).mlp, x.data());
  }
  return x;
}

template <class F>
typename ReferenceModel<F>::Vec ReferenceModel<F>::final_norm(const Vec& x, Vec& rstd, ActivationStats* stats) {
  const int D = A.n_embd;
  Vec xf(x.size());
  rstd.resize(T);
  ops::rmsnorm(x.data(), out_norm, xf.data(), rstd.data(), T, D, A.rms_eps);
  if (stats) {
    stats->accumulate(arch::hf_name(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1), ops::col_sum_sq(xf.data(), T, D), T);
    if (stats->second_moments) add_moment(*stats, arch::hf_name(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1), xf.data(), D);
  }
  return xf;
}

template <class F>
LossResult ReferenceModel<F>::head_loss(const Vec& xf, std::span<const int32_t> tokens, int first, std::vector<double>* nll,
                                        Vec* dxf, ActivationStats* stats) {
  const int D = A.n_embd, V = A.n_vocab, n = T - 1 - first;
  LossResult r;
  r.count = n;
  if (nll) nll->assign(n, 0.0);
  if (dxf) dxf->assign(size_t(T) * D, F(0));
  if (n <= 0) return r;
  constexpr int kRows = 64;
  Vec& lg = logit_rows;
  lg.resize(size_t(kRows) * V);
  std::vector<double> row_nll(kRows);
  for (int p0 = first; p0 < T - 1; p0 += kRows) {
    const int rows = std::min(kRows, T - 1 - p0);
    ops::linear(xf.data() + size_t(p0) * D, output, (const F*)nullptr, lg.data(), rows, D, V);
    par_for_balanced(rows, 20.0 * V, [&](int i) {
      F* z = lg.data() + size_t(i) * V;
      const int target = tokens[p0 + i + 1];
      F mx = z[0];
      for (int j = 1; j < V; ++j) mx = std::max(mx, z[j]);
      double sum = 0;
      for (int j = 0; j < V; ++j) sum += std::exp(double(z[j] - mx));
      const double lse = double(mx) + std::log(sum);
      row_nll[i] = lse - double(z[target]);
      if (dxf) {  // d mean / d logits = (softmax - onehot) / n
        const double inv_n = 1.0 / n;
        for (int j = 0; j < V; ++j) z[j] = F(std::exp(double(z[j]) - lse) * inv_n);
        z[target] -= F(inv_n);
      }
    });
    for (int i = 0; i < rows; ++i) {
      r.nll_sum += row_nll[i];
      if (nll) (*nll)[p0 - first + i] = row_nll[i];
    }
    if (dxf) ops::linear_backward(lg.data(), output, dxf->data() + size_t(p0) * D, rows, D, V, false);
    if (dxf && stats)  // dL/dlogits of these rows: the output projection's row factor
      stats->accumulate_output_grad(arch::hf_name(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1),
                                    scaled(ops::col_sum_sq(lg.data(), rows, V)), rows);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Backward

template <class F>
void ReferenceModel<F>::final_norm_backward(const Vec& x, const Vec& rstd, const Vec& dxf, Vec& dx) {
  ops::rmsnorm_backward(x.data(), out_norm, rstd.data(), dxf.data(), dx.data(), T, A.n_embd);
}

// The forward's row blocks again, from the back: o = P v gives dP and dv, the softmax and
// S = scale q k^T give dq and dk. The heads of a group add into the same dk / dv columns, so
// one task per KV group.
template <class F>
void ReferenceModel<F>::attention_backward(int l, const Acts& a, const Vec& dout, Vec& dq, Vec& dk, Vec& dv) {
  const auto& s = A.layers[l];
  const int hd = A.head_dim, nq = s.n_head, nkv = s.n_head_kv, Q = nq * hd, KV = nkv * hd, per = nq / nkv;
  std::fill(dk.begin(), dk.end(), F(0));  // accumulated over the heads of a group
  std::fill(dv.begin(), dv.end(), F(0));  // (dq is written block by block)
  const F scale = F(1.0 / std::sqrt(double(hd)));
  par_for_balanced(nkv, 4.0 * per * T * T * hd, [&](int g) {
    F* P = slot_p();
    F* dP = slot_dp();
    const F* kg = a.k.data() + size_t(g) * hd;
    const F* vg = a.v.data() + size_t(g) * hd;
    for (int h = g * per; h < (g + 1) * per; ++h) {
      const F* qh = a.q.data() + size_t(h) * hd;
      const F* doh = dout.data() + size_t(h) * hd;
      for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
        const int r1 = std::min(T, r0 + kAttnBlock), rows = r1 - r0;
        kernels::attention_probs(P, qh + size_t(r0) * Q, Q, kg, KV, rows, r0, r1, hd, scale, A.sliding_window);
        kernels::attention_apply_backward(P, vg, KV, doh + size_t(r0) * Q, Q, dP, dv.data() + size_t(g) * hd, KV, rows, r1, hd);
        kernels::attention_probs_backward(P, dP, qh + size_t(r0) * Q, Q, kg, KV, dq.data() + size_t(r0) * Q + size_t(h) * hd,
                                          Q, dk.data() + size_t(g) * hd, KV, rows, r1, hd, scale);
      }
    }
  });
}

template <class F>
void ReferenceModel<F>::backward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a, Vec& dx,
                                       MaskSet& grads, ActivationStats* stats) {
  const auto& s = A.layers[l];
  const int D = A.n_embd, hd = A.head_dim, nq = s.n_head, nkv = s.n_head_kv, FF = s.n_ff;
  const int Q = nq * hd, KV = nkv * hd, per = nq / nkv;
  const auto lm = layer_masks(masks, l);
  const size_t TD = size_t(T) * D, TF = size_t(T) * FF;
  auto& [dy, dh, dg, du, dxn, datt, dq, dk, dv] = grad_bufs;
  dy.resize(TD), dh.resize(TF), dg.resize(TF), du.resize(TF), dxn.resize(TD), datt.resize(size_t(T) * Q);
  dq.resize(size_t(T) * Q), dk.resize(size_t(T) * KV), dv.resize(size_t(T) * KV);
  // Output gradients of the layer's weights (the Fisher estimate's row factor).
  const auto out_grad = [&](Role r, const Vec& g, int N) {
    if (stats) stats->accumulate_output_grad(arch::hf_name(r, l), scaled(ops::col_sum_sq(g.data(), T, N)), T);
  };

  // MLP, from x_out = x_mid + m_mlp * y_mlp back to x_mid (dx passes through the residual).
  grads.mlp[l] += ops::add_branch_backward(dx.data(), lm.mlp, a.y_mlp.data(), dy.data(), TD);
  out_grad(Role::FfnDown, dy, D);
  ops::linear_backward(dy.data(), w.w_down, dh.data(), T, FF, D, false);
  ops::scale_channels_backward(dh.data(), a.a.data(), lm.ffn.data(), T, FF, grads.ffn[l].data());  // dh -> da
  ops::swiglu_backward(a.g.data(), a.u.data(), dh.data(), dg.data(), du.data(), T, FF);
  out_grad(Role::FfnGate, dg, FF);
  out_grad(Role::FfnUp, du, FF);
  ops::linear_backward(dg.data(), w.w_gate, dxn.data(), T, D, FF, false);
  ops::linear_backward(du.data(), w.w_up, dxn.data(), T, D, FF, true);
  ops::rmsnorm_backward(a.x_mid.data(), w.ffn_norm, a.rstd2.data(), dxn.data(), dx.data(), T, D);

  // Attention, from x_mid = x_in + m_attn * y_attn back to x_in.
  grads.attn[l] += ops::add_branch_backward(dx.data(), lm.attn, a.y_attn.data(), dy.data(), TD);
  out_grad(Role::AttnOut, dy, D);
  ops::linear_backward(dy.data(), w.wo, datt.data(), T, Q, D, false);
  std::vector<double> dscale(nq);  // dL/d(m_h m_kv(h)), then by the product rule to each mask
  ops::scale_heads_backward(datt.data(), a.o.data(), lm.head_scale.data(), T, nq, hd, dscale.data());  // datt -> do
  for (int h = 0; h < nq; ++h) {
    const double mh = masks ? masks->head[l][h] : 1.0, mg = masks ? masks->kv[l][h / per] : 1.0;
    grads.head[l][h] += mg * dscale[h];
    grads.kv[l][h / per] += mh * dscale[h];
  }
  attention_backward(l, a, datt, dq, dk, dv);
  ops::rope_backward(dq.data(), T, nq, hd, cos_t, sin_t);
  ops::rope_backward(dk.data(), T, nkv, hd, cos_t, sin_t);
  out_grad(Role::AttnQ, dq, Q);
  out_grad(Role::AttnK, dk, KV);
  out_grad(Role::AttnV, dv, KV);
  ops::linear_backward(dq.data(), w.wq, dxn.data(), T, D, Q, false);
  ops::linear_backward(dk.data(), w.wk, dxn.data(), T, D, KV, true);
  ops::linear_backward(dv.data(), w.wv, dxn.data(), T, D, KV, true);
  ops::rmsnorm_backward(x_in, w.attn_norm, a.rstd1.data(), dxn.data(), dx.data(), T, D);
}

template <class F>
void ReferenceModel<F>::embedding_stats(std::span<const int32_t> tokens, const Vec& dx, ActivationStats* stats) {
  if (!stats || A.tie_embeddings) return;
  std::vector<double> counts(A.n_vocab, 0.0);
  for (int32_t t : tokens) counts[t] += 1;
  const std::string name = arch::hf_name(Role::TokenEmbd, -1);
  stats->accumulate_output_grad(name, counts, T);
  stats->accumulate(name, scaled(ops::col_sum_sq(dx.data(), T, A.n_embd)), T);
}

// ---------------------------------------------------------------------------------------------
// Whole chunks

template <class F>
std::vector<float> ReferenceModel<F>::logits(std::span<const int32_t> tokens, const MaskSet* masks) {
  setup(static_cast<int>(tokens.size()));
  Vec rstd;
  Vec xf = final_norm(run_layers(embed(tokens), masks, nullptr, nullptr), rstd, nullptr);
  Vec out(size_t(T) * A.n_vocab);
  ops::linear(xf.data(), output, (const F*)nullptr, out.data(), T, A.n_embd, A.n_vocab);
  return std::vector<float>(out.begin(), out.end());
}

template <class F>
LossResult ReferenceModel<F>::loss(std::span<const int32_t> tokens, int first, const MaskSet* masks, ActivationStats* stats,
                                   std::vector<double>* nll) {
  setup(static_cast<int>(tokens.size()));
  Vec rstd;
  Vec xf = final_norm(run_layers(embed(tokens), masks, stats, nullptr), rstd, stats);
  return head_loss(xf, tokens, first, nll, nullptr);
}

// The forward keeps each layer's input (checkpoint); the backward recomputes the layer from it.
template <class F>
LossResult ReferenceModel<F>::loss_and_grads(std::span<const int32_t> tokens, int first, const MaskSet& masks, MaskSet& grads,
                                             ActivationStats* stats) {
  setup(static_cast<int>(tokens.size()));
  std::vector<Vec> checkpoints(A.n_layer());
  Vec x = run_layers(embed(tokens), &masks, stats, &checkpoints);
  Vec rstd, dxf;
  Vec xf = final_norm(x, rstd, stats);
  grad_scale2 = double(T - 1 - first) * double(T - 1 - first);
  LossResult r = head_loss(xf, tokens, first, nullptr, &dxf, stats);
  grads = MaskSet::filled(A, 0.0);
  Vec dx(x.size(), F(0));
  final_norm_backward(x, rstd, dxf, dx);
  Acts& a = acts;
  for (int l = A.n_layer() - 1; l >= 0; --l) {
    const auto held = layer(l);  // keeps the layer's weights alive for this iteration
    const LayerW<F>& w = *held;
    forward_layer(l, w, checkpoints[l].data(), &masks, a, nullptr);  // recompute from the checkpoint
    backward_layer(l, w, checkpoints[l].data(), &masks, a, dx, grads, stats);
    Vec().swap(checkpoints[l]);
  }
  embedding_stats(tokens, dx, stats);
  return r;
}

template struct View<float>;
template struct View<double>;
template struct LayerW<float>;
template struct LayerW<double>;
template struct ReferenceModel<float>;
template struct ReferenceModel<double>;

}  // namespace squish
