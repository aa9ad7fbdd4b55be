// The float reference model's weights: arch_from_checkpoint (per-layer widths from the tensor
// shapes), the shape checks, and the two loaders (SafetensorsWeights: converted from a
// checkpoint, kept or streamed; InMemoryWeights).
#include "core/model/weights.hpp"

#include "core/base/error.hpp"

namespace squish {

using arch::Role;

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
    s.n_head = heads(arch::hf_name(Role::AttnQ, l));
    s.n_head_kv = heads(arch::hf_name(Role::AttnK, l));
    s.n_ff = static_cast<int>(rows(arch::hf_name(Role::FfnGate, l)));
    if (s.n_head <= 0 || s.n_ff <= 0) fail(ExitCode::InputData, "{}: layer {} has an empty attention or FFN", st.root(), l);
  }
  a.validate(st.root());
  return a;
}

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
  check_size(g.tok_embd, V * D, origin, arch::hf_name(Role::TokenEmbd, -1));
  check_size(g.out_norm, D, origin, arch::hf_name(Role::OutputNorm, -1));
  if (!g.lm_head.empty()) check_size(g.lm_head, V * D, origin, arch::hf_name(Role::Output, -1));
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
    const SafetensorsEntry& e = w->st_.at(arch::hf_name(r, -1));
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

}  // namespace squish
