// Mask gradients of the reference transformer: analytic backward vs central finite
// differences (stories260K, Llama arch), first-order predictions of small mask changes,
// activation statistics, and the f32 / f64 paths against each other; and each op's backward in
// kernels.hpp against central differences of its forward.
#include "core/model/kernels.hpp"
#include "core/model/perplexity.hpp"
#include "core/model/transformer.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <random>

using namespace squish;

namespace {

std::shared_ptr<SafetensorsWeights> stories() {
  static auto w = SafetensorsWeights::open(test::shared("models/stories260K"));
  return w;
}

std::vector<int32_t> stories_tokens(size_t n, size_t offset = 0) {
  auto ids = read_token_ids(test::shared("reference/tokens/stories260K.TinyStories-valid.sample.ids"));
  return std::vector<int32_t>(ids.begin() + offset, ids.begin() + offset + n);
}

// Masks away from 1 so the products m_head * m_kv and the channel masks are exercised.
MaskSet jittered(const ModelArch& a, unsigned seed) {
  MaskSet m = MaskSet::ones(a);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.7, 1.3);
  m.for_each([&](double& v) { v = u(rng); });
  return m;
}

struct Flat {
  std::vector<double*> ptr;
  std::vector<std::string> label;
};
Flat flat(MaskSet& m) {
  Flat f;
  for (size_t l = 0; l < m.head.size(); ++l) {
    for (size_t i = 0; i < m.head[l].size(); ++i) f.ptr.push_back(&m.head[l][i]), f.label.push_back(fmt::format("head[{}][{}]", l, i));
    for (size_t i = 0; i < m.kv[l].size(); ++i) f.ptr.push_back(&m.kv[l][i]), f.label.push_back(fmt::format("kv[{}][{}]", l, i));
    for (size_t i = 0; i < m.ffn[l].size(); ++i) f.ptr.push_back(&m.ffn[l][i]), f.label.push_back(fmt::format("ffn[{}][{}]", l, i));
    f.ptr.push_back(&m.attn[l]), f.label.push_back(fmt::format("attn[{}]", l));
    f.ptr.push_back(&m.mlp[l]), f.label.push_back(fmt::format("mlp[{}]", l));
  }
  return f;
}

}  // namespace

TEST(ModelGrad, AnalyticMatchesFiniteDifferences) {
  SQUISH_REQUIRE_SHARED();
  auto w = stories();
  const auto tokens = stories_tokens(48);
  Transformer f64(w, {.threads = 2, .precision = Precision::F64});
  Transformer f32(w, {.threads = 2});

  MaskSet masks = jittered(w->arch(), 7);
  MaskSet g64, g32;
  const int first = 3;  // also checks that unscored positions still carry gradient through attention
  const double l64 = f64.loss_and_mask_grads(tokens, first, masks, g64).mean();
  const double l32 = f32.loss_and_mask_grads(tokens, first, masks, g32).mean();
  EXPECT_NEAR(l64, l32, 1e-5 * l64);
  EXPECT_DOUBLE_EQ(l64, f64.loss(tokens, first, &masks).mean());  // the same forward

  // Central differences on the exact (double) loss: truncation O(h^2) ~ 1e-9, rounding ~ 1e-12.
  MaskSet probe = masks;
  Flat p = flat(probe);
  Flat a64 = flat(g64), a32 = flat(g32);
  const double h = 1e-4;
  double gmax = 0;
  for (double* g : a64.ptr) gmax = std::max(gmax, std::fabs(*g));
  ASSERT_GT(gmax, 1e-3);
  int checked = 0, checked32 = 0;
  double worst64 = 0, worst32 = 0;
  for (size_t i = 0; i < p.ptr.size(); ++i) {
    const double m0 = *p.ptr[i];
    *p.ptr[i] = m0 + h;
    const double lp = f64.loss(tokens, first, &probe).mean();
    *p.ptr[i] = m0 - h;
    const double lm = f64.loss(tokens, first, &probe).mean();
    *p.ptr[i] = m0;
    const double fd = (lp - lm) / (2 * h);
    const double g = *a64.ptr[i], gf = *a32.ptr[i];
    // Every gradient, tiny or not, must agree in absolute terms.
    EXPECT_NEAR(g, fd, 1e-7 * gmax + 1e-9) << p.label[i];
    if (std::fabs(fd) > 1e-4 * gmax) {
      const double rel = std::fabs(g - fd) / std::fabs(fd);
      worst64 = std::max(worst64, rel);
      EXPECT_LT(rel, 1e-5) << p.label[i] << " analytic " << g << " fd " << fd;
      ++checked;
    }
    // The float32 backward (what the score stage runs) against the same differences.
    if (std::fabs(fd) > 1e-2 * gmax) {
      const double rel = std::fabs(gf - fd) / std::fabs(fd);
      worst32 = std::max(worst32, rel);
      EXPECT_LT(rel, 1e-3) << p.label[i] << " f32 analytic " << gf << " fd " << fd;
      ++checked32;
    }
  }
  EXPECT_GT(checked, static_cast<int>(p.ptr.size()) / 2);
  EXPECT_GT(checked32, 100);
  std::printf("%zu masks: f64 worst rel err %.2e over %d, f32 worst %.2e over %d\n", p.ptr.size(), worst64, checked,
              worst32, checked32);
}

TEST(ModelGrad, SmallMaskChangeFollowsFirstOrder) {
  SQUISH_REQUIRE_SHARED();
  auto w = stories();
  const auto tokens = stories_tokens(256, 1000);
  Transformer model(w, {.threads = 2});
  const MaskSet ones = MaskSet::ones(w->arch());
  MaskSet g;
  const double base = model.loss_and_mask_grads(tokens, 0, ones, g).mean();
  // The heads and kv groups with the largest gradients; m = 1 - eps.
  struct Item { double* mask; double grad; };
  MaskSet probe = ones;
  std::vector<Item> items;
  for (size_t l = 0; l < g.head.size(); ++l) {
    for (size_t h = 0; h < g.head[l].size(); ++h) items.push_back({&probe.head[l][h], g.head[l][h]});
    for (size_t k = 0; k < g.kv[l].size(); ++k) items.push_back({&probe.kv[l][k], g.kv[l][k]});
  }
  std::sort(items.begin(), items.end(), [](auto& a, auto& b) { return std::fabs(a.grad) > std::fabs(b.grad); });
  const double eps = 0.02;
  for (int i = 0; i < 6; ++i) {
    *items[i].mask = 1 - eps;
    const double delta = model.loss(tokens, 0, &probe).mean() - base;
    *items[i].mask = 1;
    const double predicted = -eps * items[i].grad;
    EXPECT_NEAR(delta, predicted, 0.1 * std::fabs(predicted)) << "mask " << i << " grad " << items[i].grad;
  }
  // Removing a head entirely changes the loss in the direction the gradient says, roughly.
  *items[0].mask = 0;
  const double removed = model.loss(tokens, 0, &probe).mean() - base;
  EXPECT_GT(removed * -items[0].grad, 0.0);
}

TEST(ModelGrad, F32AndF64Agree) {
  SQUISH_REQUIRE_SHARED();
  auto w = stories();
  const auto tokens = stories_tokens(200);
  Transformer f64(w, {.threads = 2, .precision = Precision::F64});
  Transformer f32(w, {.threads = 2});
  auto a = f32.logits(tokens), b = f64.logits(tokens);
  ASSERT_EQ(a.size(), tokens.size() * 512);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  EXPECT_LT(worst, 1e-3);
  // loss() is the log-softmax of logits() at the scored positions.
  std::vector<double> nll;
  f32.loss(tokens, 100, nullptr, nullptr, &nll);
  ASSERT_EQ(nll.size(), tokens.size() - 101);
  for (size_t p = 100; p + 1 < tokens.size(); p += 33) {
    const float* z = a.data() + p * 512;
    double mx = *std::max_element(z, z + 512), s = 0;
    for (int j = 0; j < 512; ++j) s += std::exp(double(z[j]) - mx);
    EXPECT_NEAR(nll[p - 100], mx + std::log(s) - z[tokens[p + 1]], 1e-4);
  }
}

TEST(ModelGrad, ActivationStatsMatchLayerZeroInput) {
  SQUISH_REQUIRE_SHARED();
  auto w = stories();
  const auto tokens = stories_tokens(100);
  Transformer model(w, {.threads = 2});
  ActivationStats stats;
  model.loss(tokens, 0, nullptr, &stats);
  MaskSet g;
  model.loss_and_mask_grads(tokens, 0, MaskSet::ones(w->arch()), g, &stats);  // the backward adds the same again
  const auto& a = w->arch();
  EXPECT_EQ(stats.entries.size(), size_t(a.n_layer()) * 7 + 1);
  for (auto& [name, e] : stats.entries) EXPECT_EQ(e.count, 200) << name;
  // Layer 0's q/k/v input is rmsnorm(embedding) * weight: recompute it here.
  const int D = a.n_embd;
  auto layer0 = w->layer(0);
  std::vector<double> expect(D, 0.0);
  for (int32_t id : tokens) {
    const float* e = w->globals().tok_embd.data() + size_t(id) * D;
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(e[d]) * e[d];
    const double r = 1 / std::sqrt(ss / D + a.rms_eps);
    for (int d = 0; d < D; ++d) expect[d] += std::pow(layer0->attn_norm[d] * e[d] * r, 2);
  }
  for (const char* n : {"q_proj", "k_proj", "v_proj"}) {
    auto mean = stats.entries.at(fmt::format("model.layers.0.self_attn.{}.weight", n)).mean();
    ASSERT_EQ(mean.size(), size_t(D));
    for (int d = 0; d < D; ++d) EXPECT_NEAR(mean[d], expect[d] / tokens.size(), 1e-4 * (1 + expect[d] / tokens.size()));
  }
  EXPECT_EQ(stats.entries.at("model.layers.4.mlp.down_proj.weight").sum_sq.size(), 172u);
  EXPECT_EQ(stats.entries.at("model.layers.2.self_attn.o_proj.weight").sum_sq.size(), 64u);
  EXPECT_TRUE(stats.entries.count("model.embed_tokens.weight"));  // tied lm_head
}

TEST(ModelGrad, ImportanceAccumulatesOverChunks) {
  SQUISH_REQUIRE_SHARED();
  auto w = stories();
  const auto tokens = stories_tokens(3 * 64 + 10);
  Transformer model(w, {.threads = 2});
  MaskImportance imp(w->arch());
  auto total = accumulate_mask_importance(model, tokens, 64, imp);
  EXPECT_EQ(imp.chunks(), 3);
  EXPECT_EQ(total.count, 3 * 63);
  // Same figures by hand from the per-chunk gradients.
  const MaskSet ones = MaskSet::ones(w->arch());
  std::vector<double> taylor(ones.count(), 0.0), fisher(ones.count(), 0.0);
  for (int c = 0; c < 3; ++c) {
    MaskSet g;
    model.loss_and_mask_grads(std::span(tokens).subspan(c * 64, 64), 0, ones, g);
    auto f = g.flatten();
    for (size_t i = 0; i < f.size(); ++i) taylor[i] += std::fabs(f[i]) / 3, fisher[i] += f[i] * f[i] / 3;
  }
  auto t = imp.taylor().flatten(), f = imp.fisher().flatten();
  for (size_t i = 0; i < t.size(); ++i) {
    // The same three non-negative terms, divided before or after adding: a few roundings apart.
    EXPECT_NEAR(t[i], taylor[i], 4 * DBL_EPSILON * taylor[i]);
    EXPECT_NEAR(f[i], fisher[i], 4 * DBL_EPSILON * fisher[i]);
  }
}

// A model with per-layer head / FFN counts (pruned, held in memory) computes exactly what the
// full model computes with the removed structures' masks at 0; and streaming the layers from
// safetensors gives the same result as keeping them.
TEST(ModelGrad, PrunedShapesEqualZeroMasks) {
  SQUISH_REQUIRE_SHARED();
  auto full = stories();
  const auto& a = full->arch();
  const int D = a.n_embd, hd = a.head_dim;
  ModelArch pa = a;
  pa.layers[1] = {6, 3, a.layers[1].n_ff};            // kv group 3 (heads 6, 7) removed
  pa.layers[2] = {8, 4, a.layers[2].n_ff - 50};       // FFN channels 0..49 removed
  std::vector<LayerWeights> layers;
  for (int l = 0; l < a.n_layer(); ++l) layers.push_back(*full->layer(l));
  auto keep_rows = [](const std::vector<float>& w, int cols, int r0, int r1) {
    return std::vector<float>(w.begin() + size_t(r0) * cols, w.begin() + size_t(r1) * cols);
  };
  auto keep_cols = [](const std::vector<float>& w, int cols, int c0, int c1) {
    std::vector<float> out;
    for (size_t r = 0; r < w.size() / cols; ++r) out.insert(out.end(), w.begin() + r * cols + c0, w.begin() + r * cols + c1);
    return out;
  };
  auto& l1 = layers[1];
  l1.wq = keep_rows(l1.wq, D, 0, 6 * hd);
  l1.wk = keep_rows(l1.wk, D, 0, 3 * hd);
  l1.wv = keep_rows(l1.wv, D, 0, 3 * hd);
  l1.wo = keep_cols(l1.wo, 8 * hd, 0, 6 * hd);
  auto& l2 = layers[2];
  const int ff = a.layers[2].n_ff;
  l2.w_gate = keep_rows(l2.w_gate, D, 50, ff);
  l2.w_up = keep_rows(l2.w_up, D, 50, ff);
  l2.w_down = keep_cols(l2.w_down, ff, 50, ff);
  auto pruned = std::make_shared<InMemoryWeights>(pa, full->globals(), std::move(layers));

  const auto tokens = stories_tokens(120);
  MaskSet masks = MaskSet::ones(a);
  masks.kv[1][3] = 0;
  for (int c = 0; c < 50; ++c) masks.ffn[2][c] = 0;
  Transformer ref(full, {.threads = 2});
  Transformer small(pruned, {.threads = 2});
  const double want = ref.loss(tokens, 0, &masks).mean();
  const double unmasked = ref.loss(tokens, 0).mean();
  EXPECT_NEAR(small.loss(tokens, 0).mean(), want, 1e-5);
  EXPECT_GT(std::fabs(want - unmasked), 1e-3);  // the pruning did change the model

  Transformer streamed(SafetensorsWeights::open(test::shared("models/stories260K"), /*keep_layers=*/false), {.threads = 2});
  EXPECT_DOUBLE_EQ(streamed.loss(tokens, 0).mean(), unmasked);
}

// ---- Each op's backward against central differences of its forward (double precision) ----

namespace {

std::vector<double> random_vec(size_t n, std::mt19937& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The loss L = <dy, y(x)> has dL/dx = the backward of dy; central differences of L check it.
// Their error is ~h^2 |L'''| / 6 + eps |L| / h: ~1e-10 here, far inside the bound.
void expect_gradient(std::vector<double>& x, const std::vector<double>& analytic, const std::function<double()>& loss,
                     const std::string& what) {
  ASSERT_EQ(x.size(), analytic.size());
  constexpr double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    EXPECT_NEAR(analytic[i], (lp - lm) / (2 * h), 1e-7 * std::max(1.0, std::fabs(analytic[i]))) << what << "[" << i << "]";
  }
}

}  // namespace

TEST(KernelBackward, RmsNorm) {
  std::mt19937 rng(1);
  const int n = 24;
  auto x = random_vec(n, rng), w = random_vec(n, rng, 0.5, 1.5), dy = random_vec(n, rng);
  std::vector<double> y(n), dx(n, 0.25);  // dx accumulates: starts non-zero
  const double r = kernels::rms_norm(x.data(), w.data(), y.data(), n, 1e-5);
  kernels::rms_norm_backward(x.data(), w.data(), r, dy.data(), dx.data(), n);
  for (double& v : dx) v -= 0.25;
  expect_gradient(x, dx, [&] { kernels::rms_norm(x.data(), w.data(), y.data(), n, 1e-5); return dot(dy, y); }, "dx");
}

TEST(KernelBackward, SwiGLU) {
  std::mt19937 rng(2);
  const size_t n = 32;
  auto g = random_vec(n, rng, -4, 4), u = random_vec(n, rng), dh = random_vec(n, rng);
  std::vector<double> h(n), dg(n), du(n);
  kernels::swiglu_backward(g.data(), u.data(), dh.data(), dg.data(), du.data(), n);
  const auto loss = [&] { kernels::swiglu(g.data(), u.data(), h.data(), n); return dot(dh, h); };
  expect_gradient(g, dg, loss, "dgate");
  expect_gradient(u, du, loss, "dup");
}

TEST(KernelBackward, RoPE) {
  std::mt19937 rng(3);
  const int n_heads = 3, hd = 8;
  std::vector<double> cos_t, sin_t;
  kernels::rope_table<double>({1.0f, 0.1f, 0.01f, 0.001f}, 37, 1, cos_t, sin_t);
  for (auto layout : {arch::RopeLayout::HalfSplit, arch::RopeLayout::Interleaved}) {
    auto x = random_vec(size_t(n_heads) * hd, rng), dy = random_vec(x.size(), rng);
    std::vector<double> dx = dy, y;
    kernels::rope_backward(dx.data(), n_heads, hd, layout, cos_t.data(), sin_t.data());
    expect_gradient(x, dx, [&] {
      y = x;
      kernels::rope(y.data(), n_heads, hd, layout, cos_t.data(), sin_t.data());
      return dot(dy, y);
    }, "dx");
  }
}

// o = attention_apply(attention_probs(q, k), v) for the row block [r0, r1) of a causal (and
// sliding-window) head, as the reference model runs it: dq, dk, dv against differences.
TEST(KernelBackward, Attention) {
  std::mt19937 rng(4);
  const int hd = 4, r0 = 3, r1 = 13, rows = r1 - r0, n_kv = r1;
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int window : {0, 4}) {
    auto q = random_vec(size_t(rows) * hd, rng), k = random_vec(size_t(n_kv) * hd, rng), v = random_vec(k.size(), rng);
    const auto d_o = random_vec(q.size(), rng);
    std::vector<double> P(size_t(rows) * n_kv), dP(P.size()), o(q.size());
    const auto loss = [&] {
      kernels::attention_probs(P.data(), q.data(), hd, k.data(), hd, rows, r0, n_kv, hd, scale, window);
      kernels::attention_apply(P.data(), v.data(), hd, o.data(), hd, rows, n_kv, hd);
      return dot(d_o, o);
    };
    loss();
    std::vector<double> dq(q.size()), dk(k.size(), 0.0), dv(v.size(), 0.0);
    kernels::attention_apply_backward(P.data(), v.data(), hd, d_o.data(), hd, dP.data(), dv.data(), hd, rows, n_kv, hd);
    kernels::attention_probs_backward(P.data(), dP.data(), q.data(), hd, k.data(), hd, dq.data(), hd, dk.data(), hd, rows,
                                      n_kv, hd, scale);
    const std::string w = fmt::format(" (window {})", window);
    expect_gradient(q, dq, loss, "dq" + w);
    expect_gradient(k, dk, loss, "dk" + w);
    expect_gradient(v, dv, loss, "dv" + w);
  }
}
