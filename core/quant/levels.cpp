#include "core/quant/levels.hpp"

#include "core/quant/blocks.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <algorithm>
#include <cmath>

namespace squish::quant {

int Grid::nearest(int e, float w) const {
  if (step[e] == 0.0f) return zero;  // every level is the same value
  const int l = nearest_int((w + min[e]) / step[e]) + zero;
  return std::clamp(l, 0, level_max);
}

bool has_levels(GGMLType type) {
  switch (type) {
    case GGMLType::Q8_0: case GGMLType::Q4_0: case GGMLType::Q2_K: case GGMLType::Q3_K:
    case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K: return true;
    default: return false;
  }
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

}  // namespace

void read_levels(GGMLType type, const void* block, Grid& g, uint8_t* levels) {
  switch (type) {
    case GGMLType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(block);
      g.zero = 127, g.level_max = 254;
      set_group(g, 0, kQK, f16_to_f32(b->d), 0.0f);
      for (int e = 0; e < kQK; ++e) levels[e] = static_cast<uint8_t>(std::max<int>(b->qs[e], -127) + 127);
      return;
    }
    case GGMLType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(block);
      g.zero = 8, g.level_max = 15;
      set_group(g, 0, kQK, f16_to_f32(b->d), 0.0f);
      for (int j = 0; j < kQK / 2; ++j) levels[j] = b->qs[j] & 0xF, levels[j + 16] = b->qs[j] >> 4;
      return;
    }
    case GGMLType::Q2_K: {
      const auto* b = static_cast<const BlockQ2_K*>(block);
      const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
      g.zero = 0, g.level_max = 3;
      walk_q2_K([&](int e, int group, int byte, int shift) {
        const uint8_t sc = b->scales[group];
        g.step[e] = d * static_cast<float>(sc & 0xF), g.min[e] = dmin * static_cast<float>(sc >> 4);
        levels[e] = (b->qs[byte] >> shift) & 3;
      });
      return;
    }
    case GGMLType::Q3_K: {
      const auto* b = static_cast<const BlockQ3_K*>(block);
      int8_t sc[16];
      unpack_q3_k_scales(b->scales, sc);
      const float d = f16_to_f32(b->d);
      g.zero = 4, g.level_max = 7;
      walk_q3_K([&](int e, int group, int byte, int shift, int hbyte, int hbit) {
        g.step[e] = d * static_cast<float>(sc[group]), g.min[e] = 0.0f;
        levels[e] = static_cast<uint8_t>(((b->qs[byte] >> shift) & 3) | (((b->hmask[hbyte] >> hbit) & 1) << 2));
      });
      return;
    }
    case GGMLType::Q4_K:
    case GGMLType::Q5_K: {
      const bool q5 = type == GGMLType::Q5_K;
      const auto* b4 = static_cast<const BlockQ4_K*>(block);
      const auto* b5 = static_cast<const BlockQ5_K*>(block);
      const uint16_t d16 = q5 ? b5->d : b4->d, dmin16 = q5 ? b5->dmin : b4->dmin;
      const uint8_t* scales = q5 ? b5->scales : b4->scales;
      const uint8_t* qs = q5 ? b5->qs : b4->qs;
      const float d = f16_to_f32(d16), dmin = f16_to_f32(dmin16);
      g.zero = 0, g.level_max = q5 ? 31 : 15;
      walk_k4([&](int e, int group, int byte, int high, int hbit) {
        uint8_t sc, m;
        get_scale_min_k4(group, scales, sc, m);
        g.step[e] = d * static_cast<float>(sc), g.min[e] = dmin * static_cast<float>(m);
        int l = high ? qs[byte] >> 4 : qs[byte] & 0xF;
        if (q5 && ((b5->qh[byte % 32] >> hbit) & 1)) l += 16;
        levels[e] = static_cast<uint8_t>(l);
      });
      return;
    }
    case GGMLType::Q6_K: {
      const auto* b = static_cast<const BlockQ6_K*>(block);
      const float d = f16_to_f32(b->d);
      g.zero = 32, g.level_max = 63;
      walk_q6_K([&](int e, int is, int lbyte, int lhigh, int hbyte, int hshift) {
        g.step[e] = d * static_cast<float>(b->scales[is]), g.min[e] = 0.0f;
        const int lo = lhigh ? b->ql[lbyte] >> 4 : b->ql[lbyte] & 0xF;
        levels[e] = static_cast<uint8_t>(lo | (((b->qh[hbyte] >> hshift) & 3) << 4));
      });
      return;
    }
    default: fail(ExitCode::Runtime, "read_levels: {} has no integer levels", ggml_type_name(type));
  }
}

void write_levels(GGMLType type, void* block, const uint8_t* levels) {
  switch (type) {
    case GGMLType::Q8_0: {
      auto* b = static_cast<BlockQ8_0*>(block);
      for (int e = 0; e < kQK; ++e) b->qs[e] = static_cast<int8_t>(int(levels[e]) - 127);
      return;
    }
    case GGMLType::Q4_0: {
      auto* b = static_cast<BlockQ4_0*>(block);
      for (int j = 0; j < kQK / 2; ++j) b->qs[j] = static_cast<uint8_t>((levels[j] & 0xF) | (levels[j + 16] << 4));
      return;
    }
    case GGMLType::Q2_K: {
      auto* b = static_cast<BlockQ2_K*>(block);
      std::fill(std::begin(b->qs), std::end(b->qs), 0);
      walk_q2_K([&](int e, int, int byte, int shift) { b->qs[byte] |= static_cast<uint8_t>((levels[e] & 3) << shift); });
      return;
    }
    case GGMLType::Q3_K: {
      auto* b = static_cast<BlockQ3_K*>(block);
      std::fill(std::begin(b->qs), std::end(b->qs), 0);
      std::fill(std::begin(b->hmask), std::end(b->hmask), 0);
      walk_q3_K([&](int e, int, int byte, int shift, int hbyte, int hbit) {
        b->qs[byte] |= static_cast<uint8_t>((levels[e] & 3) << shift);
        b->hmask[hbyte] |= static_cast<uint8_t>(((levels[e] >> 2) & 1) << hbit);
      });
      return;
    }
    case GGMLType::Q4_K:
    case GGMLType::Q5_K: {
      const bool q5 = type == GGMLType::Q5_K;
      uint8_t* qs = q5 ? static_cast<BlockQ5_K*>(block)->qs : static_cast<BlockQ4_K*>(block)->qs;
      std::fill(qs, qs + kQK_K / 2, 0);
      if (q5) std::fill(std::begin(static_cast<BlockQ5_K*>(block)->qh), std::end(static_cast<BlockQ5_K*>(block)->qh), 0);
      walk_k4([&](int e, int, int byte, int high, int hbit) {
        qs[byte] |= static_cast<uint8_t>((levels[e] & 0xF) << (high ? 4 : 0));
        if (q5) static_cast<BlockQ5_K*>(block)->qh[byte % 32] |= static_cast<uint8_t>(((levels[e] >> 4) & 1) << hbit);
      });
      return;
    }
    case GGMLType::Q6_K: {
      auto* b = static_cast<BlockQ6_K*>(block);
      std::fill(std::begin(b->ql), std::end(b->ql), 0);
      std::fill(std::begin(b->qh), std::end(b->qh), 0);
      walk_q6_K([&](int e, int, int lbyte, int lhigh, int hbyte, int hshift) {
        b->ql[lbyte] |= static_cast<uint8_t>((levels[e] & 0xF) << (lhigh ? 4 : 0));
        b->qh[hbyte] |= static_cast<uint8_t>(((levels[e] >> 4) & 3) << hshift);
      });
      return;
    }
    default: fail(ExitCode::Runtime, "write_levels: {} has no integer levels", ggml_type_name(type));
  }
}

}  // namespace squish::quant
