// pi3: 3-bit quantization on a grid of step alpha * pi / k (the seed design), one learned alpha per
// 16 weights, at exactly Q3_K's size: 110 bytes per 256 weights (3.4375 bits per weight).
//
// Block of 256 = 16 sub-blocks of 16 weights:
//   f16 d | 16 x 6-bit alpha codes a_j (12 bytes) | 256 x 3-bit levels q (96 bytes)
//   w = alpha_j * (pi / k) * (q - 3.5),  alpha_j = d * a_j,  q in 0..7
// The grid is symmetric and mid-rise (+-0.5, +-1.5, +-2.5, +-3.5 steps; Q3_K's is -4..3 with a
// zero). k is part of the type (the bytes mean alpha * pi / k): PI3 is k = 4, PI3_k3, PI3_k5 and
// PI3_k6 the others. With alpha near the sub-block's RMS, k = 4 puts the outer levels at +-2.75
// alpha, close to the Lloyd-Max 8-level quantizer of a Gaussian. Since alpha is learned (searched
// from 0.5 to 1.7 x RMS) and stored, k sets where that search looks, and the 6-bit alpha codes'
// resolution relative to the step.
//
// alpha is learned per sub-block: for each candidate alpha on a grid around the RMS, the levels
// are rounded, alpha is refitted by weighted least squares for those levels, and the best
// weighted error wins; then the 16 alphas are quantized to 6 bits under one f16 d and the levels
// re-rounded for the stored alphas. Weights: importance (imatrix) when given, times
// sqrt(sigma^2 + w^2) as ggml's K-quants use.
//
// Dot kernel: activations quantized to int8 per 256 with one float scale; per sub-block an
// integer sum of (2q - 7) * x8 (a scalar reference and an AVX2 path giving the same sums).
// Only the C ABI is used; this plugin does not link libsquish_core.
#include <squish/plugin_abi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int kQK = 256, kSub = 16, kNSub = kQK / kSub;
constexpr float kPi = 3.14159265358979f;

struct Block {
  uint16_t d;        // f16
  uint8_t a[12];     // 16 x 6 bits
  uint8_t q[96];     // 256 x 3 bits
};
static_assert(sizeof(Block) == 110, "pi3 block must be Q3_K's size");

struct ActBlock {
  float d;
  int8_t x[kQK];
};

// IEEE binary16 <-> float (round to nearest even), no dependence on the host.
uint16_t to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (x < 0x38800000u) {                                              // subnormal or zero
    const float v = std::fabs(f) * 16777216.f;                        // 2^24: units of the smallest subnormal
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(v)));
  }
  const uint32_t mant = x & 0x1fffu, base = (x - 0x38000000u) >> 13;
  const uint32_t r = base + (mant > 0x1000u || (mant == 0x1000u && (base & 1)));
  return static_cast<uint16_t>(sign | r);
}

float from_f16(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) x = sign | 0x7f800000u | (m << 13);
  else x = sign | ((e + 112) << 23) | (m << 13);
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// 6-bit codes, 4 per 3 bytes; 3-bit levels, 8 per 3 bytes (little-endian bit streams).
void put6(uint8_t* p, int j, int v) {
  const int bit = 6 * j;
  for (int b = 0; b < 6; ++b) {
    const int k = bit + b;
    if (v >> b & 1) p[k >> 3] |= static_cast<uint8_t>(1 << (k & 7));
  }
}
void put3(uint8_t* p, int i, int v) {
  const int bit = 3 * i;
  for (int b = 0; b < 3; ++b) {
    const int k = bit + b;
    if (v >> b & 1) p[k >> 3] |= static_cast<uint8_t>(1 << (k & 7));
  }
}

inline int level_of(float w, float step) {  // nearest mid-rise level index for this step
  const int q = static_cast<int>(std::floor(w / step)) + 4;
  return std::clamp(q, 0, 7);
}

// Weighted squared error of a sub-block at step s (levels rounded for s), and the refitted step.
float fit(const float* w, const float* c, float s, float* refit) {
  double num = 0, den = 0, err = 0;
  for (int i = 0; i < kSub; ++i) {
    const float l = static_cast<float>(level_of(w[i], s)) - 3.5f;
    num += c[i] * w[i] * l;
    den += c[i] * l * l;
    const float e = w[i] - s * l;
    err += c[i] * e * e;
  }
  *refit = den > 0 && num > 0 ? static_cast<float>(num / den) : s;
  return static_cast<float>(err);
}

// The learned step (alpha * pi / k) of one sub-block.
float learn_step(const float* w, const float* c, float unit) {
  double s2 = 0, cw = 0;
  float amax = 0;
  for (int i = 0; i < kSub; ++i) s2 += c[i] * w[i] * w[i], cw += c[i], amax = std::max(amax, std::fabs(w[i]));
  if (amax == 0) return 0;
  const float rms = cw > 0 ? static_cast<float>(std::sqrt(s2 / cw)) : amax;
  float best_s = amax / 3.5f, best_e = INFINITY;
  for (int t = 0; t <= 24; ++t) {  // alpha from 0.5 to 1.7 x RMS, and the max-fitting step
    float s = t < 24 ? rms * unit * (0.5f + 0.05f * t) : amax / 3.5f;
    for (int it = 0; it < 2; ++it) {
      float r;
      const float e = fit(w, c, s, &r);
      if (e < best_e) best_e = e, best_s = s;
      s = r;
    }
  }
  return best_s;
}

void quantize_block(const float* x, const float* importance, Block* y, float unit) {
  std::memset(y, 0, sizeof(Block));
  double sum2 = 0;
  for (int i = 0; i < kQK; ++i) sum2 += x[i] * x[i];
  const float sigma2 = static_cast<float>(2 * sum2 / kQK);
  float c[kQK], step[kNSub];
  for (int i = 0; i < kQK; ++i) c[i] = (importance ? importance[i] : 1.f) * std::sqrt(sigma2 + x[i] * x[i]);
  float smax = 0;
  for (int j = 0; j < kNSub; ++j) smax = std::max(smax, step[j] = learn_step(x + j * kSub, c + j * kSub, unit));
  if (smax == 0) return;
  // Steps as d * a_j * unit with a_j in 1..63.
  const float d = smax / unit / 63.f;
  y->d = to_f16(d);
  const float dq = from_f16(y->d);
  for (int j = 0; j < kNSub; ++j) {
    const int a = dq > 0 ? std::clamp(static_cast<int>(std::lround(step[j] / unit / dq)), 1, 63) : 1;
    put6(y->a, j, a);
    const float s = dq * a * unit;
    for (int i = 0; i < kSub; ++i) put3(y->q, j * kSub + i, s > 0 ? level_of(x[j * kSub + i], s) : 4);
  }
}

// self: the type's grid unit pi / k.
float unit_of(void* self) { return *static_cast<const float*>(self); }

void quantize_rows(void* self, const float* src, void* dst, int64_t n_rows, int64_t n, const float* importance) {
  auto* out = static_cast<Block*>(dst);
  const int64_t nb = n / kQK;
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t b = 0; b < nb; ++b) quantize_block(src + r * n + b * kQK, importance ? importance + b * kQK : nullptr, out + r * nb + b,
                                         unit_of(self));
}

// Four 3-bit levels (12 bits) -> their odd integers 2q - 7 (-7..7) as 4 bytes: a 16 KiB table.
struct LevelTable {
  uint32_t t[4096];
  LevelTable() {
    for (uint32_t v = 0; v < 4096; ++v) {
      uint32_t word = 0;
      for (int k = 0; k < 4; ++k) word |= uint32_t(uint8_t(int8_t(2 * ((v >> (3 * k)) & 7) - 7))) << (8 * k);
      t[v] = word;
    }
  }
};
const LevelTable kLevelTable;

// A block's 256 levels as odd integers 2q - 7 and its 16 alpha codes, unpacked a 24-bit group at
// a time (8 levels or 4 codes per 3 bytes): two table look-ups per 8 levels, then the integer
// dot below vectorizes.
inline void unpack(const Block& b, int8_t* lv, int* a) {
  for (int g = 0; g < 32; ++g) {
    const uint32_t w = b.q[3 * g] | (uint32_t(b.q[3 * g + 1]) << 8) | (uint32_t(b.q[3 * g + 2]) << 16);
    std::memcpy(lv + 8 * g, &kLevelTable.t[w & 4095], 4);
    std::memcpy(lv + 8 * g + 4, &kLevelTable.t[w >> 12], 4);
  }
  for (int g = 0; g < 4; ++g) {
    const uint32_t w = b.a[3 * g] | (uint32_t(b.a[3 * g + 1]) << 8) | (uint32_t(b.a[3 * g + 2]) << 16);
    for (int k = 0; k < 4; ++k) a[4 * g + k] = static_cast<int>((w >> (6 * k)) & 63);
  }
}

void dequantize_row(void* self, const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const Block*>(src);
  int8_t lv[kQK];
  int a[kNSub];
  for (int64_t k = 0; k < n / kQK; ++k, ++b) {
    unpack(*b, lv, a);
    const float d = from_f16(b->d) * unit_of(self) * 0.5f;
    for (int j = 0; j < kNSub; ++j) {
      const float s = d * a[j];
      for (int i = 0; i < kSub; ++i) dst[k * kQK + j * kSub + i] = s * lv[j * kSub + i];
    }
  }
}

size_t activation_bytes(void*, int64_t n) { return static_cast<size_t>(n / kQK) * sizeof(ActBlock); }

void prepare_activation(void*, const float* x, void* xa, int64_t n) {
  auto* out = static_cast<ActBlock*>(xa);
  for (int64_t b = 0; b < n / kQK; ++b) {
    float amax = 0;
    for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(x[b * kQK + i]));
    const float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
    out[b].d = d;
    for (int i = 0; i < kQK; ++i) out[b].x[i] = static_cast<int8_t>(std::lround(x[b * kQK + i] * id));
  }
}

// The scalar reference of the dot.
float vec_dot_ref(int64_t n, const Block* b, const ActBlock* act, float unit) {
  int8_t lv[kQK];
  int a[kNSub];
  float sum = 0;
  for (int64_t k = 0; k < n / kQK; ++k) {
    unpack(b[k], lv, a);
    int32_t acc = 0;
    for (int j = 0; j < kNSub; ++j) {
      int32_t s = 0;
      for (int i = 0; i < kSub; ++i) s += lv[j * kSub + i] * act[k].x[j * kSub + i];
      acc += s * a[j];
    }
    sum += from_f16(b[k].d) * unit * 0.5f * act[k].d * static_cast<float>(acc);
  }
  return sum;
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2: 32 levels (two sub-blocks) per step. maddubs needs an unsigned operand: |level| times
// the activation carrying the level's sign; pairs sum to int16 (|7 * 127| * 2 fits), then to
// int32 per 4, scaled by each sub-block's alpha code. The same exact integer sums as the reference.
__attribute__((target("avx2"))) float vec_dot_avx2(int64_t n, const Block* b, const ActBlock* act, float unit) {
  alignas(32) int8_t lv[kQK];
  int a[kNSub];
  const __m256i ones = _mm256_set1_epi16(1);
  float sum = 0;
  for (int64_t k = 0; k < n / kQK; ++k) {
    unpack(b[k], lv, a);
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < kNSub; j += 2) {
      const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(lv + j * kSub));
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act[k].x + j * kSub));
      const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(l, l), _mm256_sign_epi8(x, l));
      const __m256i p32 = _mm256_madd_epi16(p16, ones);
      const __m256i scale = _mm256_setr_epi32(a[j], a[j], a[j], a[j], a[j + 1], a[j + 1], a[j + 1], a[j + 1]);
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(p32, scale));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    sum += from_f16(b[k].d) * unit * 0.5f * act[k].d * static_cast<float>(_mm_cvtsi128_si32(h));
  }
  return sum;
}
const bool kAvx2 = __builtin_cpu_supports("avx2");
#else
const bool kAvx2 = false;
float vec_dot_avx2(int64_t n, const Block* b, const ActBlock* act, float unit) { return vec_dot_ref(n, b, act, unit); }
#endif

float vec_dot(void* self, int64_t n, const void* w, const void* xa) {
  const auto* b = static_cast<const Block*>(w);
  const auto* act = static_cast<const ActBlock*>(xa);
  return kAvx2 ? vec_dot_avx2(n, b, act, unit_of(self)) : vec_dot_ref(n, b, act, unit_of(self));
}

// k per type: the grid unit pi / k is part of what the bytes mean, so each k is its own type id.
struct KVariant {
  uint32_t id;
  const char* name;
  float unit;
};
KVariant g_variants[] = {{1056, "PI3", kPi / 4}, {1057, "PI3_k3", kPi / 3}, {1058, "PI3_k5", kPi / 5}, {1059, "PI3_k6", kPi / 6}};

int register_types(const squish_host* host) {
  for (KVariant& v : g_variants) {
    squish_type t{};
    t.struct_size = sizeof(squish_type);
    t.id = v.id;
    t.name = v.name;
    t.block_size = kQK;
    t.block_bytes = sizeof(Block);
    t.self = &v.unit;
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
  static const squish_plugin_info info{SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_info), "pi3", "0.1.0",
                                       "3-bit grid of step alpha*pi/4, learned alpha per 16 weights (Q3_K's size): PI3",
                                       register_types, nullptr, nullptr};
  return &info;
}
