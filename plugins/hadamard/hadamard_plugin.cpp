// hadamard: randomized Hadamard incoherence processing (QuIP, QuIP#) in front of a K-quant.
//
// A weight row w (one output, n inputs) is stored as Q w, Q = H D / sqrt(m) applied to each chunk of
// m inputs: D a seeded random +-1 diagonal, H the m x m Walsh-Hadamard matrix, m the largest power
// of two dividing n. Q is orthogonal, so w . x = (Q w) . (Q x): the engine prepares Q x once per
// activation vector and runs the built-in K-quant dot on the rotated rows. Rotation spreads
// outliers over the chunk (the rotated weights are near-Gaussian), which is what a uniform grid
// with one scale per 16 or 32 weights fits best.
//
// Types (same blocks and sizes as their base): HQ2_K = 1040 over Q2_K, HQ3_K = 1041 over Q3_K,
// HQ4_K = 1042 over Q4_K. The base quantizer and dot kernel come from the host (find_type), so
// this plugin uses only the C ABI and does not link libsquish_core.
//
// Importance: quantizing Q w with a diagonal importance a (input column weights) sees the
// rotated importance diag(Q diag(a) Q^T), whose entries are exactly the chunk means of a
// (every |Q_ji| = 1/sqrt(m)). That is what the base quantizer is given.
#include <squish/plugin_abi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// The seed of the sign diagonal. Changing it changes every file's meaning: it is part of the types.
constexpr uint64_t kSeed = 0x51756950235eedULL;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Sign of input i (the same for every row and every matrix: D depends on the position only).
inline float sign_of(int64_t i) { return (splitmix64(kSeed ^ static_cast<uint64_t>(i)) >> 63) ? -1.f : 1.f; }

// The first n signs, hashed once per thread (rotations run per activation vector and per
// dequantized row: the hash per element would cost as much as the transform).
const float* signs(int64_t n) {
  thread_local std::vector<float> d;
  for (int64_t i = static_cast<int64_t>(d.size()); i < n; ++i) d.push_back(sign_of(i));
  return d.data();
}

int64_t chunk_of(int64_t n) { return n & -n; }  // largest power of two dividing n

// In-place unnormalized Walsh-Hadamard transform of m = 2^k values (Sylvester order).
void fwht(float* v, int64_t m) {
  for (int64_t h = 1; h < m; h <<= 1)
    for (int64_t i = 0; i < m; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
}

// v <- Q v (forward: signs, then H / sqrt(m)) over each chunk of a row of n.
void rotate(float* v, int64_t n) {
  const int64_t m = chunk_of(n);
  const float s = 1.f / std::sqrt(static_cast<float>(m));
  const float* d = signs(n);
  for (int64_t i = 0; i < n; ++i) v[i] *= d[i];
  for (int64_t c = 0; c < n; c += m) {
    fwht(v + c, m);
    for (int64_t i = 0; i < m; ++i) v[c + i] *= s;
  }
}

// v <- Q^T v = D H v / sqrt(m) (H is symmetric).
void unrotate(float* v, int64_t n) {
  const int64_t m = chunk_of(n);
  const float s = 1.f / std::sqrt(static_cast<float>(m));
  for (int64_t c = 0; c < n; c += m) fwht(v + c, m);
  const float* d = signs(n);
  for (int64_t i = 0; i < n; ++i) v[i] *= s * d[i];
}

struct Rotated {
  const squish_type* base = nullptr;  // the built-in K-quant (host's)
};

int supports_row(void* self, int64_t n) {
  auto* r = static_cast<Rotated*>(self);
  return n > 0 && n % r->base->block_size == 0 && (!r->base->supports_row || r->base->supports_row(r->base->self, n));
}

void quantize_rows(void* self, const float* src, void* dst, int64_t n_rows, int64_t n, const float* importance) {
  auto* r = static_cast<Rotated*>(self);
  std::vector<float> row(static_cast<size_t>(n)), imp;
  if (importance) {  // chunk means: the diagonal of the rotated importance
    const int64_t m = chunk_of(n);
    imp.resize(static_cast<size_t>(n));
    for (int64_t c = 0; c < n; c += m) {
      double sum = 0;
      for (int64_t i = 0; i < m; ++i) sum += importance[c + i];
      for (int64_t i = 0; i < m; ++i) imp[c + i] = static_cast<float>(sum / m);
    }
  }
  const size_t row_bytes = static_cast<size_t>(n / r->base->block_size) * r->base->block_bytes;
  for (int64_t k = 0; k < n_rows; ++k) {
    std::memcpy(row.data(), src + k * n, sizeof(float) * n);
    rotate(row.data(), n);
    r->base->quantize_rows(r->base->self, row.data(), static_cast<char*>(dst) + k * row_bytes, 1, n,
                           importance ? imp.data() : nullptr);
  }
}

void dequantize_row(void* self, const void* src, float* dst, int64_t n) {
  auto* r = static_cast<Rotated*>(self);
  r->base->dequantize_row(r->base->self, src, dst, n);
  unrotate(dst, n);
}

size_t activation_bytes(void* self, int64_t n) {
  auto* r = static_cast<Rotated*>(self);
  return r->base->activation_bytes(r->base->self, n);
}

void prepare_activation(void* self, const float* x, void* xa, int64_t n) {
  auto* r = static_cast<Rotated*>(self);
  thread_local std::vector<float> v;
  v.assign(x, x + n);
  rotate(v.data(), n);
  r->base->prepare_activation(r->base->self, v.data(), xa, n);
}

float vec_dot(void* self, int64_t n, const void* w, const void* xa) {
  auto* r = static_cast<Rotated*>(self);
  return r->base->vec_dot(r->base->self, n, w, xa);
}

struct Def {
  uint32_t id;
  const char* name;
  uint32_t base_id;  // ggml's Q2_K = 10, Q3_K = 11, Q4_K = 12
};
constexpr Def kTypes[] = {{1040, "HQ2_K", 10}, {1041, "HQ3_K", 11}, {1042, "HQ4_K", 12}};
Rotated g_rotated[3];

int register_types(const squish_host* host) {
  for (int i = 0; i < 3; ++i) {
    const squish_type* base = host->find_type(host->ctx, kTypes[i].base_id);
    if (!base || !base->vec_dot) return 1;
    g_rotated[i].base = base;
    squish_type t{};
    t.struct_size = sizeof(squish_type);
    t.id = kTypes[i].id;
    t.name = kTypes[i].name;
    t.block_size = base->block_size;
    t.block_bytes = base->block_bytes;
    t.self = &g_rotated[i];
    t.supports_row = supports_row;
    t.quantize_rows = quantize_rows;
    t.dequantize_row = dequantize_row;
    t.activation_bytes = activation_bytes;
    t.prepare_activation = prepare_activation;
    t.vec_dot = vec_dot;
    if (host->register_type(host->ctx, &t) != 0) return 1;
  }
  return 0;
}

}  // namespace

SQUISH_PLUGIN_METADATA(0, "");  /* types only: read by the host before it loads the plugin */

extern "C" SQUISH_PLUGIN_EXPORT const squish_plugin_info* squish_plugin_entry() {
  static const squish_plugin_info info{SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_info), "hadamard", "0.1.0",
                                       "randomized Hadamard rotation + K-quant (QuIP#-style incoherence): HQ2_K, HQ3_K, HQ4_K",
                                       register_types, nullptr, nullptr};
  return &info;
}
