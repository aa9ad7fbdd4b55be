#pragma once
// Quantized weights times a batch of activations with llama.cpp's arithmetic (the sums vec_dot
// computes, many rows and tokens at once), on AVX-512 VNNI: the prefill path.
//
// Every supported type is, per group of 16 weights, w = a * L + b with an unsigned integer level
// L (Q8_0: q + 128) and two floats (Q4_K: a = d * sc, b = -dmin * m; Q6_K: a = d * sc,
// b = -32 a; ...). The activations are quantized per token as for vec_dot (x = dy * q, int8),
// so per group sum w x = dy * (a * sum L q + b * sum q): the integer sums sum L q come from
// `vpdpbusd` over a tile of 4 weight rows x 32 tokens (weight levels broadcast, 16 tokens per
// register), and the two float terms are applied once per group. Weight rows are decoded to
// levels once per call and reused for every token tile.
#include "core/quant/ggml_types.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace squish::quant {

// Whether qgemm runs `type` on this CPU (its row has a decoder: AVX-512 VNNI; Q8_0, Q4_0, Q2_K..Q6_K).
bool qgemm_supported(GGMLType type);

// T tokens of K activations, quantized for weights of one dot type and packed in tiles.
class QActivations {
 public:
  // x: T rows of K floats (K a multiple of the weight type's block size).
  void prepare(GGMLType weight_type, const float* x, int T, int64_t K);
  int tokens() const { return T_; }
  int64_t K() const { return K_; }

 private:
  friend void qgemm(GGMLType, const void*, int64_t, int64_t, int64_t, const QActivations&, float*, int64_t, bool);
  GGMLType dot_type_ = GGMLType::Q8_K;
  int T_ = 0, tiles_ = 0;
  int64_t K_ = 0;
  // Per tile of 32 tokens: K/4 steps of 32 tokens x 4 int8 (q); then per group of 16, the 32
  // tokens' dy and dy * sum(q) as floats.
  std::vector<int8_t> q_;
  std::vector<float> dy_, dyq_;
};

// y[t * ldy + r] (+)= sum_k W[r][k] x[t][k] for rows [r0, r1) of W (rows of K values of `type`,
// `row_bytes` apart). Single-threaded: callers split rows between threads.
void qgemm(GGMLType type, const void* w, int64_t row_bytes, int64_t r0, int64_t r1, const QActivations& x, float* y, int64_t ldy,
           bool accumulate);

}  // namespace squish::quant
