#include "core/model/transformer.hpp"

#include "core/io/spill_store.hpp"
#include "core/base/error.hpp"

#include "core/model/kernels.hpp"

#include <cblas.h>
#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace squish {

// ---------------------------------------------------------------------------------------------
// Architecture

namespace {
using arch::Role;
// HF name of a layer tensor, from the architecture table.
std::string hf_of(Role r, int layer) { return arch::hf_name(arch::kind_of(r), layer); }
}  // namespace

ModelArch arch_from_checkpoint(const ModelConfig& c, const SafetensorsModel& st) {
  ModelArch a = ModelArch::from_config(c);
  auto rows = [&](const std::string& name) -> int64_t {
    const auto& e = st.at(name);
    if (e.shape.size() != 2) fail(ExitCode::InputData, "{}: tensor {} is not 2-D", st.root(), name);
    return e.shape[0];
  };
  auto heads = [&](const std::string& name) {
    int64_t r = rows(name);
    if (r % a.head_dim != 0)
      fail(ExitCode::InputData, "{}: {} has {} rows, not a multiple of head_dim {}", st.root(), name, r, a.head_dim);
    return static_cast<int>(r / a.head_dim);
  };
  for (int l = 0; l < a.n_layer(); ++l) {
    auto& s = a.layers[l];
    s.n_head = heads(hf_of(Role::AttnQ, l));
    s.n_head_kv = heads(hf_of(Role::AttnK, l));
    s.n_ff = static_cast<int>(rows(hf_of(Role::FfnGate, l)));
    if (s.n_head <= 0 || s.n_ff <= 0) fail(ExitCode::InputData, "{}: layer {} has an empty attention or FFN", st.root(), l);
  }
  a.validate(st.root());
  return a;
}

// ---------------------------------------------------------------------------------------------
// Weights

namespace {

void check_size(const std::vector<float>& v, size_t n, const std::string& origin, const std::string& what) {
  if (v.size() != n) fail(ExitCode::InputData, "{}: {} has {} values, expected {}", origin, what, v.size(), n);
}

// The float model's tensors are the architecture's, in HF layout (rotate-half q/k rows).
std::vector<float>* layer_field(LayerWeights& w, Role r) {
  switch (r) {
    case Role::AttnNorm: return &w.attn_norm;
    case Role::AttnQ: return &w.wq;
    case Role::BiasQ: return &w.bq;
    case Role::AttnK: return &w.wk;
    case Role::BiasK: return &w.bk;
    case Role::AttnV: return &w.wv;
    case Role::BiasV: return &w.bv;
    case Role::AttnOut: return &w.wo;
    case Role::BiasOut: return &w.bo;
    case Role::FfnNorm: return &w.ffn_norm;
    case Role::FfnGate: return &w.w_gate;
    case Role::FfnUp: return &w.w_up;
    case Role::FfnDown: return &w.w_down;
    case Role::BiasDown: return &w.b_down;
    default: return nullptr;
  }
}

void check_layer(const ModelArch& a, int l, const LayerWeights& w, const std::string& origin) {
  for (const auto& k : arch::tensor_kinds()) {
    if (!k.per_layer) continue;
    const auto* v = layer_field(const_cast<LayerWeights&>(w), k.role);
    size_t n = 0;
    if (a.has(k, l))
      for (int64_t d : a.hf_shape(k, l)) n = (n ? n : 1) * size_t(d);
    check_size(*v, n, origin, arch::hf_name(k, l));
  }
}

void check_globals(const ModelArch& a, const GlobalWeights& g, const std::string& origin) {
  const size_t D = a.n_embd, V = a.n_vocab;
  check_size(g.tok_embd, V * D, origin, hf_of(Role::TokenEmbd, -1));
  check_size(g.out_norm, D, origin, hf_of(Role::OutputNorm, -1));
  if (!g.lm_head.empty()) check_size(g.lm_head, V * D, origin, hf_of(Role::Output, -1));
}

}  // namespace

SafetensorsWeights::SafetensorsWeights(ModelConfig c, SafetensorsModel st, bool keep)
    : config_(std::move(c)), st_(std::move(st)), keep_(keep) {}

std::shared_ptr<SafetensorsWeights> SafetensorsWeights::open(const std::string& dir, bool keep_layers) {
  auto config = ModelConfig::load(dir);
  auto st = SafetensorsModel::open(dir);
  std::shared_ptr<SafetensorsWeights> w(new SafetensorsWeights(std::move(config), std::move(st), keep_layers));
  w->arch_ = arch_from_checkpoint(w->config_, w->st_);
  // Each converted tensor's source pages are dropped at once: one source is resident at a time.
  const auto convert = [&](Role r) {
    const SafetensorsEntry& e = w->st_.at(hf_of(r, -1));
    std::vector<float> v = w->st_.load(e).to_f32();
    w->st_.release(e);
    return v;
  };
  w->globals_.tok_embd = convert(Role::TokenEmbd);
  w->globals_.out_norm = convert(Role::OutputNorm);
  // A tied checkpoint may still carry a copy of lm_head; the tie decides what is used.
  if (!w->arch_.tie_embeddings) w->globals_.lm_head = convert(Role::Output);
  check_globals(w->arch_, w->globals_, w->st_.root());
  w->cache_.resize(w->arch_.n_layer());
  return w;
}

std::shared_ptr<const LayerWeights> SafetensorsWeights::read_layer(int l) const {
  auto w = std::make_shared<LayerWeights>();
  for (const auto& k : arch::tensor_kinds())
    if (k.per_layer && arch_.has(k, l)) {
      const SafetensorsEntry& e = st_.at(arch::hf_name(k, l));
      *layer_field(*w, k.role) = st_.load(e).to_f32();
      st_.release(e);  // converted: the source pages need not stay resident beside the float32 copy
    }
  check_layer(arch_, l, *w, st_.root());
  return w;
}

std::shared_ptr<const LayerWeights> SafetensorsWeights::layer(int il) const {
  if (il < 0 || il >= arch_.n_layer()) fail(ExitCode::Runtime, "{}: no layer {}", st_.root(), il);
  if (!keep_) return read_layer(il);
  std::lock_guard lock(mu_);
  if (!cache_[il]) cache_[il] = read_layer(il);
  return cache_[il];
}

InMemoryWeights::InMemoryWeights(ModelArch arch, GlobalWeights globals, std::vector<LayerWeights> layers)
    : arch_(std::move(arch)), globals_(std::move(globals)) {
  arch_.validate("in-memory model");
  if (static_cast<int>(layers.size()) != arch_.n_layer())
    fail(ExitCode::InputData, "in-memory model: {} layers given, architecture has {}", layers.size(), arch_.n_layer());
  check_globals(arch_, globals_, "in-memory model");
  for (int l = 0; l < arch_.n_layer(); ++l) {
    check_layer(arch_, l, layers[l], "in-memory model");
    layers_.push_back(std::make_shared<const LayerWeights>(std::move(layers[l])));
  }
}

// ---------------------------------------------------------------------------------------------
// Masks, statistics, importance

MaskSet MaskSet::filled(const ModelArch& a, double v) {
  MaskSet m;
  for (const auto& s : a.layers) {
    m.head.emplace_back(s.n_head, v);
    m.kv.emplace_back(s.n_head_kv, v);
    m.ffn.emplace_back(s.n_ff, v);
  }
  m.attn.assign(a.n_layer(), v);
  m.mlp.assign(a.n_layer(), v);
  return m;
}

size_t MaskSet::count() const {
  size_t n = 0;
  for_each([&](const double&) { ++n; });
  return n;
}

std::vector<double> MaskSet::flatten() const {
  std::vector<double> out;
  for_each([&](const double& v) { out.push_back(v); });
  return out;
}

std::vector<float> ActivationStats::Entry::mean() const {
  std::vector<float> m(sum_sq.size());
  for (size_t i = 0; i < m.size(); ++i) m[i] = count ? static_cast<float>(sum_sq[i] / count) : 0.f;
  return m;
}

namespace {
void add_sums(ActivationStats::Entry& e, const std::string& weight, std::span<const double> col_sum_sq, int64_t tokens) {
  if (e.sum_sq.empty()) e.sum_sq.assign(col_sum_sq.size(), 0.0);
  if (e.sum_sq.size() != col_sum_sq.size())
    fail(ExitCode::Runtime, "activation stats for {}: {} columns, had {}", weight, col_sum_sq.size(), e.sum_sq.size());
  for (size_t i = 0; i < col_sum_sq.size(); ++i) e.sum_sq[i] += col_sum_sq[i];
  e.count += tokens;
}
}  // namespace

void ActivationStats::accumulate(const std::string& weight, std::span<const double> col_sum_sq, int64_t tokens) {
  add_sums(entries[weight], weight, col_sum_sq, tokens);
}

void ActivationStats::accumulate_sum(const std::string& weight, std::span<const double> col_sum, int64_t tokens) {
  add_sums(input_sums[weight], weight, col_sum, tokens);
}

void ActivationStats::accumulate_output_grad(const std::string& weight, std::span<const double> row_sum_sq, int64_t tokens) {
  add_sums(output_grads[weight], weight, row_sum_sq, tokens);
}

void ActivationStats::accumulate_moment(const std::string& input, const float* x, int tokens, int n) {
  auto& m = moments[input];
  if (m.sum.empty()) m.n = n, m.sum.assign(size_t(n) * n, 0.0f);
  if (m.n != n) fail(ExitCode::Runtime, "second moments of {}: {} columns, had {}", input, n, m.n);
  // Σ x xᵀ over the chunk's rows, upper triangle only: row blocks [i0, i1) x columns [i0, n) as
  // GEMMs over TBB (OpenBLAS is single-threaded in this library), about half a full product.
  constexpr int kBlock = 128;
  tbb::parallel_for(0, (n + kBlock - 1) / kBlock, [&](int b) {
    const int i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1 - i0, n - i0, tokens, 1.0f, x + i0, n, x + i0, n, 1.0f,
                m.sum.data() + size_t(i0) * n + i0, n);
  });
  m.count += tokens;
}

MaskImportance::MaskImportance(const ModelArch& a)
    : sum_taylor_(MaskSet::filled(a, 0.0)), sum_fisher_(MaskSet::filled(a, 0.0)) {}

void MaskImportance::add(const MaskSet& masks, const MaskSet& grads) {
  auto m = masks.flatten(), g = grads.flatten();
  if (m.size() != g.size() || m.size() != sum_taylor_.count())
    fail(ExitCode::Runtime, "mask importance: masks/gradients do not match the architecture");
  size_t i = 0;
  sum_taylor_.for_each([&](double& v) { v += std::fabs(m[i] * g[i]); ++i; });
  i = 0;
  sum_fisher_.for_each([&](double& v) { v += g[i] * g[i]; ++i; });
  ++n_;
}

void MaskImportance::add_layer(int l, const MaskSet& m, const MaskSet& g) {
  if (l < 0 || size_t(l) >= sum_taylor_.head.size() || m.head.size() != sum_taylor_.head.size() || g.head.size() != m.head.size())
    fail(ExitCode::Runtime, "mask importance: masks/gradients do not match the architecture");
  const auto add = [](std::vector<double>& t, std::vector<double>& f, const std::vector<double>& mm, const std::vector<double>& gg) {
    if (mm.size() != t.size() || gg.size() != t.size()) fail(ExitCode::Runtime, "mask importance: layer shape mismatch");
    for (size_t i = 0; i < t.size(); ++i) t[i] += std::fabs(mm[i] * gg[i]);
    for (size_t i = 0; i < t.size(); ++i) f[i] += gg[i] * gg[i];
  };
  add(sum_taylor_.head[l], sum_fisher_.head[l], m.head[l], g.head[l]);
  add(sum_taylor_.kv[l], sum_fisher_.kv[l], m.kv[l], g.kv[l]);
  add(sum_taylor_.ffn[l], sum_fisher_.ffn[l], m.ffn[l], g.ffn[l]);
  sum_taylor_.attn[l] += std::fabs(m.attn[l] * g.attn[l]), sum_fisher_.attn[l] += g.attn[l] * g.attn[l];
  sum_taylor_.mlp[l] += std::fabs(m.mlp[l] * g.mlp[l]), sum_fisher_.mlp[l] += g.mlp[l] * g.mlp[l];
}

std::vector<double> MaskImportance::sums() const {
  std::vector<double> v = sum_taylor_.flatten(), f = sum_fisher_.flatten();
  v.insert(v.end(), f.begin(), f.end());
  return v;
}

void MaskImportance::set_sums(std::span<const double> v, int chunks) {
  const size_t n = sum_taylor_.count();
  if (v.size() != 2 * n) fail(ExitCode::Runtime, "mask importance: {} sums for {} masks", v.size(), n);
  size_t i = 0;
  sum_taylor_.for_each([&](double& x) { x = v[i++]; });
  sum_fisher_.for_each([&](double& x) { x = v[i++]; });
  n_ = chunks;
}

MaskSet MaskImportance::taylor() const {
  MaskSet r = sum_taylor_;
  r.for_each([&](double& v) { v = n_ ? v / n_ : 0.0; });
  return r;
}

MaskSet MaskImportance::fisher() const {
  MaskSet r = sum_fisher_;
  r.for_each([&](double& v) { v = n_ ? v / n_ : 0.0; });
  return r;
}

// ---------------------------------------------------------------------------------------------
// Kernels. Row-major throughout; weights are [out, in] so a linear layer is Y = X W^T.

namespace {

using kernels::gemm;

// One thread pool only: OpenBLAS runs single-threaded (see Transformer::Impl::run) and large
// products are split here into single-threaded sgemm calls on the TBB threads, along the larger
// output dimension. Two pools on two cores (OpenBLAS's spinning workers beside TBB's) cost
// ~20% of the time in sched_yield.
//
// The split depends on the shape only, never on the thread count: OpenBLAS may sum an element's
// K products in another order for another tile shape (edge kernels, small-matrix paths), so a
// thread-dependent split made one process and N MPI ranks (or 1 and 2 threads) disagree in the
// last float bits. With fixed tiles every element is computed by the same call on any machine
// of the same OpenBLAS kernel, whatever the threads, and the score statistics match exactly
// up to the order of the per-chunk sums (tests/score_scale_test.cpp).
template <class F>
void gemm_mt(bool ta, bool tb, int M, int N, int K, F alpha, const F* A, int lda, const F* B, int ldb, F beta, F* C,
             int ldc) {
  if (double(M) * N * K < 1e6) return gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  // Tiles of at least 128 rows or columns (narrower ones lose 5-15% of sgemm's rate to
  // re-packing the shared operand), at most 16 of them, an even number where there are several
  // so that two threads (a laptop, CI) get equal shares.
  const auto step_of = [](int n) {
    int tiles = std::clamp(n / 128, 1, 16);
    if (tiles > 1) tiles &= ~1;
    return std::max(1, ((n + tiles - 1) / tiles + 15) / 16 * 16);
  };
  const auto each = [](int tiles, auto&& fn) {
    if (tbb::this_task_arena::max_concurrency() <= 1)
      for (int p = 0; p < tiles; ++p) fn(p);
    else
      tbb::parallel_for(0, tiles, fn);
  };
  if (N >= M) {  // columns of C <-> columns of op(B)
    const int step = step_of(N);
    each((N + step - 1) / step, [&](int p) {
      const int j0 = p * step, n = std::min(N, j0 + step) - j0;
      const F* Bj = tb ? B + size_t(j0) * ldb : B + j0;
      gemm(ta, tb, M, n, K, alpha, A, lda, Bj, ldb, beta, C + j0, ldc);
    });
  } else {  // rows of C <-> rows of op(A)
    const int step = step_of(M);
    each((M + step - 1) / step, [&](int p) {
      const int i0 = p * step, m = std::min(M, i0 + step) - i0;
      const F* Ai = ta ? A + i0 : A + size_t(i0) * lda;
      gemm(ta, tb, m, N, K, alpha, Ai, lda, B, ldb, beta, C + size_t(i0) * ldc, ldc);
    });
  }
}

// Y[T,N] = X[T,K] W[N,K]^T (+ bias)
template <class F>
void linear(const F* X, const F* W, const F* bias, F* Y, int T, int K, int N) {
  gemm_mt(false, true, T, N, K, F(1), X, K, W, K, F(0), Y, N);
  if (bias)
    par_for(T, N, [&](int t) {
      for (int n = 0; n < N; ++n) Y[size_t(t) * N + n] += bias[n];
    });
}

// dX[T,K] (+)= dY[T,N] W[N,K]
template <class F>
void linear_back(const F* dY, const F* W, F* dX, int T, int K, int N, bool accumulate) {
  gemm_mt(false, false, T, K, N, F(1), dY, N, W, K, accumulate ? F(1) : F(0), dX, K);
}

// fn(0..n-1) on the TBB threads, or serially when the whole loop is too little work
// (`work`: rough operations per item) to pay for waking the workers.
template <class Fn>
void par_for(int n, double work, Fn&& fn) {
  if (double(n) * work < 65536 || tbb::this_task_arena::max_concurrency() <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int>(0, n), [&](const tbb::blocked_range<int>& r) {
    for (int i = r.begin(); i < r.end(); ++i) fn(i);
  });
}

// y = w * x / rms(x) per row; keeps 1/rms per row for the backward.
template <class F>
void rmsnorm(const F* x, const F* w, F* y, F* rstd, int T, int D, double eps) {
  par_for(T, 3 * D, [&](int t) { rstd[t] = kernels::rms_norm(x + size_t(t) * D, w, y + size_t(t) * D, D, eps); });
}

// dx += r (w dy) - x r^3 mean((w dy) x): derivative of y = w x r with r = (mean x^2 + eps)^-1/2.
template <class F>
void rmsnorm_back(const F* x, const F* w, const F* rstd, const F* dy, F* dx, int T, int D) {
  par_for(T, 6 * D, [&](int t) {
    const F* xr = x + size_t(t) * D;
    const F* dyr = dy + size_t(t) * D;
    F* dxr = dx + size_t(t) * D;
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += double(w[d]) * dyr[d] * xr[d];
    const F r = rstd[t];
    const F c = F(dot / D) * r * r * r;
    for (int d = 0; d < D; ++d) dxr[d] += r * w[d] * dyr[d] - c * xr[d];
  });
}

// RoPE on T tokens of n_heads heads, in HF's rotate-half layout (the checkpoint's q/k rows).
// sign = -1 applies the inverse rotation (the backward of a rotation is its transpose).
template <class F>
void rope(F* x, int T, int n_heads, int hd, const std::vector<F>& cos_t, const std::vector<F>& sin_t, F sign) {
  const int half = hd / 2;
  par_for(T, 3 * n_heads * hd, [&](int t) {
    kernels::rope(x + size_t(t) * n_heads * hd, n_heads, hd, arch::RopeLayout::HalfSplit, cos_t.data() + size_t(t) * half,
                  sin_t.data() + size_t(t) * half, sign);
  });
}

template <class F>
F sigmoid(F x) { return F(1) / (F(1) + std::exp(-x)); }

// Column sums of x (or of x^2: imatrix statistics) over T rows, in double.
template <class F, bool kSquare = true>
std::vector<double> col_sum_sq(const F* x, int T, int D) {
  std::vector<double> s(D, 0.0);
  constexpr int kCols = 64;
  par_for((D + kCols - 1) / kCols, double(T) * kCols, [&](int b) {
    const int d0 = b * kCols, d1 = std::min(D, d0 + kCols);
    for (int t = 0; t < T; ++t) {
      const F* xr = x + size_t(t) * D;
      for (int d = d0; d < d1; ++d) s[d] += kSquare ? double(xr[d]) * xr[d] : double(xr[d]);
    }
  });
  return s;
}

template <class F>
std::vector<double> col_sum(const F* x, int T, int D) { return col_sum_sq<F, false>(x, T, D); }

// Sum over rows of a[t,c]*b[t,c] per column c (mask gradients of per-channel masks).
template <class F>
void col_dot(const F* a, const F* b, int T, int C, double* out) {
  constexpr int kCols = 64;
  par_for((C + kCols - 1) / kCols, double(T) * kCols, [&](int blk) {
    const int c0 = blk * kCols, c1 = std::min(C, c0 + kCols);
    for (int t = 0; t < T; ++t)
      for (int c = c0; c < c1; ++c) out[c] += double(a[size_t(t) * C + c]) * b[size_t(t) * C + c];
  });
}

template <class F>
double dot_all(const F* a, const F* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}

// Weights seen as F: float weights are used in place, double copies are made for the F64 path.
template <class F>
struct View {
  std::vector<std::vector<F>> own;
  const F* operator()(const std::vector<float>& v) {
    if (v.empty()) return nullptr;
    if constexpr (std::is_same_v<F, float>) {
      return v.data();
    } else {
      own.emplace_back(v.begin(), v.end());
      return own.back().data();
    }
  }
};

template <class F>
struct LayerW {
  std::shared_ptr<const LayerWeights> src;
  View<F> view;
  const F *attn_norm, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ffn_norm, *w_gate, *w_up, *w_down, *b_down;
  explicit LayerW(std::shared_ptr<const LayerWeights> w) : src(std::move(w)) {
    view.own.reserve(14);
    attn_norm = view(src->attn_norm);
    wq = view(src->wq), bq = view(src->bq);
    wk = view(src->wk), bk = view(src->bk);
    wv = view(src->wv), bv = view(src->bv);
    wo = view(src->wo), bo = view(src->bo);
    ffn_norm = view(src->ffn_norm);
    w_gate = view(src->w_gate), w_up = view(src->w_up), w_down = view(src->w_down), b_down = view(src->b_down);
  }
};

// Row block of the causal attention: queries [r0, r1) see keys [0, r1).
constexpr int kAttnBlock = 128;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The model

template <class F>
struct Engine {
  using Vec = std::vector<F>;
  const WeightLoader& W;
  const ModelArch& A;
  View<F> gview;
  const F *tok_embd, *out_norm, *output;

  explicit Engine(const WeightLoader& w) : W(w), A(w.arch()) {
    gview.own.reserve(3);
    tok_embd = gview(W.globals().tok_embd);
    out_norm = gview(W.globals().out_norm);
    output = gview(W.globals().output());
  }

  // Layer weights as F. The f64 path keeps its converted copies while the loader keeps
  // handing out the same layer objects.
  std::vector<std::shared_ptr<const LayerW<F>>> converted;
  std::shared_ptr<const LayerW<F>> layer(int l) {
    auto src = W.layer(l);
    if constexpr (std::is_same_v<F, float>) {
      return std::make_shared<const LayerW<F>>(std::move(src));
    } else {
      converted.resize(A.n_layer());
      if (!converted[l] || converted[l]->src != src) converted[l] = std::make_shared<const LayerW<F>>(std::move(src));
      return converted[l];
    }
  }

  // Scalar masks of one layer, as F; head_scale = m_head * m_kv(group).
  struct LayerMasks {
    Vec head_scale, ffn;
    F attn = 1, mlp = 1;
  };
  LayerMasks layer_masks(const MaskSet* m, int l) const {
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

  // Backward temporaries of one layer.
  struct Grads {
    Vec dy, dh, dg, du, dxn, datt, dq, dk, dv;
  };

  // Σ x xᵀ of one input over this chunk's T tokens (statistics are kept in float).
  void add_moment(ActivationStats& st, const std::string& input, const F* x, int n) {
    if constexpr (std::is_same_v<F, float>) {
      st.accumulate_moment(input, x, T, n);
    } else {
      const std::vector<float> f(x, x + size_t(T) * n);
      st.accumulate_moment(input, f.data(), T, n);
    }
  }

  // Buffers persist across calls: reallocating them per chunk costs page faults and memsets
  // comparable to the attention itself.
  int T = 0;
  Vec cos_t, sin_t;  // RoPE table [T, hd/2]
  std::vector<Vec> scratch_p, scratch_dp;  // per TBB thread: [kAttnBlock, T]
  Acts acts;
  Grads gb;
  Vec logit_rows;  // [64, n_vocab] logits of one block of scored rows

  void setup(int n_tokens) {
    T = n_tokens;
    kernels::rope_table(A.rope_inv_freq(), 0, T, cos_t, sin_t);
    const int slots = tbb::this_task_arena::max_concurrency();
    scratch_p.resize(slots), scratch_dp.resize(slots);
    for (int i = 0; i < slots; ++i) {
      scratch_p[i].resize(size_t(std::min(T, kAttnBlock)) * T);
      scratch_dp[i].resize(scratch_p[i].size());
    }
  }

  // Scratch of the calling TBB thread. Attention tasks run serially inside (no nested
  // parallelism: a waiting thread could pick up another head's task and reuse its scratch).
  F* slot_p() { return scratch_p[tbb::this_task_arena::current_thread_index()].data(); }
  F* slot_dp() { return scratch_dp[tbb::this_task_arena::current_thread_index()].data(); }

  // P[r0:r1, 0:r1] = causal (sliding-window) softmax(scale q k^T) for one head (ld = r1).
  void attn_probs(F* P, const F* q, int ldq, const F* k, int ldk, int r0, int r1, F scale) {
    kernels::attention_probs(P, q + size_t(r0) * ldq, ldq, k, ldk, r1 - r0, r0, r1, A.head_dim, scale, A.sliding_window);
  }

  void forward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a, ActivationStats* stats) {
    const auto& s = A.layers[l];
    const int D = A.n_embd, hd = A.head_dim, nq = s.n_head, nkv = s.n_head_kv, FF = s.n_ff;
    const int Q = nq * hd, KV = nkv * hd, per = nq / nkv;
    const auto lm = layer_masks(masks, l);
    const size_t TD = size_t(T) * D;

    a.xn1.resize(TD), a.rstd1.resize(T);
    rmsnorm(x_in, w.attn_norm, a.xn1.data(), a.rstd1.data(), T, D, A.rms_eps);
    a.q.resize(size_t(T) * Q), a.k.resize(size_t(T) * KV), a.v.resize(size_t(T) * KV);
    linear(a.xn1.data(), w.wq, w.bq, a.q.data(), T, D, Q);
    linear(a.xn1.data(), w.wk, w.bk, a.k.data(), T, D, KV);
    linear(a.xn1.data(), w.wv, w.bv, a.v.data(), T, D, KV);
    rope(a.q.data(), T, nq, hd, cos_t, sin_t, F(1));
    rope(a.k.data(), T, nkv, hd, cos_t, sin_t, F(1));

    // Causal GQA attention, one task per head (each writes its own columns of o).
    a.o.resize(size_t(T) * Q);
    const F scale = F(1.0 / std::sqrt(double(hd)));
    par_for(nq, 2.0 * T * T * hd, [&](int h) {
      const int g = h / per;
      F* P = slot_p();
      for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
        const int r1 = std::min(T, r0 + kAttnBlock);
        attn_probs(P, a.q.data() + size_t(h) * hd, Q, a.k.data() + size_t(g) * hd, KV, r0, r1, scale);
        kernels::attention_apply(P, a.v.data() + size_t(g) * hd, KV, a.o.data() + size_t(r0) * Q + size_t(h) * hd, Q,
                                 r1 - r0, r1, hd);
      }
    });
    a.att.resize(a.o.size());
    par_for(T, Q, [&](int t) {
      for (int h = 0; h < nq; ++h)
        for (int i = 0; i < hd; ++i) {
          const size_t idx = size_t(t) * Q + size_t(h) * hd + i;
          a.att[idx] = a.o[idx] * lm.head_scale[h];
        }
    });
    a.y_attn.resize(TD);
    linear(a.att.data(), w.wo, w.bo, a.y_attn.data(), T, Q, D);
    a.x_mid.resize(TD);
    for (size_t i = 0; i < TD; ++i) a.x_mid[i] = x_in[i] + lm.attn * a.y_attn[i];

    // SwiGLU MLP.
    a.xn2.resize(TD), a.rstd2.resize(T);
    rmsnorm(a.x_mid.data(), w.ffn_norm, a.xn2.data(), a.rstd2.data(), T, D, A.rms_eps);
    const size_t TF = size_t(T) * FF;
    a.g.resize(TF), a.u.resize(TF), a.a.resize(TF), a.h.resize(TF);
    linear(a.xn2.data(), w.w_gate, (const F*)nullptr, a.g.data(), T, D, FF);
    linear(a.xn2.data(), w.w_up, (const F*)nullptr, a.u.data(), T, D, FF);
    par_for(T, 20 * FF, [&](int t) {
      const size_t row = size_t(t) * FF;
      kernels::swiglu(a.g.data() + row, a.u.data() + row, a.a.data() + row, FF);
      for (int c = 0; c < FF; ++c) a.h[row + c] = a.a[row + c] * lm.ffn[c];
    });
    a.y_mlp.resize(TD);
    linear(a.h.data(), w.w_down, w.b_down, a.y_mlp.data(), T, FF, D);

    if (stats) {
      // One entry per weight matrix, from the input it reads (the table says which one).
      const auto inputs = std::map<Role, std::vector<double>>{{Role::AttnQ, col_sum_sq(a.xn1.data(), T, D)},
                                                              {Role::AttnOut, col_sum_sq(a.att.data(), T, Q)},
                                                              {Role::FfnGate, col_sum_sq(a.xn2.data(), T, D)},
                                                              {Role::FfnDown, col_sum_sq(a.h.data(), T, FF)}};
      const auto sums = std::map<Role, std::vector<double>>{{Role::AttnQ, col_sum(a.xn1.data(), T, D)},
                                                            {Role::AttnOut, col_sum(a.att.data(), T, Q)},
                                                            {Role::FfnGate, col_sum(a.xn2.data(), T, D)},
                                                            {Role::FfnDown, col_sum(a.h.data(), T, FF)}};
      for (const auto& k : arch::tensor_kinds())
        if (k.per_layer && k.weight_matrix()) {
          stats->accumulate(arch::hf_name(k, l), inputs.at(k.input_of), T);
          stats->accumulate_sum(arch::hf_name(k, l), sums.at(k.input_of), T);
        }
      if (stats->second_moments) {
        const std::pair<Role, std::pair<const F*, int>> moment_inputs[] = {
            {Role::AttnQ, {a.xn1.data(), D}}, {Role::AttnOut, {a.att.data(), Q}}, {Role::FfnGate, {a.xn2.data(), D}}, {Role::FfnDown, {a.h.data(), FF}}};
        for (const auto& [role, in] : moment_inputs) add_moment(*stats, arch::hf_name(arch::kind_of(role), l), in.first, in.second);
      }
    }
  }

  // x_out = x_mid + m_mlp * y_mlp
  void residual_out(const Acts& a, F m_mlp, F* x_out) {
    const size_t n = a.x_mid.size();
    for (size_t i = 0; i < n; ++i) x_out[i] = a.x_mid[i] + m_mlp * a.y_mlp[i];
  }

  // Backward of layer l: dx holds dL/dx_out on entry and dL/dx_in on return. Mask gradients
  // are added into grads.
  void backward_layer(int l, const LayerW<F>& w, const F* x_in, const MaskSet* masks, Acts& a, Vec& dx, MaskSet& grads,
                      ActivationStats* stats) {
    // Output gradients of the layer's weights (the Fisher estimate's row factor).
    auto out_grad = [&](Role r, const Vec& dy, int N) {
      if (stats) stats->accumulate_output_grad(hf_of(r, l), scaled(col_sum_sq(dy.data(), T, N)), T);
    };
    const auto& s = A.layers[l];
    const int D = A.n_embd, hd = A.head_dim, nq = s.n_head, nkv = s.n_head_kv, FF = s.n_ff;
    const int Q = nq * hd, KV = nkv * hd, per = nq / nkv;
    const auto lm = layer_masks(masks, l);
    const size_t TD = size_t(T) * D, TF = size_t(T) * FF;

    // x_out = x_mid + m_mlp * down(h): dx passes through to x_mid unchanged.
    grads.mlp[l] += dot_all(dx.data(), a.y_mlp.data(), TD);
    auto& [dy, dh, dg, du, dxn, datt, dq, dk, dv] = gb;
    dy.resize(TD), dh.resize(TF), dg.resize(TF), du.resize(TF), dxn.resize(TD), datt.resize(size_t(T) * Q);
    dq.resize(size_t(T) * Q), dk.resize(size_t(T) * KV), dv.resize(size_t(T) * KV);
    for (size_t i = 0; i < TD; ++i) dy[i] = lm.mlp * dx[i];
    out_grad(Role::FfnDown, dy, D);
    linear_back(dy.data(), w.w_down, dh.data(), T, FF, D, false);
    // h = a * m_c, a = silu(g) * u
    col_dot(dh.data(), a.a.data(), T, FF, grads.ffn[l].data());
    par_for(T, 20 * FF, [&](int t) {
      for (int c = 0; c < FF; ++c) {
        const size_t i = size_t(t) * FF + c;
        const F da = dh[i] * lm.ffn[c];
        const F sg = sigmoid(a.g[i]);
        du[i] = da * a.g[i] * sg;
        dg[i] = da * a.u[i] * sg * (F(1) + a.g[i] * (F(1) - sg));
      }
    });
    out_grad(Role::FfnGate, dg, FF);
    out_grad(Role::FfnUp, du, FF);
    linear_back(dg.data(), w.w_gate, dxn.data(), T, D, FF, false);
    linear_back(du.data(), w.w_up, dxn.data(), T, D, FF, true);
    rmsnorm_back(a.x_mid.data(), w.ffn_norm, a.rstd2.data(), dxn.data(), dx.data(), T, D);

    // x_mid = x_in + m_attn * o_proj(att): dx now is dL/dx_mid and passes through to x_in.
    grads.attn[l] += dot_all(dx.data(), a.y_attn.data(), TD);
    for (size_t i = 0; i < TD; ++i) dy[i] = lm.attn * dx[i];
    out_grad(Role::AttnOut, dy, D);
    linear_back(dy.data(), w.wo, datt.data(), T, Q, D, false);
    // att_h = m_h * m_kv(g) * o_h
    std::vector<double> z(nq, 0.0);
    par_for(nq, double(T) * hd, [&](int h) {
      double acc = 0;
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < hd; ++i) {
          const size_t idx = size_t(t) * Q + size_t(h) * hd + i;
          acc += double(datt[idx]) * a.o[idx];
        }
      z[h] = acc;
    });
    for (int h = 0; h < nq; ++h) {
      const double mh = masks ? masks->head[l][h] : 1.0, mg = masks ? masks->kv[l][h / per] : 1.0;
      grads.head[l][h] += mg * z[h];
      grads.kv[l][h / per] += mh * z[h];
    }
    Vec& dout = datt;  // d o_h = scale_h * d att_h, in place
    par_for(T, Q, [&](int t) {
      for (int h = 0; h < nq; ++h)
        for (int i = 0; i < hd; ++i) dout[size_t(t) * Q + size_t(h) * hd + i] *= lm.head_scale[h];
    });

    // Attention backward, recomputing each block's probabilities. One task per kv group:
    // the heads of a group add into the same dk/dv columns.
    std::fill(dk.begin(), dk.end(), F(0));  // accumulated over the heads of a group
    std::fill(dv.begin(), dv.end(), F(0));  // (dq is written block by block)
    const F scale = F(1.0 / std::sqrt(double(hd)));
    par_for(nkv, 4.0 * per * T * T * hd, [&](int g) {
      F* P = slot_p();
      F* dP = slot_dp();
      const F* kg = a.k.data() + size_t(g) * hd;
      const F* vg = a.v.data() + size_t(g) * hd;
      for (int h = g * per; h < (g + 1) * per; ++h) {
        const F* qh = a.q.data() + size_t(h) * hd;
        const F* doh = dout.data() + size_t(h) * hd;
        for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
          const int r1 = std::min(T, r0 + kAttnBlock), rows = r1 - r0, ld = r1;
          attn_probs(P, qh, Q, kg, KV, r0, r1, scale);
          // o = P v  =>  dP = do v^T, dv += P^T do
          gemm(false, true, rows, r1, hd, F(1), doh + size_t(r0) * Q, Q, vg, KV, F(0), dP, ld);
          gemm(true, false, r1, hd, rows, F(1), P, ld, doh + size_t(r0) * Q, Q, F(1), dv.data() + size_t(g) * hd, KV);
          // softmax: dS = P (dP - sum_j P dP); masked entries have P = 0 and drop out.
          for (int i = 0; i < rows; ++i) {
            F* p = P + size_t(i) * ld;
            F* dp = dP + size_t(i) * ld;
            double dsum = 0;
            for (int j = 0; j < ld; ++j) dsum += double(p[j]) * dp[j];
            for (int j = 0; j < ld; ++j) dp[j] = p[j] * (dp[j] - F(dsum));
          }
          // S = scale q k^T  =>  dq = scale dS k, dk += scale dS^T q
          gemm(false, false, rows, hd, r1, scale, dP, ld, kg, KV, F(0), dq.data() + size_t(r0) * Q + size_t(h) * hd, Q);
          gemm(true, false, r1, hd, rows, scale, dP, ld, qh + size_t(r0) * Q, Q, F(1), dk.data() + size_t(g) * hd, KV);
        }
      }
    });
    rope(dq.data(), T, nq, hd, cos_t, sin_t, F(-1));
    rope(dk.data(), T, nkv, hd, cos_t, sin_t, F(-1));
    out_grad(Role::AttnQ, dq, Q);
    out_grad(Role::AttnK, dk, KV);
    out_grad(Role::AttnV, dv, KV);
    linear_back(dq.data(), w.wq, dxn.data(), T, D, Q, false);
    linear_back(dk.data(), w.wk, dxn.data(), T, D, KV, true);
    linear_back(dv.data(), w.wv, dxn.data(), T, D, KV, true);
    rmsnorm_back(x_in, w.attn_norm, a.rstd1.data(), dxn.data(), dx.data(), T, D);
  }

  // Token embeddings of the sequence.
  Vec embed(std::span<const int32_t> tokens) {
    const int D = A.n_embd;
    Vec x(size_t(T) * D);
    for (int t = 0; t < T; ++t) {
      const int id = tokens[t];
      if (id < 0 || id >= A.n_vocab) fail(ExitCode::InputData, "token id {} at position {} is outside the vocabulary ({})", id, t, A.n_vocab);
      std::copy_n(tok_embd + size_t(id) * D, D, x.data() + size_t(t) * D);
    }
    return x;
  }

  // Runs the layers; checkpoints (optional) receive each layer's input.
  Vec run_layers(Vec x, const MaskSet* masks, ActivationStats* stats, std::vector<Vec>* checkpoints) {
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

  // Final norm; statistics of the lm_head input.
  Vec final_norm(const Vec& x, Vec& rstd, ActivationStats* stats) {
    const int D = A.n_embd;
    Vec xf(x.size());
    rstd.resize(T);
    rmsnorm(x.data(), out_norm, xf.data(), rstd.data(), T, D, A.rms_eps);
    if (stats) {
      stats->accumulate(hf_of(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1), col_sum_sq(xf.data(), T, D), T);
      if (stats->second_moments) add_moment(*stats, hf_of(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1), xf.data(), D);
    }
    return xf;
  }

  std::vector<float> logits(std::span<const int32_t> tokens, const MaskSet* masks) {
    setup(static_cast<int>(tokens.size()));
    Vec rstd;
    Vec xf = final_norm(run_layers(embed(tokens), masks, nullptr, nullptr), rstd, nullptr);
    Vec out(size_t(T) * A.n_vocab);
    linear(xf.data(), output, (const F*)nullptr, out.data(), T, A.n_embd, A.n_vocab);
    return std::vector<float>(out.begin(), out.end());
  }

  // Cross-entropy of positions first..T-2, in row blocks so the [rows, vocab] logits stay
  // small. With dxf, also writes dL/dxf for the mean loss (rows outside the range get 0).
  LossResult head_loss(const Vec& xf, std::span<const int32_t> tokens, int first, std::vector<double>* nll, Vec* dxf,
                       ActivationStats* stats = nullptr) {
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
      linear(xf.data() + size_t(p0) * D, output, (const F*)nullptr, lg.data(), rows, D, V);
      par_for(rows, 20.0 * V, [&](int i) {
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
      if (dxf) linear_back(lg.data(), output, dxf->data() + size_t(p0) * D, rows, D, V, false);
      if (dxf && stats)  // dL/dlogits of these rows: the output projection's row factor
        stats->accumulate_output_grad(hf_of(A.tie_embeddings ? Role::TokenEmbd : Role::Output, -1),
                                      scaled(col_sum_sq(lg.data(), rows, V)), rows);
    }
    return r;
  }

  LossResult loss(std::span<const int32_t> tokens, int first, const MaskSet* masks, ActivationStats* stats,
                  std::vector<double>* nll) {
    setup(static_cast<int>(tokens.size()));
    Vec rstd;
    Vec xf = final_norm(run_layers(embed(tokens), masks, stats, nullptr), rstd, stats);
    return head_loss(xf, tokens, first, nll, nullptr);
  }

  LossResult loss_and_grads(std::span<const int32_t> tokens, int first, const MaskSet& masks, MaskSet& grads,
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
    rmsnorm_back(x.data(), out_norm, rstd.data(), dxf.data(), dx.data(), T, A.n_embd);
    Acts& a = acts;
    for (int l = A.n_layer() - 1; l >= 0; --l) {
      const auto held = layer(l);  // keeps the layer's weights alive for this iteration
      const LayerW<F>& w = *held;
      forward_layer(l, w, checkpoints[l].data(), &masks, a, nullptr);  // recompute from the checkpoint
      backward_layer(l, w, checkpoints[l].data(), &masks, a, dx, grads, stats);
      Vec().swap(checkpoints[l]);
    }
    // An untied embedding is a lookup: a linear map of the one-hot token, so its Fisher factors
    // are the token frequencies (per row) and the gradient at the embedding output (per column).
    if (stats && !A.tie_embeddings) {
      std::vector<double> counts(A.n_vocab, 0.0);
      for (int32_t t : tokens) counts[t] += 1;
      const std::string name = hf_of(Role::TokenEmbd, -1);
      stats->accumulate_output_grad(name, counts, T);
      stats->accumulate(name, scaled(col_sum_sq(dx.data(), T, A.n_embd)), T);
    }
    return r;
  }

  // Transformer::mask_importance_by_layer. Blocks: checkpoint (l, c) is the input of layer l
  // of chunk c (l = L: the last residual), and each chunk's dL/dx while the backward walks
  // down the layers. Gradients are kept first when memory is short: each is read and written
  // once per layer, a checkpoint only twice in all.
  LossResult grads_by_layer(std::span<const int32_t> tokens, int n_ctx, int c0, int c1, const MaskSet& masks,
                            MaskImportance& importance, ActivationStats* stats, const LayerMajorOptions& o, LayerMajorReport* rep) {
    setup(n_ctx);
    const int L = A.n_layer(), n = c1 - c0, D = A.n_embd;
    const size_t TD = size_t(T) * D;
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

    Vec x(TD), dx(TD);
    for (int c = 0; c < n; ++c) put(cks, ck(0, c), embed(chunk(c)));
    Acts& a = acts;
    for (int l = 0; l < L; ++l) {
      const auto held = layer(l);  // this layer's weights, for every chunk
      const F m_mlp = layer_masks(&masks, l).mlp;
      for (int c = 0; c < n; ++c) {
        get(cks, ck(l, c), x);
        forward_layer(l, *held, x.data(), &masks, a, stats);
        residual_out(a, m_mlp, x.data());
        put(cks, ck(l + 1, c), x);
        step();
      }
    }
    grad_scale2 = double(T - 1) * double(T - 1);
    LossResult r;
    Vec rstd, dxf;
    for (int c = 0; c < n; ++c) {
      get(cks, ck(L, c), x);
      cks.drop(ck(L, c));
      const Vec xf = final_norm(x, rstd, stats);
      const LossResult lr = head_loss(xf, chunk(c), 0, nullptr, &dxf, stats);
      r.nll_sum += lr.nll_sum, r.count += lr.count;
      std::fill(dx.begin(), dx.end(), F(0));
      rmsnorm_back(x.data(), out_norm, rstd.data(), dxf.data(), dx.data(), T, D);
      put(dxs, c, dx);
      step();
    }
    MaskSet grads = MaskSet::filled(A, 0.0);
    for (int l = L - 1; l >= 0; --l) {
      const auto held = layer(l);
      for (int c = 0; c < n; ++c) {
        get(cks, ck(l, c), x);
        get(dxs, c, dx);
        std::fill(grads.head[l].begin(), grads.head[l].end(), 0.0);
        std::fill(grads.kv[l].begin(), grads.kv[l].end(), 0.0);
        std::fill(grads.ffn[l].begin(), grads.ffn[l].end(), 0.0);
        grads.attn[l] = grads.mlp[l] = 0.0;
        forward_layer(l, *held, x.data(), &masks, a, nullptr);  // recompute from the checkpoint
        backward_layer(l, *held, x.data(), &masks, a, dx, grads, stats);
        importance.add_layer(l, masks, grads);
        put(dxs, c, dx);
        cks.drop(ck(l, c));
        step();
      }
    }
    if (stats && !A.tie_embeddings)  // as loss_and_grads: the lookup's Fisher factors
      for (int c = 0; c < n; ++c) {
        get(dxs, c, dx);
        std::vector<double> counts(A.n_vocab, 0.0);
        for (int32_t t : chunk(c)) counts[t] += 1;
        const std::string name = hf_of(Role::TokenEmbd, -1);
        stats->accumulate_output_grad(name, counts, T);
        stats->accumulate(name, scaled(col_sum_sq(dx.data(), T, D)), T);
      }
    importance.add_chunks(n);
    if (rep) {
      rep->activation_memory_bytes = dxs.memory_bytes() + cks.memory_bytes();
      rep->scratch_bytes_peak = dxs.scratch_bytes_peak() + cks.scratch_bytes_peak();
      rep->scratch_bytes_written = dxs.scratch_bytes_written() + cks.scratch_bytes_written();
      rep->scratch_bytes_read = dxs.scratch_bytes_read() + cks.scratch_bytes_read();
    }
    return r;
  }

  // Output gradients at the per-token scale: the loss is a mean over the n predictions of a
  // chunk, so n dL/dy is what one token's loss sends back (n^2 on squares).
  double grad_scale2 = 1;
  std::vector<double> scaled(std::vector<double> v) const {
    for (double& x : v) x *= grad_scale2;
    return v;
  }
};

struct Transformer::Impl {
  tbb::task_arena arena;
  int threads;
  Engine<float> f32;
  std::unique_ptr<Engine<double>> f64;
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
  if (opt_.precision == Precision::F64) impl_->f64 = std::make_unique<Engine<double>>(*weights_);
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
    return impl_->f64 ? impl_->f64->grads_by_layer(tokens, n_ctx, c0, c1, ones, importance, stats, opt, report)
                      : impl_->f32.grads_by_layer(tokens, n_ctx, c0, c1, ones, importance, stats, opt, report);
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
  // Acts: xn1 q k v o att y_attn x_mid xn2 g u a h y_mlp; Grads: dy dh dg du dxn datt dq dk dv.
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
