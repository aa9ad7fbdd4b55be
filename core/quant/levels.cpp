#include "core/quant/levels.hpp"

#include "core/quant/blocks.hpp"
#include "core/quant/type_table.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace squish::quant {

int Grid::nearest(int e, float w) const {
  if (table) {  // the level of least |w - value| (the first on ties); all equal when step is 0
    int best = 0;
    for (int l = 1; l <= level_max; ++l)
      if (std::fabs(w - value(e, l)) < std::fabs(w - value(e, best))) best = l;
    return best;
  }
  if (step[e] == 0.0f) return zero;  // every level is the same value
  const int l = nearest_int((w + min[e]) / step[e]) + zero;
  return std::clamp(l, 0, level_max);
}

namespace {

void set_group(Grid& g, int first, int n, float step, float min) {
  for (int e = first; e < first + n; ++e) g.step[e] = step, g.min[e] = min;
}

// Where each weight's bits live. The walks below visit weights in the dequantizers' order
// (core/quant/quantize_ref.cpp), so read and write share one definition of every layout.

// Q2_K: for each half (128 weights, 32 bytes of qs), 4 shifts x 2 halves of 16.
template <class Fn> void walk_q2_K(Fn&& fn) {  // fn(weight, group, byte, shift)
  int e = 0, group = 0;
  for (int n = 0; n < kQK_K; n += 128)
    for (int shift = 0; shift < 8; shift += 2)
      for (int half = 0; half < 2; ++half, ++group)
        for (int l = 0; l < 16; ++l) fn(e++, group, n / 4 + l + 16 * half, shift);
}

// Q3_K: as Q2_K, with the third bit of weight (byte l) in hmask[l] bit (n/128*4 + shift/2).
template <class Fn> void walk_q3_K(Fn&& fn) {  // fn(weight, group, qs byte, shift, hmask byte, hmask bit)
  int e = 0, group = 0, m = 0;
  for (int n = 0; n < kQK_K; n += 128)
    for (int shift = 0; shift < 8; shift += 2, ++m)
      for (int half = 0; half < 2; ++half, ++group)
        for (int l = 16 * half; l < 16 * half + 16; ++l) fn(e++, group, n / 4 + l, shift, l, m);
}

// Q4_K / Q5_K: 4 chunks of 64 weights over 32 bytes: low nibbles = group 2j, high = group 2j+1;
// Q5_K's fifth bit of weight (chunk j, byte l, nibble h) is qh[l] bit 2j + h.
template <class Fn> void walk_k4(Fn&& fn) {  // fn(weight, group, byte, high nibble, qh bit)
  int e = 0;
  for (int j = 0; j < 4; ++j)
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) fn(e++, 2 * j + h, 32 * j + l, h, 2 * j + h);
}

// Q6_K: per half (128 weights): ql[64], qh[32], 8 scales; weight n+l+32k (k = 0..3) takes
// nibble k/2 of ql[l + 32*(k%2)] and bits 2k of qh[l], scale is + 2k (is = l/16).
template <class Fn> void walk_q6_K(Fn&& fn) {  // fn(weight, scale index, ql byte, ql high, qh byte, qh shift)
  for (int n = 0; n < kQK_K; n += 128)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) fn(n + l + 32 * k, n / 16 + l / 16 + 2 * k, n / 2 + l + 32 * (k % 2), k / 2, n / 4 + l, 2 * k);
}

// ---- one block's levels, per type ----------------------------------------------------------------

void read_q8_0(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockQ8_0*>(block);
  g.zero = 127, g.level_max = 254;
  set_group(g, 0, kQK, f16_to_f32(b->d), 0.0f);
  for (int e = 0; e < kQK; ++e) levels[e] = static_cast<uint8_t>(std::max<int>(b->qs[e], -127) + 127);
}

void read_q4_0(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockQ4_0*>(block);
  g.zero = 8, g.level_max = 15;
  set_group(g, 0, kQK, f16_to_f32(b->d), 0.0f);
  for (int j = 0; j < kQK / 2; ++j) levels[j] = b->qs[j] & 0xF, levels[j + 16] = b->qs[j] >> 4;
}

void read_q2_K(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockQ2_K*>(block);
  const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
  g.zero = 0, g.level_max = 3;
  walk_q2_K([&](int e, int group, int byte, int shift) {
    const uint8_t sc = b->scales[group];
    g.step[e] = d * static_cast<float>(sc & 0xF), g.min[e] = dmin * static_cast<float>(sc >> 4);
    levels[e] = (b->qs[byte] >> shift) & 3;
  });
}

void read_q3_K(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockQ3_K*>(block);
  int8_t sc[16];
  unpack_q3_k_scales(b->scales, sc);
  const float d = f16_to_f32(b->d);
  g.zero = 4, g.level_max = 7;
  walk_q3_K([&](int e, int group, int byte, int shift, int hbyte, int hbit) {
    g.step[e] = d * static_cast<float>(sc[group]), g.min[e] = 0.0f;
    levels[e] = static_cast<uint8_t>(((b->qs[byte] >> shift) & 3) | (((b->hmask[hbyte] >> hbit) & 1) << 2));
  });
}

// Q4_K and Q5_K (Q5_K: the fifth bit in qh).
template <class Block>
void read_k4(const void* block, Grid& g, uint8_t* levels) {
  constexpr bool q5 = std::is_same_v<Block, BlockQ5_K>;
  const auto* b = static_cast<const Block*>(block);
  const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
  g.zero = 0, g.level_max = q5 ? 31 : 15;
  walk_k4([&](int e, int group, int byte, int high, int hbit) {
    uint8_t sc, m;
    get_scale_min_k4(group, b->scales, sc, m);
    g.step[e] = d * static_cast<float>(sc), g.min[e] = dmin * static_cast<float>(m);
    int l = high ? b->qs[byte] >> 4 : b->qs[byte] & 0xF;
    if constexpr (q5) {
      if ((b->qh[byte % 32] >> hbit) & 1) l += 16;
    }
    levels[e] = static_cast<uint8_t>(l);
  });
}

void read_q6_K(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockQ6_K*>(block);
  const float d = f16_to_f32(b->d);
  g.zero = 32, g.level_max = 63;
  walk_q6_K([&](int e, int is, int lbyte, int lhigh, int hbyte, int hshift) {
    g.step[e] = d * static_cast<float>(b->scales[is]), g.min[e] = 0.0f;
    const int lo = lhigh ? b->ql[lbyte] >> 4 : b->ql[lbyte] & 0xF;
    levels[e] = static_cast<uint8_t>(lo | (((b->qh[hbyte] >> hshift) & 3) << 4));
  });
}

void write_q8_0(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockQ8_0*>(block);
  for (int e = 0; e < kQK; ++e) b->qs[e] = static_cast<int8_t>(int(levels[e]) - 127);
}

void write_q4_0(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockQ4_0*>(block);
  for (int j = 0; j < kQK / 2; ++j) b->qs[j] = static_cast<uint8_t>((levels[j] & 0xF) | (levels[j + 16] << 4));
}

void write_q2_K(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockQ2_K*>(block);
  std::fill(std::begin(b->qs), std::end(b->qs), 0);
  walk_q2_K([&](int e, int, int byte, int shift) { b->qs[byte] |= static_cast<uint8_t>((levels[e] & 3) << shift); });
}

void write_q3_K(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockQ3_K*>(block);
  std::fill(std::begin(b->qs), std::end(b->qs), 0);
  std::fill(std::begin(b->hmask), std::end(b->hmask), 0);
  walk_q3_K([&](int e, int, int byte, int shift, int hbyte, int hbit) {
    b->qs[byte] |= static_cast<uint8_t>((levels[e] & 3) << shift);
    b->hmask[hbyte] |= static_cast<uint8_t>(((levels[e] >> 2) & 1) << hbit);
  });
}

template <class Block>
void write_k4(void* block, const uint8_t* levels) {
  constexpr bool q5 = std::is_same_v<Block, BlockQ5_K>;
  auto* b = static_cast<Block*>(block);
  std::fill(std::begin(b->qs), std::end(b->qs), 0);
  if constexpr (q5) std::fill(std::begin(b->qh), std::end(b->qh), 0);
  walk_k4([&](int e, int, int byte, int high, int hbit) {
    b->qs[byte] |= static_cast<uint8_t>((levels[e] & 0xF) << (high ? 4 : 0));
    if constexpr (q5) b->qh[byte % 32] |= static_cast<uint8_t>(((levels[e] >> 4) & 1) << hbit);
  });
}

void write_q6_K(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockQ6_K*>(block);
  std::fill(std::begin(b->ql), std::end(b->ql), 0);
  std::fill(std::begin(b->qh), std::end(b->qh), 0);
  walk_q6_K([&](int e, int, int lbyte, int lhigh, int hbyte, int hshift) {
    b->ql[lbyte] |= static_cast<uint8_t>((levels[e] & 0xF) << (lhigh ? 4 : 0));
    b->qh[hbyte] |= static_cast<uint8_t>(((levels[e] >> 4) & 3) << hshift);
  });
}

// IQ4_NL / IQ4_XS: a group of 32 is 16 bytes, weight j in the low nibble of byte j, 16 + j in the high.
void read_nibbles32(const uint8_t* qs, uint8_t* levels) {
  for (int j = 0; j < 16; ++j) levels[j] = qs[j] & 0xF, levels[j + 16] = qs[j] >> 4;
}
void write_nibbles32(uint8_t* qs, const uint8_t* levels) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((levels[j] & 0xF) | ((levels[j + 16] & 0xF) << 4));
}

void read_iq4_nl(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockIQ4_NL*>(block);
  g.zero = 0, g.level_max = 15, g.table = kIQ4NLValues;
  set_group(g, 0, kQK, f16_to_f32(b->d), 0.0f);
  read_nibbles32(b->qs, levels);
}
void write_iq4_nl(void* block, const uint8_t* levels) { write_nibbles32(static_cast<BlockIQ4_NL*>(block)->qs, levels); }

void read_iq4_xs(const void* block, Grid& g, uint8_t* levels) {
  const auto* b = static_cast<const BlockIQ4_XS*>(block);
  g.zero = 0, g.level_max = 15, g.table = kIQ4NLValues;
  const float d = f16_to_f32(b->d);
  for (int k = 0; k < kQK_K / 32; ++k) {
    set_group(g, 32 * k, 32, d * static_cast<float>(iq4_xs_scale(*b, k) - 32), 0.0f);
    read_nibbles32(b->qs + 16 * k, levels + 32 * k);
  }
}
void write_iq4_xs(void* block, const uint8_t* levels) {
  auto* b = static_cast<BlockIQ4_XS*>(block);
  for (int k = 0; k < kQK_K / 32; ++k) write_nibbles32(b->qs + 16 * k, levels + 32 * k);
}

const GGMLTypeTraits& levels_row(GGMLType type, const char* what) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  if (!t || !t->read_levels) fail(ExitCode::Runtime, "{}: {} has no integer levels", what, ggml_type_name(type));
  return *t;
}

}  // namespace

void table::install_levels(table::Rows& rows) {
  auto set = [&](GGMLType t, auto read, auto write) {
    table::row(rows, t).read_levels = read;
    table::row(rows, t).write_levels = write;
  };
  set(GGMLType::Q8_0, read_q8_0, write_q8_0);
  set(GGMLType::Q4_0, read_q4_0, write_q4_0);
  set(GGMLType::Q2_K, read_q2_K, write_q2_K);
  set(GGMLType::Q3_K, read_q3_K, write_q3_K);
  set(GGMLType::Q4_K, read_k4<BlockQ4_K>, write_k4<BlockQ4_K>);
  set(GGMLType::Q5_K, read_k4<BlockQ5_K>, write_k4<BlockQ5_K>);
  set(GGMLType::Q6_K, read_q6_K, write_q6_K);
  set(GGMLType::IQ4_NL, read_iq4_nl, write_iq4_nl);
  set(GGMLType::IQ4_XS, read_iq4_xs, write_iq4_xs);
}

bool has_levels(GGMLType type) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  return t && t->read_levels;
}

void read_levels(GGMLType type, const void* block, Grid& g, uint8_t* levels) {
  levels_row(type, "read_levels").read_levels(block, g, levels);
}

void write_levels(GGMLType type, void* block, const uint8_t* levels) {
  levels_row(type, "write_levels").write_levels(block, levels);
}

}  // namespace squish::quant
