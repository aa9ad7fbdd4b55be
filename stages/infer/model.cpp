#include "stages/infer/model.hpp"

#include "core/gguf/hf_to_gguf.hpp"
#include "core/quant/blocks.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/vec_dot.hpp"
#include "core/runtime/error.hpp"

#include <cblas.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <span>
#include <utility>

namespace squish::infer {
namespace {

// A weight matrix [n_out rows of n_in] from the file; checks its shape and that we can run it.
Weight weight_of(const gguf::Reader& r, const std::string& name, int64_t n_in, int64_t n_out) {
  const gguf::TensorInfo& t = r.at(name);
  if (t.ne.size() != 2 || t.ne[0] != n_in || t.ne[1] != n_out)
    fail(ExitCode::InputData, "{}: tensor '{}' has shape [{}], expected [{}, {}]", r.path(), name,
         fmt::format("{}", fmt::join(t.ne, ", ")), n_in, n_out);
  if (!quantize_supported(t.type))
    fail(ExitCode::InputData, "{}: tensor '{}' has type {}, which Squish cannot run", r.path(), name, ggml_type_name(t.type));
  try {
    (void)vec_dot_type(t.type);
  } catch (const Error&) {
    fail(ExitCode::InputData, "{}: tensor '{}' has type {}, which has no dot kernel", r.path(), name, ggml_type_name(t.type));
  }
  Weight w;
  w.type = t.type;
  w.n_in = n_in;
  w.n_out = n_out;
  w.data = t.data.data();
  w.row_bytes = ggml_row_size(t.type, n_in);
  return w;
}

// A 1-D tensor of n values as floats (norm weights, biases: F32 in GGUFs, F16 accepted).
std::vector<float> vector_of(const gguf::Reader& r, const std::string& name, int64_t n) {
  const gguf::TensorInfo& t = r.at(name);
  if (t.ne.size() != 1 || t.ne[0] != n)
    fail(ExitCode::InputData, "{}: tensor '{}' has shape [{}], expected [{}]", r.path(), name,
         fmt::format("{}", fmt::join(t.ne, ", ")), n);
  if (!quantize_supported(t.type))
    fail(ExitCode::InputData, "{}: tensor '{}' has unsupported type {}", r.path(), name, ggml_type_name(t.type));
  std::vector<float> v(n);
  dequantize_row(t.type, t.data.data(), v.data(), n);
  return v;
}

std::string blk(int l, const char* suffix) { return fmt::format("blk.{}.{}", l, suffix); }

}  // namespace

std::shared_ptr<const Model> Model::load(const std::string& path) {
  auto m = std::make_shared<Model>();
  m->reader_ = gguf::Reader::open(path);
  const gguf::Reader& r = m->reader_;
  m->arch_ = r.get_string("general.architecture", "");
  if (m->arch_ != "llama" && m->arch_ != "qwen2")
    fail(ExitCode::InputData, "{}: architecture '{}' is not supported (llama, qwen2)", path, m->arch_);
  const std::string& a = m->arch_;
  // llama.cpp: LLAMA_ROPE_TYPE_NORM for llama (its converter permutes q/k to adjacent pairs),
  // NEOX for qwen2 (HF rotate-half layout kept as is).
  m->rope_type_ = a == "qwen2" ? RopeType::Neox : RopeType::Normal;

  const int n_layer = static_cast<int>(r.get_int(a + ".block_count", 0));
  m->n_embd_ = static_cast<int>(r.get_int(a + ".embedding_length", 0));
  if (n_layer <= 0 || m->n_embd_ <= 0) fail(ExitCode::InputData, "{}: missing or invalid {}.block_count / {}.embedding_length", path, a, a);
  m->n_ctx_train_ = static_cast<int>(r.get_int(a + ".context_length", 0));
  m->rope_base_ = static_cast<float>(r.get_float(a + ".rope.freq_base", 10000.0));
  m->rms_eps_ = static_cast<float>(r.get_float(a + ".attention.layer_norm_rms_epsilon", 1e-5));

  const std::vector<int> heads = gguf::per_layer_values(r, a + ".attention.head_count", n_layer, 0);
  std::vector<int> heads_kv = gguf::per_layer_values(r, a + ".attention.head_count_kv", n_layer, -1);
  for (int l = 0; l < n_layer; ++l)
    if (heads_kv[l] < 0) heads_kv[l] = heads[l];  // absent: no grouping
  const std::vector<int> ffs = gguf::per_layer_values(r, a + ".feed_forward_length", n_layer, 0);

  // head_dim: key_length when written; else from the first layer's q rows.
  m->head_dim_ = static_cast<int>(r.get_int(a + ".attention.key_length", 0));
  if (m->head_dim_ == 0) {
    for (int l = 0; l < n_layer && m->head_dim_ == 0; ++l)
      if (heads[l] > 0) {
        const auto* q = r.find(blk(l, "attn_q.weight"));
        m->head_dim_ = q && q->ne.size() == 2 ? static_cast<int>(q->ne[1] / heads[l]) : m->n_embd_ / heads[l];
      }
  }
  const int64_t vlen = r.get_int(a + ".attention.value_length", m->head_dim_);
  if (m->head_dim_ <= 0 || m->head_dim_ % 2 != 0 || vlen != m->head_dim_)
    fail(ExitCode::InputData, "{}: invalid head size (key_length {}, value_length {})", path, m->head_dim_, vlen);

  const gguf::TensorInfo& emb = r.at("token_embd.weight");
  if (emb.ne.size() != 2) fail(ExitCode::InputData, "{}: token_embd.weight is not a matrix", path);
  m->n_vocab_ = static_cast<int>(emb.ne[1]);
  m->tok_embd_ = weight_of(r, "token_embd.weight", m->n_embd_, m->n_vocab_);
  m->tied_ = r.find("output.weight") == nullptr;
  m->output_ = m->tied_ ? m->tok_embd_ : weight_of(r, "output.weight", m->n_embd_, m->n_vocab_);
  m->output_norm_ = vector_of(r, "output_norm.weight", m->n_embd_);

  const int64_t E = m->n_embd_, D = m->head_dim_;
  for (int l = 0; l < n_layer; ++l) {
    Layer L;
    L.n_head = heads[l];
    L.n_head_kv = heads_kv[l];
    if (L.n_head > 0) {
      if (L.n_head_kv <= 0 || L.n_head % L.n_head_kv != 0)
        fail(ExitCode::InputData, "{}: layer {}: {} query heads are not a multiple of {} KV heads", path, l, L.n_head, L.n_head_kv);
      L.attn_norm = vector_of(r, blk(l, "attn_norm.weight"), E);
      L.wq = weight_of(r, blk(l, "attn_q.weight"), E, L.n_head * D);
      L.wk = weight_of(r, blk(l, "attn_k.weight"), E, L.n_head_kv * D);
      L.wv = weight_of(r, blk(l, "attn_v.weight"), E, L.n_head_kv * D);
      L.wo = weight_of(r, blk(l, "attn_output.weight"), L.n_head * D, E);
      if (r.find(blk(l, "attn_q.bias"))) {
        L.bq = vector_of(r, blk(l, "attn_q.bias"), L.n_head * D);
        L.bk = vector_of(r, blk(l, "attn_k.bias"), L.n_head_kv * D);
        L.bv = vector_of(r, blk(l, "attn_v.bias"), L.n_head_kv * D);
      }
    }
    // The FFN width is the gate's row count; a feed_forward_length key must agree with it.
    if (const auto* g = r.find(blk(l, "ffn_gate.weight")); g && g->ne.size() == 2) L.n_ff = static_cast<int>(g->ne[1]);
    if (ffs[l] != 0 && ffs[l] != L.n_ff)
      fail(ExitCode::InputData, "{}: layer {}: feed_forward_length {} but ffn_gate has {} rows", path, l, ffs[l], L.n_ff);
    if (L.n_ff > 0) {
      L.ffn_norm = vector_of(r, blk(l, "ffn_norm.weight"), E);
      L.w_gate = weight_of(r, blk(l, "ffn_gate.weight"), E, L.n_ff);
      L.w_up = weight_of(r, blk(l, "ffn_up.weight"), E, L.n_ff);
      L.w_down = weight_of(r, blk(l, "ffn_down.weight"), L.n_ff, E);
    }
    m->layers_.push_back(std::move(L));
  }
  return m;
}

size_t Model::weight_bytes_per_token() const {
  size_t b = output_.nbytes() + tok_embd_.row_bytes;
  for (const auto& L : layers_)
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) b += w->nbytes();
  return b;
}

void embedding_row(const Weight& w, int32_t token, float* out) {
  if (token < 0 || token >= w.n_out) fail(ExitCode::InputData, "token id {} is outside the vocabulary ({})", token, w.n_out);
  dequantize_row(w.type, w.row(token), out, w.n_in);
}

// ---- matrix products -------------------------------------------------------------------------

void matmul_quantized(const Weight& w, const float* x, int T, float* y, bool accumulate) {
  const size_t act = activation_row_size(w.type, w.n_in);
  std::vector<std::byte> xq(act * T);
  tbb::parallel_for(0, T, [&](int t) { quantize_activations(w.type, x + size_t(t) * w.n_in, xq.data() + act * t, w.n_in); });
  // Blocks of output rows per task: each weight block is read once for all T tokens.
  const int64_t block = 16;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, (w.n_out + block - 1) / block), [&](const tbb::blocked_range<int64_t>& br) {
    float tmp[block];
    for (int64_t b = br.begin(); b < br.end(); ++b) {
      const int64_t r0 = b * block, rows = std::min(block, w.n_out - r0);
      for (int t = 0; t < T; ++t) {
        float* yt = y + size_t(t) * w.n_out + r0;
        if (!accumulate) {
          matvec(w.type, rows, w.n_in, w.row(r0), xq.data() + act * t, yt);
        } else {
          matvec(w.type, rows, w.n_in, w.row(r0), xq.data() + act * t, tmp);
          for (int64_t i = 0; i < rows; ++i) yt[i] += tmp[i];
        }
      }
    }
  }, tbb::static_partitioner());  // equal row ranges per thread: no stealing overhead per token
}

// The activations as the integer dots see them: quantized to the weight's dot type (Q8_0 / Q8_K)
// and expanded back to floats. A float product of dequantized weights with these equals ggml's
// integer-dot result up to rounding, so the sgemm path keeps llama.cpp's arithmetic.
static const float* rounded_activations(const Weight& w, const float* x, int T, std::vector<float>& out) {
  const GGMLType dt = vec_dot_type(w.type);
  if (dt != GGMLType::Q8_0 && dt != GGMLType::Q8_K) return x;  // float weights: F32 activations
  out.resize(size_t(T) * w.n_in);
  const size_t act = activation_row_size(w.type, w.n_in);
  tbb::parallel_for(0, T, [&](int t) {
    thread_local std::vector<std::byte> q;
    q.resize(act);
    quantize_activations(w.type, x + size_t(t) * w.n_in, q.data(), w.n_in);
    float* o = out.data() + size_t(t) * w.n_in;
    if (dt == GGMLType::Q8_0) {
      dequantize_row(GGMLType::Q8_0, q.data(), o, w.n_in);
    } else {
      const auto* b = reinterpret_cast<const quant::BlockQ8_K*>(q.data());
      for (int64_t i = 0; i < w.n_in / kQK_K; ++i)
        for (int j = 0; j < kQK_K; ++j) o[i * kQK_K + j] = b[i].d * b[i].qs[j];
    }
  });
  return out.data();
}

// Batched: dequantize a block of rows to F32 (once per chunk) and sgemm the chunk with it.
static void matmul_sgemm(const Weight& w, const float* x_in, int T, float* y, bool accumulate) {
  std::vector<float> xr;
  const float* x = rounded_activations(w, x_in, T, xr);
  const int64_t block = 64;
  const float beta = accumulate ? 1.f : 0.f;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, (w.n_out + block - 1) / block, 1), [&](const tbb::blocked_range<int64_t>& br) {
    thread_local std::vector<float> wf;
    for (int64_t b = br.begin(); b < br.end(); ++b) {
      const int64_t r0 = b * block, rows = std::min(block, w.n_out - r0);
      const float* wb;
      if (w.type == GGMLType::F32) {
        wb = reinterpret_cast<const float*>(w.row(r0));
      } else {
        wf.resize(size_t(block) * w.n_in);
        for (int64_t i = 0; i < rows; ++i) dequantize_row(w.type, w.row(r0 + i), wf.data() + i * w.n_in, w.n_in);
        wb = wf.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, static_cast<int>(rows), static_cast<int>(w.n_in), 1.f, x,
                  static_cast<int>(w.n_in), wb, static_cast<int>(w.n_in), beta, y + r0, static_cast<int>(w.n_out));
    }
  }, tbb::simple_partitioner());
}

void matmul(const Weight& w, const float* x, int T, float* y, bool accumulate) {
  if (T >= kBatchThreshold) matmul_sgemm(w, x, T, y, accumulate);
  else matmul_quantized(w, x, T, y, accumulate);
}

// ---- single-token decode ---------------------------------------------------------------------
// For one token a 28M-parameter model's matvec is tens of microseconds of work, so a fork/join
// per matrix costs about as much as the product. Decode therefore quantizes each input once per
// dot type (q/k/v share the normed input, gate/up too) and runs all products that share an input
// in ONE parallel region, split by weight bytes into one contiguous range per thread.

namespace {

struct MatvecJob {
  const Weight* w;
  const std::byte* xq;  // activations prepared for w.type
  float* y;
  bool accumulate;
};

// A run of rows of one job; the unit the per-thread ranges are cut from.
struct RowChunk {
  int job;
  int64_t r0, rows;
  size_t bytes_before;  // weight bytes of all earlier chunks (for byte-balanced splitting)
};

// One input vector prepared for the weights that read it: quantized once per dot type (a
// Q4_K_M layer mixes Q4_K and Q6_K, which share Q8_K). Buffers are reused across tokens.
struct PreparedInput {
  static constexpr int kMax = 3;  // q/k/v: at most three weights per input
  std::vector<std::byte> buf[kMax];
  GGMLType type[kMax]{};
  int used = 0;
  const float* x = nullptr;

  void reset(const float* x_in) { x = x_in, used = 0; }
  // Every weight passed between two resets reads the same x (so has the same n_in).
  const std::byte* get(const Weight& w) {
    const GGMLType dt = vec_dot_type(w.type);
    for (int i = 0; i < used; ++i)
      if (type[i] == dt) return buf[i].data();
    buf[used].resize(activation_row_size(w.type, w.n_in));
    quantize_activations(w.type, x, buf[used].data(), w.n_in);
    type[used] = dt;
    return buf[used++].data();
  }
};

}  // namespace

// Runs `jobs` (independent matvecs) in one parallel region of the current arena.
static void run_matvecs(std::span<const MatvecJob> jobs, std::vector<RowChunk>& chunks) {
  constexpr int64_t kRows = 16;  // fine enough to balance, coarse enough to stay cheap
  chunks.clear();
  size_t total = 0;
  for (int j = 0; j < static_cast<int>(jobs.size()); ++j) {
    const Weight& w = *jobs[j].w;
    for (int64_t r0 = 0; r0 < w.n_out; r0 += kRows) {
      const int64_t rows = std::min(kRows, w.n_out - r0);
      chunks.push_back({j, r0, rows, total});
      total += w.row_bytes * size_t(rows);
    }
  }
  auto run = [&](size_t c0, size_t c1) {
    float tmp[kRows];
    for (size_t c = c0; c < c1; ++c) {
      const RowChunk& ch = chunks[c];
      const MatvecJob& jb = jobs[ch.job];
      const Weight& w = *jb.w;
      float* y = jb.y + ch.r0;
      if (!jb.accumulate) {
        matvec(w.type, ch.rows, w.n_in, w.row(ch.r0), jb.xq, y);
      } else {
        matvec(w.type, ch.rows, w.n_in, w.row(ch.r0), jb.xq, tmp);
        for (int64_t i = 0; i < ch.rows; ++i) y[i] += tmp[i];
      }
    }
  };
  const int P = std::min<int>(tbb::this_task_arena::max_concurrency(), static_cast<int>(chunks.size()));
  if (P <= 1) return run(0, chunks.size());
  // Thread p takes the chunks starting in its 1/P share of the bytes.
  auto first_chunk = [&](int p) {
    const size_t bound = total / P * p + total % P * p / P;
    return size_t(std::lower_bound(chunks.begin(), chunks.end(), bound,
                                   [](const RowChunk& c, size_t b) { return c.bytes_before < b; }) - chunks.begin());
  };
  tbb::parallel_for(0, P, [&](int p) { run(first_chunk(p), p + 1 == P ? chunks.size() : first_chunk(p + 1)); },
                    tbb::static_partitioner());
}

// ---- session ---------------------------------------------------------------------------------

struct Session::Impl {
  tbb::task_arena arena;
  std::vector<std::vector<float>> k_cache, v_cache;  // per layer: [n_ctx][n_head_kv * head_dim]
  std::vector<float> x, xn, q, k, v, att, gate, up;
  std::vector<float> rope_inv_freq;                  // base^(-2i/head_dim)
  PreparedInput act;                                 // decode: the current matvec input, quantized
  std::vector<RowChunk> chunks;                      // decode: run_matvecs' work list
  explicit Impl(int threads) : arena(threads > 0 ? threads : tbb::task_arena::automatic) {}
};

Session::Session(std::shared_ptr<const Model> model, int n_ctx, int threads)
    : model_(std::move(model)), n_ctx_(n_ctx), impl_(std::make_unique<Impl>(threads)) {
  if (n_ctx <= 0) fail(ExitCode::Usage, "context size must be positive (got {})", n_ctx);
  // Parallelism comes from TBB; each sgemm call runs on the calling thread.
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
  const int D = model_->head_dim();
  for (const auto& L : model_->layers()) {
    impl_->k_cache.emplace_back(size_t(n_ctx) * L.n_head_kv * D);
    impl_->v_cache.emplace_back(size_t(n_ctx) * L.n_head_kv * D);
  }
  for (int i = 0; i < D / 2; ++i)
    impl_->rope_inv_freq.push_back(static_cast<float>(std::pow(double(model_->rope_base()), -2.0 * i / D)));
}

Session::~Session() = default;

namespace {

void rms_norm(const float* x, const float* w, float* y, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float scale = 1.f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

// Rotates every head of one token's q or k in place at position `pos`.
void rope(float* v, int n_heads, int D, int pos, RopeType type, const std::vector<float>& inv_freq) {
  for (int i = 0; i < D / 2; ++i) {
    const float theta = pos * inv_freq[i];
    const float c = std::cos(theta), s = std::sin(theta);
    for (int h = 0; h < n_heads; ++h) {
      float* hv = v + h * D;
      // Normal: adjacent pairs (2i, 2i+1); NEOX: halves (i, i + D/2).
      const int a = type == RopeType::Normal ? 2 * i : i;
      const int b = type == RopeType::Normal ? 2 * i + 1 : i + D / 2;
      const float x0 = hv[a], x1 = hv[b];
      hv[a] = x0 * c - x1 * s;
      hv[b] = x0 * s + x1 * c;
    }
  }
}

void add_bias(float* y, const std::vector<float>& b, int T) {
  if (b.empty()) return;
  const size_t n = b.size();
  for (int t = 0; t < T; ++t)
    for (size_t i = 0; i < n; ++i) y[t * n + i] += b[i];
}

}  // namespace

void Session::eval(std::span<const int32_t> tokens, int logits_from, std::vector<float>& logits) {
  const Model& m = *model_;
  const int T = static_cast<int>(tokens.size());
  if (T == 0) return;
  if (n_past_ + T > n_ctx_) fail(ExitCode::Runtime, "context overflow: {} + {} tokens > n_ctx {}", n_past_, T, n_ctx_);
  if (logits_from < 0 || logits_from > T) fail(ExitCode::Runtime, "logits_from {} outside [0, {}]", logits_from, T);
  const int E = m.n_embd(), D = m.head_dim(), p0 = n_past_;
  Impl& s = *impl_;
  auto mm = [&](const Weight& w, const float* x, float* y, bool acc) {
    if (quantized_batches_) matmul_quantized(w, x, T, y, acc);
    else matmul(w, x, T, y, acc);
  };
  // Single-token decode: same arithmetic as matmul_quantized (one quantization per input and dot
  // type, per-row vec_dot), but products sharing an input run in one parallel region.
  const bool decode = T == 1;
  auto decode_mm = [&](const float* x, std::initializer_list<std::pair<const Weight*, float*>> outs, bool acc) {
    s.act.reset(x);
    MatvecJob jobs[PreparedInput::kMax];
    int n = 0;
    for (auto [w, y] : outs) jobs[n++] = {w, s.act.get(*w), y, acc};
    run_matvecs(std::span(jobs, n), s.chunks);
  };
  // Loops over [0, n) in the arena; serial when it has one thread (no scheduling cost at all).
  auto par_for = [](int n, auto&& f) {
    if (tbb::this_task_arena::max_concurrency() == 1) {
      for (int i = 0; i < n; ++i) f(i);
    } else {
      tbb::parallel_for(0, n, f, tbb::static_partitioner());
    }
  };

  s.arena.execute([&] {
    s.x.resize(size_t(T) * E);
    s.xn.resize(size_t(T) * E);
    par_for(T, [&](int t) { embedding_row(m.tok_embd(), tokens[t], s.x.data() + size_t(t) * E); });

    for (int il = 0; il < m.n_layer(); ++il) {
      const Layer& L = m.layers()[il];
      if (L.n_head > 0) {
        const int HQ = L.n_head * D, HK = L.n_head_kv * D;
        for (int t = 0; t < T; ++t) rms_norm(&s.x[size_t(t) * E], L.attn_norm.data(), &s.xn[size_t(t) * E], E, m.rms_eps());
        s.q.resize(size_t(T) * HQ);
        s.k.resize(size_t(T) * HK);
        s.v.resize(size_t(T) * HK);
        if (decode) {
          decode_mm(s.xn.data(), {{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, false);
        } else {
          mm(L.wq, s.xn.data(), s.q.data(), false);
          mm(L.wk, s.xn.data(), s.k.data(), false);
          mm(L.wv, s.xn.data(), s.v.data(), false);
        }
        add_bias(s.q.data(), L.bq, T);
        add_bias(s.k.data(), L.bk, T);
        add_bias(s.v.data(), L.bv, T);
        float* kc = s.k_cache[il].data();
        float* vc = s.v_cache[il].data();
        for (int t = 0; t < T; ++t) {
          rope(&s.q[size_t(t) * HQ], L.n_head, D, p0 + t, m.rope_type(), s.rope_inv_freq);
          rope(&s.k[size_t(t) * HK], L.n_head_kv, D, p0 + t, m.rope_type(), s.rope_inv_freq);
        }
        std::memcpy(kc + size_t(p0) * HK, s.k.data(), sizeof(float) * T * HK);
        std::memcpy(vc + size_t(p0) * HK, s.v.data(), sizeof(float) * T * HK);

        // Attention per (query head, block of queries): S = Q K_g^T (scaled) over the keys the
        // block can see, causal softmax, O = P V_g. Blocks skip most of the masked triangle.
        s.att.resize(size_t(T) * HQ);
        const int group = L.n_head / L.n_head_kv, qb = 64, n_qb = (T + qb - 1) / qb;
        const float scale = 1.f / std::sqrt(static_cast<float>(D));
        par_for(L.n_head * n_qb, [&](int task) {
          const int h = task / n_qb, t0 = (task % n_qb) * qb, nt = std::min(qb, T - t0);
          const int n_kv = p0 + t0 + nt;  // keys visible to the last query of the block
          thread_local std::vector<float> S;
          S.resize(size_t(nt) * n_kv);
          const int g = h / group;
          const float* qh = &s.q[size_t(t0) * HQ + h * D];
          if (nt >= 8) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nt, n_kv, D, scale, qh, HQ, kc + g * D, HK, 0.f, S.data(), n_kv);
          } else {  // decode: plain dots (BLAS packing costs more than the work for one row)
            for (int t = 0; t < nt; ++t)
              for (int j = 0; j < n_kv; ++j) {
                const float* kj = kc + size_t(j) * HK + g * D;
                float d = 0;
                for (int i = 0; i < D; ++i) d += qh[size_t(t) * HQ + i] * kj[i];
                S[size_t(t) * n_kv + j] = d * scale;
              }
          }
          for (int t = 0; t < nt; ++t) {
            float* row = &S[size_t(t) * n_kv];
            const int n = p0 + t0 + t + 1;  // keys this query may see
            float mx = row[0];
            for (int j = 1; j < n; ++j) mx = std::max(mx, row[j]);
            float sum = 0;
            for (int j = 0; j < n; ++j) sum += row[j] = std::exp(row[j] - mx);
            const float inv = 1.f / sum;
            for (int j = 0; j < n; ++j) row[j] *= inv;
            for (int j = n; j < n_kv; ++j) row[j] = 0.f;
          }
          float* oh = &s.att[size_t(t0) * HQ + h * D];
          if (nt >= 8) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nt, D, n_kv, 1.f, S.data(), n_kv, vc + g * D, HK, 0.f, oh, HQ);
          } else {
            for (int t = 0; t < nt; ++t) {
              float* o = oh + size_t(t) * HQ;
              std::fill(o, o + D, 0.f);
              for (int j = 0; j < n_kv; ++j) {
                const float p = S[size_t(t) * n_kv + j];
                const float* vj = vc + size_t(j) * HK + g * D;
                for (int i = 0; i < D; ++i) o[i] += p * vj[i];
              }
            }
          }
        });
        if (decode) decode_mm(s.att.data(), {{&L.wo, s.x.data()}}, true);
        else mm(L.wo, s.att.data(), s.x.data(), true);
      }
      if (L.n_ff > 0) {
        for (int t = 0; t < T; ++t) rms_norm(&s.x[size_t(t) * E], L.ffn_norm.data(), &s.xn[size_t(t) * E], E, m.rms_eps());
        const size_t nf = size_t(T) * L.n_ff;
        s.gate.resize(nf);
        s.up.resize(nf);
        if (decode) {
          decode_mm(s.xn.data(), {{&L.w_gate, s.gate.data()}, {&L.w_up, s.up.data()}}, false);
        } else {
          mm(L.w_gate, s.xn.data(), s.gate.data(), false);
          mm(L.w_up, s.xn.data(), s.up.data(), false);
        }
        for (size_t i = 0; i < nf; ++i) {
          const float g = s.gate[i];
          s.gate[i] = g / (1.f + std::exp(-g)) * s.up[i];  // silu(gate) * up
        }
        if (decode) decode_mm(s.gate.data(), {{&L.w_down, s.x.data()}}, true);
        else mm(L.w_down, s.gate.data(), s.x.data(), true);
      }
    }

    const int n_out = T - logits_from;
    if (n_out > 0) {
      for (int t = logits_from; t < T; ++t)
        rms_norm(&s.x[size_t(t) * E], m.output_norm().data(), &s.xn[size_t(t - logits_from) * E], E, m.rms_eps());
      logits.resize(size_t(n_out) * m.n_vocab());
      if (n_out == 1) decode_mm(s.xn.data(), {{&m.output(), logits.data()}}, false);
      else if (quantized_batches_) matmul_quantized(m.output(), s.xn.data(), n_out, logits.data(), false);
      else matmul(m.output(), s.xn.data(), n_out, logits.data(), false);
    } else {
      logits.clear();
    }
  });
  n_past_ += T;
}

}  // namespace squish::infer
