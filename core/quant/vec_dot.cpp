// Scalar reference dot kernels (AVX2 in vec_dot_avx2.cpp, AVX-512 in vec_dot_avx512.cpp) and the
// dispatchers, which call the weight type's row of the traits table (ggml_types.hpp).
#include "core/quant/vec_dot.hpp"

#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/quant/vec_dot_internal.hpp"
#include "core/base/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Byte/bit exactness needs every a*b+c rounded twice, as written: forbid FMA contraction here
// (GCC contracts by default whenever FMA is available, e.g. in the AVX2 target functions). The
// quant area is also built with -ffp-contract=off (core/CMakeLists.txt), which is what clang,
// without this pragma, goes by.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace squish {
namespace {
using namespace quant;
using namespace quant::detail;

void quantize_q8_K(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float max = 0, amax = 0;
    for (int j = 0; j < kQK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) { amax = ax; max = x[j]; }
    }
    if (!amax) {
      std::memset(&y[i], 0, sizeof(y[i]));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < kQK_K; ++j) y[i].qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    finish_q8_K_block(y[i]);
    y[i].d = 1 / iscale;
  }
}

// ---- scalar unpacking of K-quant blocks ---------------------------------------------------------

void unpack(const BlockQ2_K& b, KInts& k) {
  for (int e = 0; e < kQK_K; ++e) k.L[e] = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
  for (int g = 0; g < 16; ++g) {
    k.sc[g] = b.scales[g] & 0xF;
    k.m[g] = b.scales[g] >> 4;
  }
}

void unpack(const BlockQ3_K& b, KInts& k) {
  for (int e = 0; e < kQK_K; ++e) {
    const int low = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    const int high = (b.hmask[e % 32] >> (e / 32)) & 1;
    k.L[e] = static_cast<uint8_t>(low | (high << 2));
  }
  int8_t sc[16];
  unpack_q3_k_scales(b.scales, sc);
  for (int g = 0; g < 16; ++g) k.sc[g] = sc[g];
}

void unpack(const BlockQ4_K& b, KInts& k) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      k.L[64 * c + l] = b.qs[32 * c + l] & 0xF;
      k.L[64 * c + 32 + l] = b.qs[32 * c + l] >> 4;
    }
  k4_group_scales(b.scales, k);
}

void unpack(const BlockQ5_K& b, KInts& k) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      k.L[64 * c + l] = static_cast<uint8_t>((b.qs[32 * c + l] & 0xF) | (((b.qh[l] >> (2 * c)) & 1) << 4));
      k.L[64 * c + 32 + l] = static_cast<uint8_t>((b.qs[32 * c + l] >> 4) | (((b.qh[l] >> (2 * c + 1)) & 1) << 4));
    }
  k4_group_scales(b.scales, k);
}

void unpack(const BlockQ6_K& b, KInts& k) {
  for (int n = 0; n < 2; ++n)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* ql = b.ql + 64 * n;
      const uint8_t h = b.qh[32 * n + l];
      uint8_t* L = k.L + 128 * n;
      L[l] = static_cast<uint8_t>((ql[l] & 0xF) | ((h & 3) << 4));
      L[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4));
      L[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((h >> 4) & 3) << 4));
      L[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4));
    }
  for (int g = 0; g < 16; ++g) k.sc[g] = b.scales[g];
}

int32_t scaled_dot(const KInts& k, const BlockQ8_K& y) {
  int32_t isum = 0;
  for (int g = 0; g < 16; ++g) {
    int32_t s = 0;
    for (int l = 0; l < 16; ++l) s += k.L[16 * g + l] * y.qs[16 * g + l];
    isum += k.sc[g] * s;
  }
  return isum;
}

// One weight block times one Q8_K block; the float arithmetic here is shared with the AVX2 path.
template <class Block>
float k_dot(int64_t nb, const Block* x, const BlockQ8_K* y) {
  KInts k;
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    unpack(x[i], k);
    const int32_t isum = scaled_dot(k, y[i]);
    if constexpr (std::is_same_v<Block, BlockQ3_K>) {
      sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(isum - 4 * offset_bsum_term(k, y[i]));
    } else if constexpr (std::is_same_v<Block, BlockQ6_K>) {
      sumf += f16_to_f32(x[i].d) * y[i].d * static_cast<float>(isum - 32 * offset_bsum_term(k, y[i]));
    } else {
      const float dall = y[i].d * f16_to_f32(x[i].d);
      const float dmin = y[i].d * f16_to_f32(x[i].dmin);
      sumf += dall * static_cast<float>(isum) - dmin * static_cast<float>(min_bsum_term(k, y[i]));
    }
  }
  return sumf;
}

float dot_q8_0(int64_t nb, const BlockQ8_0* x, const BlockQ8_0* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < kQK; ++j) isum += x[i].qs[j] * y[i].qs[j];
    sumf += static_cast<float>(isum) * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
  }
  return sumf;
}

float dot_q4_0(int64_t nb, const BlockQ4_0* x, const BlockQ8_0* y) {
  float sumf = 0;
  for (int64_t i = 0; i < nb; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < kQK / 2; ++j)
      isum += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    sumf += static_cast<float>(isum) * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
  }
  return sumf;
}

// Float dots emulate the AVX2 kernel's order exactly: 32 FMA lanes over full 32-element steps,
// lanes folded (0+1)+(2+3) per 8-lane vector, the 8 lanes summed in order, then the tail.
template <class Load>
float float_dot(int64_t n, Load w, const float* x) {
  float acc[32] = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 32; ++k) acc[k] = std::fma(w(i + k), x[i + k], acc[k]);
  float s = 0;
  for (int l = 0; l < 8; ++l) s += (acc[l] + acc[8 + l]) + (acc[16 + l] + acc[24 + l]);
  for (; i < n; ++i) s += w(i) * x[i];
  return s;
}

float dot_f32(int64_t n, const float* w, const float* x) {
  return float_dot(n, [w](int64_t i) { return w[i]; }, x);
}
float dot_f16(int64_t n, const uint16_t* w, const float* x) {
  return float_dot(n, [w](int64_t i) { return f16_to_f32(w[i]); }, x);
}
float dot_bf16(int64_t n, const uint16_t* w, const float* x) {
  return float_dot(n, [w](int64_t i) { return bf16_to_f32(w[i]); }, x);
}

// Q8_K activations back to floats (d * q): what the K-quant dots multiply.
void dequantize_q8_K(const BlockQ8_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK_K)
    for (int j = 0; j < kQK_K; ++j) y[j] = x[i].d * x[i].qs[j];
}

}  // namespace

void quant::table::install_reference_dots(Rows& rows) {
  row(rows, GGMLType::F32).vec_dot = vec_dot<dot_f32>;
  row(rows, GGMLType::F16).vec_dot = vec_dot<dot_f16>;
  row(rows, GGMLType::BF16).vec_dot = vec_dot<dot_bf16>;
  row(rows, GGMLType::Q8_0).vec_dot = vec_dot<dot_q8_0>;
  row(rows, GGMLType::Q4_0).vec_dot = vec_dot<dot_q4_0>;
  row(rows, GGMLType::Q2_K).vec_dot = vec_dot<k_dot<BlockQ2_K>>;
  row(rows, GGMLType::Q3_K).vec_dot = vec_dot<k_dot<BlockQ3_K>>;
  row(rows, GGMLType::Q4_K).vec_dot = vec_dot<k_dot<BlockQ4_K>>;
  row(rows, GGMLType::Q5_K).vec_dot = vec_dot<k_dot<BlockQ5_K>>;
  row(rows, GGMLType::Q6_K).vec_dot = vec_dot<k_dot<BlockQ6_K>>;
  row(rows, GGMLType::Q8_K).from_float = from_float<quantize_q8_K>;
  row(rows, GGMLType::Q8_K).dequantize_row = dequantize_row<dequantize_q8_K>;
}

// ---- dispatch: the weight type's row -------------------------------------------------------------

namespace {
const GGMLTypeTraits& dot_row(const GGMLTypeTraits* t, GGMLType type) {
  if (!t || !t->vec_dot) fail(ExitCode::Runtime, "no dot kernel for {} weights", ggml_type_name(type));
  return *t;
}
const GGMLTypeTraits& dot_row(GGMLType type) { return dot_row(ggml_type_traits(type), type); }
}  // namespace

GGMLType vec_dot_type(GGMLType weight_type) { return dot_row(weight_type).vec_dot_type; }

size_t activation_row_size(GGMLType weight_type, int64_t n) {
  const GGMLTypeTraits& t = dot_row(weight_type);
  return t.activation_bytes(t.self, n);
}

void quantize_activations(GGMLType weight_type, const float* x, void* xq, int64_t n) {
  const GGMLTypeTraits& t = dot_row(weight_type);
  t.prepare_activation(t.self, x, xq, n);
}

float vec_dot(GGMLType weight_type, int64_t n, const void* wrow, const void* xq) {
  const GGMLTypeTraits& t = dot_row(weight_type);
  return t.vec_dot(t.self, n, wrow, xq);
}

namespace ref {
void quantize_activations(GGMLType weight_type, const float* x, void* xq, int64_t n) {
  const GGMLTypeTraits& t = dot_row(ggml_type_traits(weight_type, SimdLevel::Scalar), weight_type);
  t.prepare_activation(t.self, x, xq, n);
}
float vec_dot(GGMLType weight_type, int64_t n, const void* wrow, const void* xq) {
  const GGMLTypeTraits& t = dot_row(ggml_type_traits(weight_type, SimdLevel::Scalar), weight_type);
  return t.vec_dot(t.self, n, wrow, xq);
}
}  // namespace ref

// Decode reads every weight once per token from memory. The hardware prefetchers alone leave a
// core waiting on each new page of weights (measured: ~45% of the read bandwidth on a 1B model);
// prefetching each row 8 KiB ahead into L2 while the current one is computed keeps the misses
// in flight (~70-80%). Past the last row the prefetches touch whatever follows: harmless.
constexpr size_t kPrefetchAhead = 8192;

void matvec(GGMLType weight_type, int64_t rows, int64_t n, const void* w, const void* xq, float* out) {
  const GGMLTypeTraits& t = dot_row(weight_type);
  const size_t row_size = ggml_row_size(weight_type, n);
  const auto* p = static_cast<const char*>(w);
  for (int64_t r = 0; r < rows; ++r, p += row_size) {
    for (size_t o = 0; o < row_size; o += 64) __builtin_prefetch(p + kPrefetchAhead + o, 0, 2);
    out[r] = t.vec_dot(t.self, n, p, xq);
  }
}

}  // namespace squish
