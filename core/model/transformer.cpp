// Transformer: the public face of the float reference model. Checks its arguments, runs a
// ReferenceModel<float> (or <double> for Precision::F64) inside its own TBB arena, and sizes the
// work buffers for memory bounds; accumulate_mask_importance scores a stream chunk by chunk.
#include "core/model/transformer.hpp"

#include "core/base/error.hpp"
#include "core/model/layer_major.hpp"
#include "core/model/reference_model.hpp"

#include <tbb/info.h>
#include <tbb/task_arena.h>

#include <algorithm>

namespace squish {

struct Transformer::Impl {
  tbb::task_arena arena;
  int threads;
  ReferenceModel<float> f32;
  std::unique_ptr<ReferenceModel<double>> f64;
  Impl(const WeightLoader& w, int n) : arena(n), threads(n), f32(w) {}

  template <class Fn>
  auto run(Fn&& fn) {
    return arena.execute(std::forward<Fn>(fn));
  }
};

namespace {
int thread_count(int requested) {
  // All the cores this process may run on (its affinity mask: one per rank under mpirun).
  return requested > 0 ? requested : std::max(1, tbb::info::default_concurrency());
}
}  // namespace

Transformer::Transformer(std::shared_ptr<const WeightLoader> weights, TransformerOptions opt)
    : weights_(std::move(weights)), opt_(opt) {
  if (!weights_) fail(ExitCode::Runtime, "transformer: no weights");
  weights_->arch().validate("transformer");
  for (int l = 0; l < weights_->arch().n_layer(); ++l)  // the float model has no empty layers
    if (weights_->arch().layers[l].n_head <= 0 || weights_->arch().layers[l].n_ff <= 0)
      fail(ExitCode::InputData, "transformer: layer {} has no attention or no MLP", l);
  const int n = thread_count(opt_.threads);
  impl_ = std::make_unique<Impl>(*weights_, n);
  if (opt_.precision == Precision::F64) impl_->f64 = std::make_unique<ReferenceModel<double>>(*weights_);
}

Transformer::~Transformer() = default;

namespace {
void check_masks(const ModelArch& a, const MaskSet& m) {
  bool ok = m.head.size() == size_t(a.n_layer()) && m.kv.size() == m.head.size() && m.ffn.size() == m.head.size() &&
            m.attn.size() == m.head.size() && m.mlp.size() == m.head.size();
  for (int l = 0; ok && l < a.n_layer(); ++l)
    ok = m.head[l].size() == size_t(a.layers[l].n_head) && m.kv[l].size() == size_t(a.layers[l].n_head_kv) &&
         m.ffn[l].size() == size_t(a.layers[l].n_ff);
  if (!ok) fail(ExitCode::Runtime, "transformer: mask set does not match the architecture");
}
void check_tokens(std::span<const int32_t> tokens, int first) {
  if (tokens.empty()) fail(ExitCode::Runtime, "transformer: empty token sequence");
  if (first < 0 || first >= static_cast<int>(tokens.size()))
    fail(ExitCode::Runtime, "transformer: first scored position {} outside the {} tokens", first, tokens.size());
}
}  // namespace

std::vector<float> Transformer::logits(std::span<const int32_t> tokens, const MaskSet* masks) {
  check_tokens(tokens, 0);
  if (masks) check_masks(arch(), *masks);
  return impl_->run([&] { return impl_->f64 ? impl_->f64->logits(tokens, masks) : impl_->f32.logits(tokens, masks); });
}

LossResult Transformer::loss(std::span<const int32_t> tokens, int first, const MaskSet* masks, ActivationStats* stats,
                             std::vector<double>* nll) {
  check_tokens(tokens, first);
  if (masks) check_masks(arch(), *masks);
  return impl_->run([&] {
    return impl_->f64 ? impl_->f64->loss(tokens, first, masks, stats, nll) : impl_->f32.loss(tokens, first, masks, stats, nll);
  });
}

LossResult Transformer::loss_and_mask_grads(std::span<const int32_t> tokens, int first, const MaskSet& masks,
                                            MaskSet& grads, ActivationStats* stats) {
  check_tokens(tokens, first);
  check_masks(arch(), masks);
  return impl_->run([&] {
    return impl_->f64 ? impl_->f64->loss_and_grads(tokens, first, masks, grads, stats)
                      : impl_->f32.loss_and_grads(tokens, first, masks, grads, stats);
  });
}

LossResult Transformer::mask_importance_by_layer(std::span<const int32_t> tokens, int n_ctx, int c0, int c1,
                                                 MaskImportance& importance, ActivationStats* stats, const LayerMajorOptions& opt,
                                                 LayerMajorReport* report) {
  if (n_ctx < 2) fail(ExitCode::Usage, "mask importance: context {} is too short", n_ctx);
  if (c0 < 0 || c1 < c0 || size_t(c1) * size_t(n_ctx) > tokens.size())
    fail(ExitCode::Runtime, "mask importance: chunks [{}, {}) of {} tokens are outside the {} tokens", c0, c1, n_ctx, tokens.size());
  if (c1 == c0) return {};
  check_tokens(tokens.subspan(size_t(c0) * n_ctx, size_t(c1 - c0) * n_ctx), 0);
  const MaskSet ones = MaskSet::ones(arch());
  return impl_->run([&] {
    return impl_->f64 ? layer_major_pass(*impl_->f64, tokens, n_ctx, c0, c1, ones, importance, stats, opt, report)
                      : layer_major_pass(impl_->f32, tokens, n_ctx, c0, c1, ones, importance, stats, opt, report);
  });
}

uint64_t Transformer::work_bytes(const ModelArch& a, int n_ctx, int threads) {
  const uint64_t T = uint64_t(n_ctx), D = a.n_embd;
  // Each buffer keeps the largest size any layer gave it (pruned layers differ).
  uint64_t Q = 0, KV = 0, FF = 0;
  for (const auto& s : a.layers) {
    Q = std::max(Q, uint64_t(s.n_head) * a.head_dim);
    KV = std::max(KV, uint64_t(s.n_head_kv) * a.head_dim);
    FF = std::max<uint64_t>(FF, s.n_ff);
  }
  // ReferenceModel's Acts: xn1 q k v o att y_attn x_mid xn2 g u a h y_mlp; Grads: dy dh dg du dxn
  // datt dq dk dv (reference_model.hpp).
  const uint64_t per_token = (5 * D + 3 * Q + 2 * KV + 4 * FF + 2) + (2 * D + 3 * FF + 2 * Q + 2 * KV);
  const uint64_t attention = uint64_t(thread_count(threads)) * 2 * uint64_t(std::min<int>(n_ctx, 128)) * T;
  const uint64_t head = 64 * uint64_t(a.n_vocab) + 4 * T * D;  // logit rows; x, dx, xf, dxf
  const uint64_t rope = T * a.head_dim;
  return (per_token * T + attention + head + rope) * sizeof(float);
}

LossResult accumulate_mask_importance(Transformer& model, std::span<const int32_t> tokens, int n_ctx,
                                      MaskImportance& importance, ActivationStats* stats, int max_chunks) {
  if (n_ctx < 2) fail(ExitCode::Usage, "mask importance: context {} is too short", n_ctx);
  int n_chunks = static_cast<int>(tokens.size() / n_ctx);
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  const MaskSet ones = MaskSet::ones(model.arch());
  MaskSet grads;
  LossResult total;
  for (int c = 0; c < n_chunks; ++c) {
    auto r = model.loss_and_mask_grads(tokens.subspan(size_t(c) * n_ctx, n_ctx), 0, ones, grads, stats);
    importance.add(ones, grads);
    total.nll_sum += r.nll_sum;
    total.count += r.count;
  }
  return total;
}

}  // namespace squish
