#pragma once
// The inference engine's KV cache and the attention that reads it.
//
// Layout: per layer and KV head, keys and values of head_dim elements for n_ctx positions, in
// F16 (llama.cpp's default cache type: half the bytes a deep context reads per token) or F32.
// Keys are stored transposed in blocks of 16 positions (block b holds keys 16b..16b+15 one
// dimension after another), so decode scores 16 keys per vector FMA with no horizontal sums;
// values are row-major. Each KV head's keys and values are contiguous (they stream).
//
// Few queries (decode): flash-decoding. The keys each KV head makes visible are cut into spans,
// one task per (KV head, span). A task scores its keys for every query head sharing the KV head
// (each key is read once per group, not once per query head), takes the span's softmax max and
// sum and its probability-weighted sum of values; spans are then merged exactly (rescaled by
// exp(m_span - m)). Batches: each KV head is expanded to F32 rows once per call and the shared
// kernels (kernels::attention_probs / attention_apply: sgemm) run per query head and block of
// queries.
#include "core/arch/architecture.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace squish::infer {

enum class KVType { F16, F32 };

class KVCache {
 public:
  KVCache(const arch::ModelArch& a, int n_ctx, KVType type);
  // Bytes the cache of n_ctx positions takes.
  static uint64_t bytes_needed(const arch::ModelArch& a, int n_ctx, KVType type);

  int n_ctx() const { return n_ctx_; }
  KVType type() const { return type_; }
  // Writes keys and values of T tokens at positions p0 .. p0+T-1 of `layer` (k, v: T rows of
  // n_head_kv(layer) * head_dim values).
  void store(int layer, int p0, int T, const float* k, const float* v);
  // out (T rows of n_head(layer) * head_dim) = softmax(scale q k^T) v for query rows at
  // positions p0 .. p0+T-1 over the keys each sees (causal, within `window` when > 0); the
  // keys of those positions must be stored. Runs in the calling TBB arena.
  void attend(int layer, int p0, int T, const float* q, float* out, float scale, int window) const;

 private:
  struct Layer {
    int n_head = 0, n_head_kv = 0;
    size_t offset = 0;  // of this layer's first element in data_
  };
  size_t key_stride() const { return size_t(n_ctx_pad_) * head_dim_; }  // elements per KV head (keys or values)
  size_t elem_bytes() const { return type_ == KVType::F16 ? 2 : 4; }
  const std::byte* keys(int layer, int g) const { return data_.data() + (layers_[layer].offset + 2 * g * key_stride()) * elem_bytes(); }
  const std::byte* values(int layer, int g) const { return keys(layer, g) + key_stride() * elem_bytes(); }
  void attend_decode(int layer, int p0, int T, const float* q, float* out, float scale, int window) const;
  void attend_batch(int layer, int p0, int T, const float* q, float* out, float scale, int window) const;

  KVType type_;
  int n_ctx_, n_ctx_pad_, head_dim_;
  std::vector<Layer> layers_;
  std::vector<std::byte> data_;
};

}  // namespace squish::infer
