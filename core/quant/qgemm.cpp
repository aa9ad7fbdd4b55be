// Integer GEMM for prefill (qgemm.hpp): activation packing, weight-row decoding to levels and
// the AVX-512 VNNI tile kernel.
#include "core/quant/qgemm.hpp"

#include "core/quant/blocks.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/quant/unpack_avx2.hpp"
#include "core/quant/vec_dot.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <immintrin.h>
#include <tbb/parallel_for.h>

#include <cstring>
#include <type_traits>

#define SQUISH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace squish::quant {
namespace {

constexpr int kTile = 32;  // tokens per tile: two registers of 16
constexpr int kRows = 4;   // weight rows per tile
constexpr int kGroup = 16;

// ---- weight rows -> levels and per-group (a, b) ------------------------------------------------

// One row of K weights: L[k] and, per group of 16, a and b with w = a * L + b.
template <class Block>
SQUISH_AVX2 void decode_k(const Block* x, int64_t nb, uint8_t* L, float* a, float* b) {
  detail::KInts k;
  for (int64_t i = 0; i < nb; ++i, L += kQK_K, a += 16, b += 16) {
    detail::unpack(x[i], k);
    std::memcpy(L, k.L, kQK_K);
    const float d = f16_to_f32(x[i].d);
    for (int g = 0; g < 16; ++g) {
      a[g] = d * static_cast<float>(k.sc[g]);
      if constexpr (std::is_same_v<Block, BlockQ3_K>) b[g] = -4.f * a[g];
      else if constexpr (std::is_same_v<Block, BlockQ6_K>) b[g] = -32.f * a[g];
      else b[g] = -f16_to_f32(x[i].dmin) * static_cast<float>(k.m[g]);
    }
  }
}

SQUISH_AVX2 void decode_q8_0(const BlockQ8_0* x, int64_t nb, uint8_t* L, float* a, float* b) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));  // q + 128 as unsigned
  for (int64_t i = 0; i < nb; ++i, L += kQK, a += 2, b += 2) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(L), _mm256_xor_si256(detail::load(reinterpret_cast<const uint8_t*>(x[i].qs)), flip));
    a[0] = a[1] = f16_to_f32(x[i].d);
    b[0] = b[1] = -128.f * a[0];
  }
}

SQUISH_AVX2 void decode_q4_0(const BlockQ4_0* x, int64_t nb, uint8_t* L, float* a, float* b) {
  const __m128i m4 = _mm_set1_epi8(0xF);
  for (int64_t i = 0; i < nb; ++i, L += kQK, a += 2, b += 2) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[i].qs));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(L), _mm_and_si128(v, m4));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(L + 16), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    a[0] = a[1] = f16_to_f32(x[i].d);
    b[0] = b[1] = -8.f * a[0];
  }
}

// A decoder as the row entry (K / block size blocks).
template <class Block, void (*F)(const Block*, int64_t, uint8_t*, float*, float*)>
void decode_row(const void* row, int64_t K, uint8_t* L, float* a, float* b) {
  F(static_cast<const Block*>(row), K / Block::kElems, L, a, b);
}

// ---- one token's activations into its lane of a 32-token tile -----------------------------------
// Per tile: K/4 steps of 32 tokens x 4 int8 (q); per group of 16, the tokens' dy and dy * sum(q).

void pack_q8_K(const void* xa, int64_t K, int lane, int8_t* qt, float* dyt, float* dyqt) {
  const auto* b = static_cast<const BlockQ8_K*>(xa);
  for (int64_t g = 0; g < K / kGroup; ++g) {
    const BlockQ8_K& blk = b[g / 16];
    dyt[g * kTile + lane] = blk.d;
    dyqt[g * kTile + lane] = blk.d * static_cast<float>(blk.bsums[g % 16]);
  }
  for (int64_t i = 0; i < K / kQK_K; ++i)
    for (int s = 0; s < kQK_K / 4; ++s) std::memcpy(qt + ((i * kQK_K / 4 + s) * kTile + lane) * 4, b[i].qs + 4 * s, 4);
}

void pack_q8_0(const void* xa, int64_t K, int lane, int8_t* qt, float* dyt, float* dyqt) {
  const auto* b = static_cast<const BlockQ8_0*>(xa);
  for (int64_t g = 0; g < K / kGroup; ++g) {
    const BlockQ8_0& blk = b[g / 2];
    const int8_t* qs = blk.qs + (g % 2) * kGroup;
    int sum = 0;
    for (int j = 0; j < kGroup; ++j) sum += qs[j];
    const float d = f16_to_f32(blk.d);
    dyt[g * kTile + lane] = d;
    dyqt[g * kTile + lane] = d * static_cast<float>(sum);
    for (int s = 0; s < kGroup / 4; ++s) std::memcpy(qt + ((g * kGroup / 4 + s) * kTile + lane) * 4, qs + 4 * s, 4);
  }
}

// ---- the tile kernel ----------------------------------------------------------------------------

// f[r] for 32 tokens (two registers) += sum over groups of dy * (a * sum L q + b * sum q).
SQUISH_AVX512 void tile(const uint8_t* const* L, const float* const* A, const float* const* B, int64_t G, const int8_t* q,
                        const float* dy, const float* dyq, float out[kRows][kTile]) {
  __m512 f[kRows][2];
  for (auto& fr : f) fr[0] = fr[1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc[kRows][2];
    for (auto& ar : acc) ar[0] = ar[1] = _mm512_setzero_si512();
    for (int s = 0; s < kGroup / 4; ++s) {
      const int8_t* p = q + (g * 4 + s) * 4 * kTile;
      const __m512i q0 = _mm512_loadu_si512(p), q1 = _mm512_loadu_si512(p + 64);
      for (int r = 0; r < kRows; ++r) {
        int32_t w4;
        std::memcpy(&w4, L[r] + g * kGroup + 4 * s, 4);
        const __m512i wv = _mm512_set1_epi32(w4);
        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], wv, q0);
        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], wv, q1);
      }
    }
    const __m512 d0 = _mm512_loadu_ps(dy + g * kTile), d1 = _mm512_loadu_ps(dy + g * kTile + 16);
    const __m512 s0 = _mm512_loadu_ps(dyq + g * kTile), s1 = _mm512_loadu_ps(dyq + g * kTile + 16);
    for (int r = 0; r < kRows; ++r) {
      const __m512 av = _mm512_set1_ps(A[r][g]), bv = _mm512_set1_ps(B[r][g]);
      f[r][0] = _mm512_fmadd_ps(s0, bv, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][0]), d0), av, f[r][0]));
      f[r][1] = _mm512_fmadd_ps(s1, bv, _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][1]), d1), av, f[r][1]));
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(out[r], f[r][0]);
    _mm512_storeu_ps(out[r] + 16, f[r][1]);
  }
}

}  // namespace

void table::install_qgemm_packing(table::Rows& rows) {
  table::row(rows, GGMLType::Q8_0).qgemm_pack = pack_q8_0;
  table::row(rows, GGMLType::Q8_K).qgemm_pack = pack_q8_K;
}

void table::install_qgemm(table::Rows& rows) {
  table::row(rows, GGMLType::Q8_0).qgemm_decode = decode_row<BlockQ8_0, decode_q8_0>;
  table::row(rows, GGMLType::Q4_0).qgemm_decode = decode_row<BlockQ4_0, decode_q4_0>;
  table::row(rows, GGMLType::Q2_K).qgemm_decode = decode_row<BlockQ2_K, decode_k<BlockQ2_K>>;
  table::row(rows, GGMLType::Q3_K).qgemm_decode = decode_row<BlockQ3_K, decode_k<BlockQ3_K>>;
  table::row(rows, GGMLType::Q4_K).qgemm_decode = decode_row<BlockQ4_K, decode_k<BlockQ4_K>>;
  table::row(rows, GGMLType::Q5_K).qgemm_decode = decode_row<BlockQ5_K, decode_k<BlockQ5_K>>;
  table::row(rows, GGMLType::Q6_K).qgemm_decode = decode_row<BlockQ6_K, decode_k<BlockQ6_K>>;
}

bool qgemm_supported(GGMLType type) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  return t && t->qgemm_decode;
}

void QActivations::prepare(GGMLType weight_type, const float* x, int T, int64_t K) {
  dot_type_ = vec_dot_type(weight_type);
  const GGMLTypeTraits* act = ggml_type_traits(dot_type_);
  if (!act || !act->qgemm_pack) fail(ExitCode::Runtime, "qgemm: no integer activations for {} weights", ggml_type_name(weight_type));
  const auto pack = act->qgemm_pack;
  T_ = T;
  K_ = K;
  tiles_ = (T + kTile - 1) / kTile;
  const int64_t G = K / kGroup;
  q_.assign(size_t(tiles_) * K * kTile, 0);
  dy_.assign(size_t(tiles_) * G * kTile, 0.f);  // padding tokens: dy = 0, so they add nothing
  dyq_.assign(dy_.size(), 0.f);
  const size_t act_bytes = activation_row_size(weight_type, K);
  tbb::parallel_for(0, T, [&](int t) {
    thread_local std::vector<std::byte> buf;
    buf.resize(act_bytes);
    quantize_activations(weight_type, x + size_t(t) * K, buf.data(), K);
    const int tl = t / kTile;
    pack(buf.data(), K, t % kTile, q_.data() + size_t(tl) * K * kTile, dy_.data() + size_t(tl) * G * kTile,
         dyq_.data() + size_t(tl) * G * kTile);
  });
}

void qgemm(GGMLType type, const void* w, int64_t row_bytes, int64_t r0, int64_t r1, const QActivations& x, float* y, int64_t ldy,
           bool accumulate) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  if (!t || !t->qgemm_decode) fail(ExitCode::Runtime, "qgemm: no kernel for {} weights on this CPU", ggml_type_name(type));
  const auto decode = t->qgemm_decode;
  if (x.dot_type_ != vec_dot_type(type)) fail(ExitCode::Runtime, "qgemm: activations prepared for another weight type");
  const int64_t K = x.K_, G = K / kGroup, n = r1 - r0;
  // Every row of the range is decoded once (levels + per-group a, b), then token tiles are taken
  // a few at a time, so the tiles in use (up to 512 KiB of activations) stay in L2 while all the
  // rows pass over them; each 4-row tile's levels stay in L1.
  thread_local std::vector<uint8_t> levels;
  thread_local std::vector<float> ab;
  levels.resize(size_t(n) * K);
  ab.resize(size_t(2 * n) * G);
  for (int64_t r = 0; r < n; ++r)
    decode(static_cast<const std::byte*>(w) + (r0 + r) * row_bytes, K, levels.data() + size_t(r) * K, ab.data() + size_t(2 * r) * G,
           ab.data() + size_t(2 * r + 1) * G);
  const int tiles_per_pass = static_cast<int>(std::max<int64_t>(1, (int64_t(512) << 10) / (K * kTile)));
  alignas(64) float out[kRows][kTile];
  for (int tl0 = 0; tl0 < x.tiles_; tl0 += tiles_per_pass) {
    const int tl1 = std::min(x.tiles_, tl0 + tiles_per_pass);
    for (int64_t rt = 0; rt < n; rt += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n - rt));
      const uint8_t* L[kRows];
      const float *A[kRows], *B[kRows];
      for (int r = 0; r < kRows; ++r) {
        const int64_t src = rt + std::min(r, rows - 1);  // a short last tile repeats its last row (not stored)
        L[r] = levels.data() + size_t(src) * K;
        A[r] = ab.data() + size_t(2 * src) * G;
        B[r] = A[r] + G;
      }
      for (int tl = tl0; tl < tl1; ++tl) {
        tile(L, A, B, G, x.q_.data() + size_t(tl) * K * kTile, x.dy_.data() + size_t(tl) * G * kTile,
             x.dyq_.data() + size_t(tl) * G * kTile, out);
        const int t_end = std::min(kTile, x.T_ - tl * kTile);
        for (int t = 0; t < t_end; ++t) {
          float* yt = y + size_t(tl * kTile + t) * ldy + r0 + rt;
          for (int r = 0; r < rows; ++r) yt[r] = accumulate ? yt[r] + out[r][t] : out[r][t];
        }
      }
    }
  }
}

}  // namespace squish::quant
