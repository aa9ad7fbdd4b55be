// What the score stage measures: MaskSet's shape and order, ActivationStats' sums (columns,
// output rows, means, second moments by blocked GEMMs) and MaskImportance's running Taylor and
// Fisher sums (chunk by chunk or layer by layer, in the same order).
#include "core/model/score_stats.hpp"

#include "core/base/error.hpp"

#include <cblas.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>

namespace squish {

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
  if (m.released) fail(ExitCode::Runtime, "second moments of {}: added to after they were complete and released", input);
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

}  // namespace squish
