#include "core/quant/row_panels.hpp"

#include "core/quant/blocks.hpp"
#include "core/quant/quantize.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <immintrin.h>

#include <cstring>

#define SQUISH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace squish::quant {
namespace {

constexpr size_t kScaleBytes = kPanelRows * sizeof(uint16_t);              // 32
constexpr size_t kPanelBlockBytes = kScaleBytes + kPanelRows * kQK;        // 544
static_assert(kPanelBlockBytes == kPanelRows * sizeof(BlockQ8_0));  // a panel: its rows' bytes, rearranged

// The row of a type with a panel layout, at `level`.
const GGMLTypeTraits& panel_row(const GGMLTypeTraits* t, GGMLType type) {
  if (!t || !t->pack_panel) fail(ExitCode::Runtime, "no row-panel layout for {} weights", ggml_type_name(type));
  return *t;
}

// Byte offset of level j (0..31) of row r (0..15) inside a panel block.
constexpr size_t level_offset(int r, int j) { return kScaleBytes + size_t(j / 4) * 64 + size_t(r) * 4 + size_t(j % 4); }

// Panels are read once per token from memory, like rows in matvec (vec_dot.cpp): prefetch 8 KiB
// ahead into L2 so the misses stay in flight while the current block is computed.
constexpr size_t kPrefetchAhead = 8192;

SQUISH_AVX512 void panel_matvec_q8_0(int64_t nb, const std::byte* p, const BlockQ8_0* x, float* out) {
  __m512 acc = _mm512_setzero_ps();
  const __m256i ones = _mm256_set1_epi8(1);
  for (int64_t b = 0; b < nb; ++b, p += kPanelBlockBytes) {
    for (size_t o = 0; o < kPanelBlockBytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead + o), _MM_HINT_T1);
    const int8_t* xs = x[b].qs;
    __m512i s = _mm512_setzero_si512();
    for (int k = 0; k < 8; ++k) {
      int32_t x4;
      std::memcpy(&x4, xs + 4 * k, 4);
      s = _mm512_dpbusd_epi32(s, _mm512_loadu_si512(p + kScaleBytes + 64 * k), _mm512_set1_epi32(x4));
    }
    // The levels were stored +128: subtract 128 * sum(x) from every row's sum.
    const __m256i sx8 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs)));
    __m128i sx4 = _mm_add_epi32(_mm256_castsi256_si128(sx8), _mm256_extracti128_si256(sx8, 1));
    sx4 = _mm_add_epi32(sx4, _mm_shuffle_epi32(sx4, 0x4E));
    sx4 = _mm_add_epi32(sx4, _mm_shuffle_epi32(sx4, 0xB1));
    s = _mm512_sub_epi32(s, _mm512_slli_epi32(_mm512_broadcastd_epi32(sx4), 7));
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(_cvtsh_ss(x[b].d)));
    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc);
  }
  _mm512_storeu_ps(out, acc);
}

void pack_panel_q8_0(int64_t n, const void* rows, size_t row_bytes, void* panel) {
  const auto* src = static_cast<const std::byte*>(rows);
  auto* dst = static_cast<uint8_t*>(panel);
  for (int64_t b = 0; b < n / kQK; ++b, dst += kPanelBlockBytes) {
    for (int r = 0; r < kPanelRows; ++r) {
      const auto* blk = reinterpret_cast<const BlockQ8_0*>(src + size_t(r) * row_bytes) + b;
      std::memcpy(dst + r * sizeof(uint16_t), &blk->d, sizeof(uint16_t));
      for (int j = 0; j < kQK; ++j) dst[level_offset(r, j)] = static_cast<uint8_t>(blk->qs[j] + 128);
    }
  }
}

// Scalar reference: the same block order and arithmetic as the scalar vec_dot, so results are equal.
void panel_matvec_q8_0_ref(int64_t n, const void* panel, const void* xq, float* out) {
  const auto* p = static_cast<const uint8_t*>(panel);
  const auto* x = static_cast<const BlockQ8_0*>(xq);
  for (int r = 0; r < kPanelRows; ++r) {
    float sumf = 0;
    for (int64_t b = 0; b < n / kQK; ++b) {
      const uint8_t* blk = p + size_t(b) * kPanelBlockBytes;
      int32_t isum = 0;
      for (int j = 0; j < kQK; ++j) isum += (int32_t(blk[level_offset(r, j)]) - 128) * x[b].qs[j];
      uint16_t d;
      std::memcpy(&d, blk + r * sizeof(uint16_t), sizeof d);
      sumf += static_cast<float>(isum) * (f16_to_f32(d) * f16_to_f32(x[b].d));
    }
    out[r] = sumf;
  }
}

void panel_matvec_q8_0_avx512(int64_t n, const void* panel, const void* xq, float* out) {
  panel_matvec_q8_0(n / kQK, static_cast<const std::byte*>(panel), static_cast<const BlockQ8_0*>(xq), out);
}

}  // namespace

void table::install_reference_panels(table::Rows& rows) {
  table::row(rows, GGMLType::Q8_0).pack_panel = pack_panel_q8_0;
  table::row(rows, GGMLType::Q8_0).panel_matvec = panel_matvec_q8_0_ref;
}

// Q8_0 only: the K-quants' row dots keep up with memory (row_panels.hpp).
void table::install_avx512_panels(table::Rows& rows) {
  table::row(rows, GGMLType::Q8_0).panel_matvec = panel_matvec_q8_0_avx512;
  table::row(rows, GGMLType::Q8_0).decode_panels = true;
}

bool panels_supported(GGMLType type) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  return t && t->decode_panels;
}

// A panel holds the same bytes as its rows, rearranged.
size_t panel_bytes(GGMLType type, int64_t n) {
  panel_row(ggml_type_traits(type), type);
  return size_t(kPanelRows) * ggml_row_size(type, n);
}

void pack_panel(GGMLType type, int64_t n, const void* rows, size_t row_bytes, void* panel) {
  panel_row(ggml_type_traits(type), type).pack_panel(n, rows, row_bytes, panel);
}

void panel_matvec(GGMLType type, int64_t n, const void* panel, const void* xq, float* out) {
  panel_row(ggml_type_traits(type), type).panel_matvec(n, panel, xq, out);
}

namespace ref {
void panel_matvec(GGMLType type, int64_t n, const void* panel, const void* xq, float* out) {
  panel_row(ggml_type_traits(type, SimdLevel::Scalar), type).panel_matvec(n, panel, xq, out);
}
}  // namespace ref

}  // namespace squish::quant
