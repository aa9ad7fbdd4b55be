#include "core/model/engine.hpp"

#include "core/convert/hf_to_gguf.hpp"
#include "core/quant/blocks.hpp"
#include "core/quant/qgemm.hpp"
#include "core/quant/type_registry.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/row_panels.hpp"
#include "core/quant/vec_dot.hpp"
#include "core/model/kernels.hpp"
#include "core/model/parallel.hpp"
#include "core/base/error.hpp"
#include "core/base/memory.hpp"

#include <cblas.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_reduce.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
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

// NaN or Inf weights do not always reach the logits (a max that drops NaN, an activation
// quantizer that rounds it to 0): they corrupt the output quietly, so a file holding any is
// refused at load. One pass over the scales (quantized types) or values (float types), in
// parallel, before anything runs.
void refuse_non_finite(const gguf::Reader& r) {
  for (const auto& t : r.tensors()) {
    const auto* tr = ggml_type_traits(t.type);
    if (!tr) continue;
    if (plugin_type(t.type)) {  // a plugin's layout: whole rows dequantized and looked at
      const int64_t n = t.ne[0];
      const size_t row_bytes = ggml_row_size(t.type, n);
      const uint64_t bad = tbb::parallel_reduce(
          tbb::blocked_range<int64_t>(0, t.n_rows(), 16), uint64_t{0},
          [&](const tbb::blocked_range<int64_t>& br, uint64_t acc) {
            std::vector<float> row(static_cast<size_t>(n));
            for (int64_t i = br.begin(); i < br.end(); ++i) {
              dequantize_row(t.type, t.data.data() + size_t(i) * row_bytes, row.data(), n);
              for (float v : row) acc += !std::isfinite(v);
            }
            return acc;
          },
          std::plus<>());
      if (bad)
        fail(ExitCode::InputData, "{}: tensor '{}' ({}) dequantizes to {} non-finite values (NaN or Inf): the file is corrupt", r.path(),
             t.name, tr->name, bad);
      continue;
    }
    const size_t step = tr->type_size, blocks = t.data.size() / step, grain = size_t(1) << 16;
    const uint64_t bad = tbb::parallel_reduce(
        tbb::blocked_range<size_t>(0, blocks, grain), uint64_t{0},
        [&](const tbb::blocked_range<size_t>& br, uint64_t acc) {
          return acc + count_non_finite(t.type, t.data.subspan(br.begin() * step, br.size() * step)).value_or(0);
        },
        std::plus<>());
    if (bad)
      fail(ExitCode::InputData, "{}: tensor '{}' ({}) holds {} non-finite {} (NaN or Inf): the file is corrupt", r.path(), t.name,
           tr->name, bad, tr->quantized ? "block scales" : "values");
  }
}

}  // namespace

std::shared_ptr<const Model> Model::load(const std::string& path) {
  auto m = std::make_shared<Model>();
  m->reader_ = gguf::Reader::open(path);
  const gguf::Reader& r = m->reader_;
  m->arch_ = arch::ModelArch::from_gguf(r);
  const arch::ModelArch& A = m->arch_;
  using arch::Role;
  // Every tensor the architecture implies, with its shape checked, into the engine's slots.
  auto matrix = [&](const arch::TensorDesc& d) {
    const auto ne = d.ne();
    return weight_of(r, d.gguf_name, ne[0], ne[1]);
  };
  auto vec = [&](const arch::TensorDesc& d) { return vector_of(r, d.gguf_name, d.shape[0]); };
  m->layers_.resize(A.n_layer());
  for (const auto& d : arch::tensors_of(A)) {
    Layer* L = d.layer >= 0 ? &m->layers_[d.layer] : nullptr;
    switch (d.kind->role) {
      case Role::TokenEmbd: m->tok_embd_ = matrix(d); break;
      case Role::Output: m->output_ = matrix(d); break;
      case Role::OutputNorm: m->output_norm_ = vec(d); break;
      case Role::RopeFreqs: break;  // read by from_gguf into the architecture
      case Role::AttnNorm: L->attn_norm = vec(d); break;
      case Role::AttnQ: L->wq = matrix(d); break;
      case Role::AttnK: L->wk = matrix(d); break;
      case Role::AttnV: L->wv = matrix(d); break;
      case Role::AttnOut: L->wo = matrix(d); break;
      case Role::BiasQ: L->bq = vec(d); break;
      case Role::BiasK: L->bk = vec(d); break;
      case Role::BiasV: L->bv = vec(d); break;
      case Role::BiasOut: L->bo = vec(d); break;
      case Role::BiasDown: L->b_down = vec(d); break;
      case Role::FfnNorm: L->ffn_norm = vec(d); break;
      case Role::FfnGate: L->w_gate = matrix(d); break;
      case Role::FfnUp: L->w_up = matrix(d); break;
      case Role::FfnDown: L->w_down = matrix(d); break;
    }
  }
  if (A.tie_embeddings) m->output_ = m->tok_embd_;
  refuse_non_finite(r);
  return m;
}

size_t Model::weight_bytes_per_token() const {
  size_t b = output_.nbytes() + tok_embd_.row_bytes;
  for (const auto& L : layers_)
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) b += w->nbytes();
  return b;
}

// Q8_0 matrices are rearranged into 16-row panels (quant/row_panels.hpp) the first time a session
// decodes; perplexity and scoring never pay for it. Each matrix's file pages are released once its
// panels exist, so the peak is the weights plus one matrix, not twice the weights (batches fault
// the pages back in from the page cache when they read them).
void Model::prepare_decode() const {
  std::call_once(decode_once_, [this] {
    // The Model was made non-const by load(); only the panel pointers change, once, here.
    auto* self = const_cast<Model*>(this);
    auto build = [&](Weight& w) {
      const int64_t n_panels = w.n_out / quant::kPanelRows;
      if (!quant::panels_supported(w.type) || n_panels == 0) return;
      const size_t pb = quant::panel_bytes(w.type, w.n_in);
      require_memory(pb * size_t(n_panels), fmt::format("{}: decode layout of a {} x {} matrix", reader_.path(), w.n_out, w.n_in));
      auto buf = std::make_unique<std::byte[]>(pb * size_t(n_panels));
      tbb::parallel_for(int64_t(0), n_panels, [&](int64_t i) {
        quant::pack_panel(w.type, w.n_in, w.row(i * quant::kPanelRows), w.row_bytes, buf.get() + pb * size_t(i));
      });
      w.panels = buf.get();
      self->panel_store_.push_back(std::move(buf));
      if (const auto& map = reader_.mapping())
        map->release(static_cast<size_t>(w.data - map->bytes().data()), w.row_bytes * size_t(n_panels * quant::kPanelRows));
    };
    for (auto& L : self->layers_)
      for (Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) build(*w);
    build(self->output_);  // tok_embd_ keeps its rows: decode reads one per token
  });
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

// Batched: dequantize a block of rows to F32 (once per chunk) and sgemm the chunk with it. Each
// sgemm call repacks the whole activation chunk (T x n_in), so blocks are as large as memory
// allows (up to 8 MiB of F32 rows, one block per thread when that fits): with 64-row blocks the
// repacking cost a quarter of the product on a 1B model.
static void matmul_sgemm(const Weight& w, const float* x_in, int T, float* y, bool accumulate) {
  std::vector<float> xr;
  const float* x = rounded_activations(w, x_in, T, xr);
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  const int64_t cap = std::max<int64_t>(64, (int64_t(8) << 20) / (int64_t(sizeof(float)) * w.n_in));
  const int64_t block = (std::min(cap, (w.n_out + threads - 1) / threads) + 15) / 16 * 16;
  const float beta = accumulate ? 1.f : 0.f;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, (w.n_out + block - 1) / block, 1), [&](const tbb::blocked_range<int64_t>& br) {
    thread_local std::vector<float> wf;
    for (int64_t b = br.begin(); b < br.end(); ++b) {
      const int64_t r0 = b * block, rows = std::min(block, w.n_out - r0);
      const float* wb;
      if (w.type == GGMLType::F32) {
        wb = reinterpret_cast<const float*>(w.row(r0));
      } else {
        wf.resize(size_t(rows) * w.n_in);
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

// y[0, rows) = rows [r0, r0 + rows) of W times the prepared activations; panels where W has them
// (only single-token products get here, after eval() has called Model::prepare_decode).
static void weight_matvec(const Weight& w, int64_t r0, int64_t rows, const void* xq, float* y) {
  if (w.panels && r0 % quant::kPanelRows == 0) {
    const size_t pb = quant::panel_bytes(w.type, w.n_in);
    const int64_t panelled = w.n_out / quant::kPanelRows * quant::kPanelRows;
    for (; rows >= quant::kPanelRows && r0 < panelled; r0 += quant::kPanelRows, rows -= quant::kPanelRows, y += quant::kPanelRows)
      quant::panel_matvec(w.type, w.n_in, w.panels + pb * size_t(r0 / quant::kPanelRows), xq, y);
  }
  if (rows > 0) matvec(w.type, rows, w.n_in, w.row(r0), xq, y);
}

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
        weight_matvec(w, ch.r0, ch.rows, jb.xq, y);
      } else {
        weight_matvec(w, ch.r0, ch.rows, jb.xq, tmp);
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

// Batches of at least this many tokens use the integer GEMM where it runs (below, its padding to
// tiles of 32 tokens costs more than per-token dots save).
constexpr int kQgemmMinTokens = 8;

// y (+)= W x for the prepared batch, rows split between the arena's threads (each decodes its
// weight rows once and multiplies every token tile by them).
static void qgemm_rows(const Weight& w, const quant::QActivations& x, float* y, bool accumulate) {
  const int64_t threads = tbb::this_task_arena::max_concurrency();
  const int64_t chunk = std::max<int64_t>(4, (w.n_out + 4 * threads - 1) / (4 * threads) + 3) / 4 * 4;
  const int64_t n_chunks = (w.n_out + chunk - 1) / chunk;
  tbb::parallel_for(int64_t(0), n_chunks, [&](int64_t c) {
    quant::qgemm(w.type, w.data, static_cast<int64_t>(w.row_bytes), c * chunk, std::min(w.n_out, (c + 1) * chunk), x, y, w.n_out,
                 accumulate);
  }, tbb::static_partitioner());
}

// ---- session ---------------------------------------------------------------------------------

struct Session::Impl {
  tbb::task_arena arena;
  KVCache cache;
  std::vector<float> x, xn, q, k, v, att, gate, up;
  std::vector<float> rope_inv_freq;                  // per rotary pair (arch: base, rope_freqs)
  std::vector<float> rope_cos, rope_sin;             // this chunk's positions
  PreparedInput act;                                 // decode: the current matvec input, quantized
  quant::QActivations qact;                          // batches: the current input, quantized and tiled
  std::vector<RowChunk> chunks;                      // decode: run_matvecs' work list
  Impl(const arch::ModelArch& a, int n_ctx, int threads, KVType kv)
      : arena(threads > 0 ? threads : tbb::task_arena::automatic), cache(a, n_ctx, kv) {}
};

// The cache's memory is checked before it is allocated.
static int checked_context(const Model& m, int n_ctx, KVType kv) {
  if (n_ctx <= 0) fail(ExitCode::Usage, "context size must be positive (got {})", n_ctx);
  require_memory(KVCache::bytes_needed(m.architecture(), n_ctx, kv), fmt::format("{}: a KV cache of {} tokens", m.reader().path(), n_ctx));
  return n_ctx;
}

Session::Session(std::shared_ptr<const Model> model, int n_ctx, int threads, KVType kv)
    : model_(std::move(model)),
      n_ctx_(checked_context(*model_, n_ctx, kv)),
      impl_(std::make_unique<Impl>(model_->architecture(), n_ctx, threads, kv)) {
  impl_->rope_inv_freq = model_->architecture().rope_inv_freq();
}

Session::~Session() = default;

void Session::rewind(int n) {
  if (n < 0 || n > n_past_) fail(ExitCode::Runtime, "rewind to {} outside [0, {}]", n, n_past_);
  n_past_ = n;
}

namespace {

void add_bias(float* y, const std::vector<float>& b, int T) {
  if (b.empty()) return;
  const size_t n = b.size();
  for (int t = 0; t < T; ++t)
    for (size_t i = 0; i < n; ++i) y[t * n + i] += b[i];
}

}  // namespace

// How one eval() runs its matrix products: batched (sgemm or quantized matmul) for a chunk,
// or, for single-token decode, all products sharing an input in one parallel region.
struct Session::Products {
  Impl& s;
  int T;
  BatchPath path;
  bool decode() const { return T == 1; }
  // y (+)= W x for every (W, y) pair; all read the same input x.
  void run(const float* x, std::initializer_list<std::pair<const Weight*, float*>> outs, bool acc) {
    if (decode()) {
      s.act.reset(x);
      MatvecJob jobs[PreparedInput::kMax];
      int n = 0;
      for (auto [w, y] : outs) jobs[n++] = {w, s.act.get(*w), y, acc};
      run_matvecs(std::span(jobs, n), s.chunks);
      return;
    }
    // Integer GEMM where the CPU has it (llama.cpp's arithmetic, the activations quantized once
    // per dot type for all weights that share them), else sgemm or per-token integer dots.
    GGMLType prepared = GGMLType::F32;
    for (auto [w, y] : outs) {
      if (path != BatchPath::Float && T >= kQgemmMinTokens && quant::qgemm_supported(w->type)) {
        const GGMLType dt = vec_dot_type(w->type);
        if (prepared != dt) s.qact.prepare(w->type, x, T, w->n_in), prepared = dt;
        qgemm_rows(*w, s.qact, y, acc);
      } else if (path == BatchPath::Integer) {
        matmul_quantized(*w, x, T, y, acc);
      } else {
        matmul(*w, x, T, y, acc);
      }
    }
  }
};

// x += attn_output(attention(rope(q), rope(k), v)), n = rmsnorm(x); appends k, v to the cache.
void Session::attention_block(int il, Products& mm) {
  const Model& m = *model_;
  const Layer& L = m.layers()[il];
  const arch::LayerDims& dims = m.dims(il);
  Impl& s = *impl_;
  const int T = mm.T, E = m.n_embd(), D = m.head_dim(), p0 = n_past_;
  const int HQ = dims.n_head * D, HK = dims.n_head_kv * D;
  for (int t = 0; t < T; ++t) kernels::rms_norm(&s.x[size_t(t) * E], L.attn_norm.data(), &s.xn[size_t(t) * E], E, m.rms_eps());
  s.q.resize(size_t(T) * HQ);
  s.k.resize(size_t(T) * HK);
  s.v.resize(size_t(T) * HK);
  mm.run(s.xn.data(), {{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}}, false);
  add_bias(s.q.data(), L.bq, T);
  add_bias(s.k.data(), L.bk, T);
  add_bias(s.v.data(), L.bv, T);
  const arch::RopeLayout layout = m.architecture().gguf_rope();
  const size_t half = D / 2;
  for (int t = 0; t < T; ++t) {
    kernels::rope(&s.q[size_t(t) * HQ], dims.n_head, D, layout, &s.rope_cos[t * half], &s.rope_sin[t * half]);
    kernels::rope(&s.k[size_t(t) * HK], dims.n_head_kv, D, layout, &s.rope_cos[t * half], &s.rope_sin[t * half]);
  }
  s.cache.store(il, p0, T, s.k.data(), s.v.data());
  s.att.resize(size_t(T) * HQ);
  s.cache.attend(il, p0, T, s.q.data(), s.att.data(), 1.f / std::sqrt(static_cast<float>(D)), m.architecture().sliding_window);
  mm.run(s.att.data(), {{&L.wo, s.x.data()}}, true);
  add_bias(s.x.data(), L.bo, T);
}

// x += ffn_down(silu(ffn_gate(n)) * ffn_up(n)), n = rmsnorm(x).
void Session::mlp_block(int il, Products& mm) {
  const Model& m = *model_;
  const Layer& L = m.layers()[il];
  Impl& s = *impl_;
  const int T = mm.T, E = m.n_embd();
  for (int t = 0; t < T; ++t) kernels::rms_norm(&s.x[size_t(t) * E], L.ffn_norm.data(), &s.xn[size_t(t) * E], E, m.rms_eps());
  const size_t nf = size_t(T) * m.dims(il).n_ff;
  s.gate.resize(nf);
  s.up.resize(nf);
  mm.run(s.xn.data(), {{&L.w_gate, s.gate.data()}, {&L.w_up, s.up.data()}}, false);
  kernels::swiglu(s.gate.data(), s.up.data(), s.gate.data(), nf);
  mm.run(s.gate.data(), {{&L.w_down, s.x.data()}}, true);
  add_bias(s.x.data(), L.b_down, T);
}

void Session::eval(std::span<const int32_t> tokens, int logits_from, std::vector<float>& logits) {
  const Model& m = *model_;
  const int T = static_cast<int>(tokens.size());
  if (T == 0) return;
  if (n_past_ + T > n_ctx_) fail(ExitCode::Runtime, "context overflow: {} + {} tokens > n_ctx {}", n_past_, T, n_ctx_);
  if (logits_from < 0 || logits_from > T) fail(ExitCode::Runtime, "logits_from {} outside [0, {}]", logits_from, T);
  const int E = m.n_embd();
  Impl& s = *impl_;
  if (T == 1 || T - logits_from == 1) m.prepare_decode();  // single-token products follow
  Products mm{s, T, batch_path_};
  s.arena.execute([&] {
    s.x.resize(size_t(T) * E);
    s.xn.resize(size_t(T) * E);
    par_for_static(T, [&](int t) { embedding_row(m.tok_embd(), tokens[t], s.x.data() + size_t(t) * E); });
    kernels::rope_table(s.rope_inv_freq, n_past_, T, s.rope_cos, s.rope_sin);
    for (int il = 0; il < m.n_layer(); ++il) {
      if (m.dims(il).n_head > 0) attention_block(il, mm);
      if (m.dims(il).n_ff > 0) mlp_block(il, mm);
    }
    const int n_out = T - logits_from;
    logits.clear();
    if (n_out > 0) {
      for (int t = logits_from; t < T; ++t)
        kernels::rms_norm(&s.x[size_t(t) * E], m.output_norm().data(), &s.xn[size_t(t - logits_from) * E], E, m.rms_eps());
      logits.resize(size_t(n_out) * m.n_vocab());
      Products head{s, n_out, batch_path_};
      head.run(s.xn.data(), {{&m.output(), logits.data()}}, false);
    }
  });
  n_past_ += T;
}

}  // namespace squish::infer
