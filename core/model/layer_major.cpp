// The layer-major score pass: every chunk's forward one layer at a time, then the loss head of
// every chunk, then every chunk's backward one layer at a time from the top, so each layer's
// weights are requested twice in all; checkpoints and gradients live in two spill stores.
#include "core/model/layer_major.hpp"

#include "core/io/spill_store.hpp"

#include <algorithm>
#include <array>
#include <iterator>

namespace squish {

// Blocks: checkpoint (l, c) is the input of layer l of chunk c (l = L: the last residual), and
// each chunk's dL/dx while the backward walks down the layers. Gradients are kept first when
// memory is short: each is read and written once per layer, a checkpoint only twice in all.
template <class F>
LossResult layer_major_pass(ReferenceModel<F>& model, std::span<const int32_t> tokens, int n_ctx, int c0, int c1,
                            const MaskSet& masks, MaskImportance& importance, ActivationStats* stats,
                            const LayerMajorOptions& o, LayerMajorReport* rep) {
  using Vec = typename ReferenceModel<F>::Vec;
  model.setup(n_ctx);
  const int L = model.A.n_layer(), n = c1 - c0, T = model.T;
  const size_t TD = size_t(T) * model.A.n_embd;
  const uint64_t dx_memory = std::min<uint64_t>(o.activation_memory, uint64_t(n) * TD * sizeof(F));
  SpillStore dxs(TD * sizeof(F), n, dx_memory, o.scratch_dir);
  SpillStore cks(TD * sizeof(F), size_t(L + 1) * n, o.activation_memory - dx_memory, o.scratch_dir);
  const auto ck = [&](int l, int c) { return size_t(l) * n + c; };
  const auto chunk = [&](int c) { return tokens.subspan(size_t(c0 + c) * n_ctx, n_ctx); };
  const auto put = [](SpillStore& s, size_t id, const Vec& v) { s.put(id, v.data()); };
  const auto get = [](const SpillStore& s, size_t id, Vec& v) { s.get(id, v.data()); };
  const uint64_t steps = uint64_t(n) * (2 * L + 1);
  uint64_t done = 0;
  const auto step = [&] { if (o.progress) o.progress(++done, steps); };

  // The top layers whose activations fit o.kept_memory keep them for their backward.
  constexpr size_t kKept = std::size(ReferenceModel<F>::kBackwardActs);
  using Kept = std::array<Vec, kKept>;
  int first_kept = L;
  uint64_t kept_bytes = 0;
  while (first_kept > 0) {
    const uint64_t b = uint64_t(n) * model.backward_acts_values(first_kept - 1) * sizeof(F);
    if (kept_bytes + b > o.kept_memory) break;
    kept_bytes += b, --first_kept;
  }
  std::vector<std::vector<Kept>> kept(static_cast<size_t>(L));

  // Forward, layer by layer over the chunks.
  Vec x(TD), dx(TD);
  for (int c = 0; c < n; ++c) put(cks, ck(0, c), model.embed(chunk(c)));
  auto& a = model.acts;
  for (int l = 0; l < L; ++l) {
    const auto held = model.layer(l);  // this layer's weights, for every chunk
    const F m_mlp = model.layer_masks(&masks, l).mlp;
    for (int c = 0; c < n; ++c) {
      get(cks, ck(l, c), x);
      model.forward_layer(l, *held, x.data(), &masks, a, stats);
      if (l >= first_kept) {
        Kept& k = kept[size_t(l)].emplace_back();
        for (size_t i = 0; i < kKept; ++i) k[i] = a.*ReferenceModel<F>::kBackwardActs[i];
      }
      model.residual_out(a, m_mlp, x.data());
      put(cks, ck(l + 1, c), x);
      step();
    }
    if (o.forward_done) o.forward_done(l);
  }

  // Loss head of every chunk: its dL/dx at the top.
  model.grad_scale2 = double(T - 1) * double(T - 1);
  LossResult r;
  Vec rstd, dxf;
  for (int c = 0; c < n; ++c) {
    get(cks, ck(L, c), x);
    cks.drop(ck(L, c));
    const Vec xf = model.final_norm(x, rstd, stats);
    const LossResult lr = model.head_loss(xf, chunk(c), 0, nullptr, &dxf, stats);
    r.nll_sum += lr.nll_sum, r.count += lr.count;
    std::fill(dx.begin(), dx.end(), F(0));
    model.final_norm_backward(x, rstd, dxf, dx);
    put(dxs, c, dx);
    step();
  }
  if (o.forward_done) o.forward_done(L);

  // Backward, layer by layer from the top, recomputing each layer from its checkpoint.
  MaskSet grads = MaskSet::filled(model.A, 0.0);
  for (int l = L - 1; l >= 0; --l) {
    const auto held = model.layer(l);
    for (int c = 0; c < n; ++c) {
      get(cks, ck(l, c), x);
      get(dxs, c, dx);
      std::fill(grads.head[l].begin(), grads.head[l].end(), 0.0);
      std::fill(grads.kv[l].begin(), grads.kv[l].end(), 0.0);
      std::fill(grads.ffn[l].begin(), grads.ffn[l].end(), 0.0);
      grads.attn[l] = grads.mlp[l] = 0.0;
      if (l >= first_kept) {  // the forward's activations back in place; a's buffers go
        for (size_t i = 0; i < kKept; ++i) std::swap(a.*ReferenceModel<F>::kBackwardActs[i], kept[size_t(l)][size_t(c)][i]);
        kept[size_t(l)][size_t(c)] = {};
      } else {
        model.forward_layer(l, *held, x.data(), &masks, a, nullptr);
      }
      model.backward_layer(l, *held, x.data(), &masks, a, dx, grads, stats);
      importance.add_layer(l, masks, grads);
      put(dxs, c, dx);
      cks.drop(ck(l, c));
      step();
    }
  }
  if (stats && !model.A.tie_embeddings)  // as loss_and_grads: the embedding's statistics
    for (int c = 0; c < n; ++c) {
      get(dxs, c, dx);
      model.embedding_stats(chunk(c), dx, stats);
    }
  importance.add_chunks(n);
  if (rep) {
    rep->activation_memory_bytes = dxs.memory_bytes() + cks.memory_bytes();
    rep->scratch_bytes_peak = dxs.scratch_bytes_peak() + cks.scratch_bytes_peak();
    rep->scratch_bytes_written = dxs.scratch_bytes_written() + cks.scratch_bytes_written();
    rep->scratch_bytes_read = dxs.scratch_bytes_read() + cks.scratch_bytes_read();
    rep->layers_not_recomputed = L - first_kept;
    rep->kept_activation_bytes = kept_bytes;
  }
  return r;
}

template LossResult layer_major_pass(ReferenceModel<float>&, std::span<const int32_t>, int, int, int, const MaskSet&,
                                     MaskImportance&, ActivationStats*, const LayerMajorOptions&, LayerMajorReport*);
template LossResult layer_major_pass(ReferenceModel<double>&, std::span<const int32_t>, int, int, int, const MaskSet&,
                                     MaskImportance&, ActivationStats*, const LayerMajorOptions&, LayerMajorReport*);

}  // namespace squish
