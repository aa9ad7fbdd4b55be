#pragma once
// CPU inference of GGUFs of every family in core/arch (llama.cpp's and Squish's, pruned or not).
//
// Model: the architecture (arch::ModelArch::from_gguf: per-layer head / KV-head counts and FFN
// widths, scalar or INT32 arrays as Squish writes for pruned models; head size; tied output;
// q/k/v biases; rope base, rope_freqs factors, sliding window; RMS epsilon) and views of the
// weights through the mmap (no copies). The math is core/model/kernels.hpp, shared with the
// float reference transformer.
//
// Session: one sequence with a KV cache. eval() runs a chunk of tokens at their positions:
//  - batched: see BatchPath. The float path rounds the activations through the weight's dot type
//    (quantized to Q8_0 / Q8_K and expanded back, so the result is ggml's integer-dot arithmetic
//    up to float rounding); each thread dequantizes a block of weight rows and multiplies the
//    whole chunk by it with a single-threaded sgemm (weights read once per chunk);
//  - single-token decode: activations are quantized once to the weight type's dot type (Q8_0 /
//    Q8_K, as ggml does) and each thread runs integer vec_dot over its range of output rows;
//    products sharing an input (q/k/v, gate/up) share that quantization and one parallel region,
//    split by weight bytes into one contiguous range per thread (serial in a 1-thread arena).
// Attention reads the KV cache (attention.hpp: F16 by default). Parallel work runs in a
// tbb::task_arena of the requested thread count.
#include "core/arch/architecture.hpp"
#include "core/gguf/gguf.hpp"
#include "core/model/attention.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace squish::infer {

// One weight matrix: rows of n_in values of `type`, n_out rows, a view into the mapping.
struct Weight {
  GGMLType type = GGMLType::F32;
  int64_t n_in = 0, n_out = 0;
  const std::byte* data = nullptr;
  size_t row_bytes = 0;
  // Decode layout of rows [0, n_out / 16 * 16) (quant/row_panels.hpp) once Model::prepare_decode
  // has built it for this type, else null.
  const std::byte* panels = nullptr;
  const std::byte* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
  size_t nbytes() const { return row_bytes * static_cast<size_t>(n_out); }
};

// One layer's weights; its widths are the architecture's (Model::dims).
struct Layer {
  std::vector<float> attn_norm, ffn_norm;  // [n_embd]
  std::vector<float> bq, bk, bv;           // empty when the model has no biases
  std::vector<float> bo, b_down;           // [n_embd]: written by pruning recovery, else empty
  Weight wq, wk, wv, wo, w_gate, w_up, w_down;
};

class Model {
 public:
  // Throws Error(InputData) "<path>: <problem>" for anything missing or inconsistent.
  static std::shared_ptr<const Model> load(const std::string& path);

  const gguf::Reader& reader() const { return reader_; }
  const arch::ModelArch& architecture() const { return arch_; }
  const std::string& arch() const { return arch_.arch; }
  int n_embd() const { return arch_.n_embd; }
  int n_vocab() const { return arch_.n_vocab; }
  int n_layer() const { return static_cast<int>(layers_.size()); }
  int head_dim() const { return arch_.head_dim; }
  int n_ctx_train() const { return arch_.n_ctx_train; }
  float rms_eps() const { return arch_.rms_eps; }
  const std::vector<Layer>& layers() const { return layers_; }
  const arch::LayerDims& dims(int layer) const { return arch_.layers[layer]; }
  const Weight& tok_embd() const { return tok_embd_; }
  const Weight& output() const { return output_; }  // token_embd when tied
  const std::vector<float>& output_norm() const { return output_norm_; }
  bool tied_output() const { return arch_.tie_embeddings; }
  // Bytes of weights one decoded token reads (every matrix once; one embedding row).
  size_t weight_bytes_per_token() const;
  // Builds the decode layout of every matrix whose type has one on this CPU (once; thread-safe;
  // sessions call it before their first single-token product). Batches keep reading the file.
  void prepare_decode() const;

 private:
  gguf::Reader reader_;
  arch::ModelArch arch_;
  std::vector<Layer> layers_;
  Weight tok_embd_, output_;
  std::vector<float> output_norm_;
  mutable std::once_flag decode_once_;
  mutable std::vector<std::unique_ptr<std::byte[]>> panel_store_;
};

// Rows of the embedding / output matrix as float.
void embedding_row(const Weight& w, int32_t token, float* out);

// y[t, :] (+)= W x[t, :] for T tokens (x: T x n_in, y: T x n_out, row-major). threads in the
// calling arena. Picks the batched sgemm path for T >= kBatchThreshold, else quantized matvec.
constexpr int kBatchThreshold = 32;
void matmul(const Weight& w, const float* x, int T, float* y, bool accumulate);
// The quantized-activation path for any T (llama.cpp's arithmetic); used by matmul for small T.
void matmul_quantized(const Weight& w, const float* x, int T, float* y, bool accumulate);

// Batches (prefill, perplexity chunks) multiply quantized weights either with integer dots on
// activations quantized to the weight's dot type (llama.cpp's arithmetic, as single tokens do:
// the AVX-512 integer GEMM, quant/qgemm.hpp, or per-token dots) or in float (dequantized weights
// times activations rounded through the same quantization; sgemm).
enum class BatchPath {
  Auto,     // the integer GEMM where the CPU runs it, else float
  Integer,  // integer dots everywhere (the integer GEMM, else per-token dots: slower)
  Float,    // sgemm
};

class Session {
 public:
  // n_ctx: KV cache capacity in tokens; threads: 0 = all cores; kv: the cache's element type
  // (F16 as llama.cpp's default; F32 where results must match float math to the last bits).
  Session(std::shared_ptr<const Model> model, int n_ctx, int threads, KVType kv = KVType::F16);
  ~Session();

  // Runs `tokens` at positions n_past()..n_past()+T-1 (appending to the cache). Logits for the
  // tokens at indices [logits_from, T) go to `logits` ((T - logits_from) x n_vocab); pass
  // logits_from = T for none. Throws if the cache would overflow.
  void eval(std::span<const int32_t> tokens, int logits_from, std::vector<float>& logits);
  // Forget the cache (positions restart at 0).
  void reset() { n_past_ = 0; }
  // Keep the first n cached tokens and forget the rest (0 <= n <= n_past()).
  void rewind(int n);
  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  const Model& model() const { return *model_; }
  // How batches multiply by quantized weights (single tokens always use integer dots).
  void set_batch_path(BatchPath p) { batch_path_ = p; }

 private:
  struct Impl;
  struct Products;
  void attention_block(int layer, Products& mm);
  void mlp_block(int layer, Products& mm);
  std::shared_ptr<const Model> model_;
  int n_ctx_, n_past_ = 0;
  BatchPath batch_path_ = BatchPath::Auto;
  std::unique_ptr<Impl> impl_;
};

}  // namespace squish::infer
