#pragma once
// The search the grid i-quants share (IQ3_XXS, IQ3_S: points of 4 weights, 3-bit levels; IQ2_XXS,
// IQ2_XS, IQ2_S: points of 8 weights, 2-bit levels), as ggml-quants.c does it. A group of weights
// is stored as signs plus grid points over |x|, under one scale. For each of a range of trial
// scales every Dim magnitudes are rounded to levels l (magnitude 2l + 1); a tuple on the grid is
// kept, one off it is replaced by the best of the grid points nearest it (lowest sum w (s q - x)²);
// the least-squares scale of the result is fitted and the trial with the lowest weighted error
// kept. Points that were off the grid are then re-snapped at the chosen scale and it is refitted.
// Internal to core/quant; the including file turns fp-contraction off (byte exactness).
#include "core/quant/blocks.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace squish::quant::iq {

// The quantizer's view of a grid: its points (coordinates 2l + 1), the grid index of every tuple
// of levels (packed Bits per coordinate, as the grid data is), and for each reachable tuple off
// the grid the list of points at its `shells` smallest squared distances, ties in index order (as
// ggml's iq2xs_init_impl / iq3xs_init_impl build them).
template <int Dim, int Bits>
struct GridSearch {
  static constexpr int kTuples = 1 << (Dim * Bits);
  std::vector<std::array<int8_t, Dim>> points;
  std::vector<int32_t> index;  // >= 0: on the grid; else -1 - (offset of its list in `lists`)
  std::vector<uint16_t> lists; // per list: its length, then the grid indexes

  static int tuple_of(const int8_t* L) {
    int u = 0;
    for (int i = 0; i < Dim; ++i) u |= L[i] << (Bits * i);
    return u;
  }
};

// Lists are built only for tuples whose levels are all <= max_level: the rounding never makes others.
template <int Dim, int Bits>
GridSearch<Dim, Bits> build_search(const uint16_t* packed, int n, int shells, int max_level) {
  constexpr int kMask = (1 << Bits) - 1;
  GridSearch<Dim, Bits> g;
  g.points.resize(n);
  for (int k = 0; k < n; ++k)
    for (int i = 0; i < Dim; ++i) g.points[k][i] = static_cast<int8_t>(2 * ((packed[k] >> (Bits * i)) & kMask) + 1);
  g.index.assign(g.kTuples, -1);
  for (int k = 0; k < n; ++k) g.index[packed[k]] = k;
  std::vector<std::pair<int, int>> by_distance(n);
  for (int u = 0; u < g.kTuples; ++u) {
    if (g.index[u] >= 0) continue;
    bool reachable = true;
    for (int i = 0; i < Dim; ++i) reachable &= ((u >> (Bits * i)) & kMask) <= max_level;
    if (!reachable) continue;
    for (int k = 0; k < n; ++k) {
      int d2 = 0;
      for (int i = 0; i < Dim; ++i) {
        const int diff = g.points[k][i] - (2 * ((u >> (Bits * i)) & kMask) + 1);
        d2 += diff * diff;
      }
      by_distance[k] = {d2, k};
    }
    std::sort(by_distance.begin(), by_distance.end());
    g.index[u] = -1 - static_cast<int32_t>(g.lists.size());
    const size_t head = g.lists.size();
    g.lists.push_back(0);
    int seen = 1;
    for (int j = 0; j < n; ++j) {
      if (j > 0 && by_distance[j].first > by_distance[j - 1].first && ++seen > shells) break;
      g.lists.push_back(static_cast<uint16_t>(by_distance[j].second));
    }
    g.lists[head] = static_cast<uint16_t>(g.lists.size() - head - 1);
  }
  return g;
}

// The value a grid coordinate c = 2l + 1 stands for: c itself (IQ2, IQ3; IQ1 maps it).
struct Coordinate {
  float operator()(int8_t c) const { return static_cast<float>(c); }
};

// The grid index for the levels in L (Dim of them), taking the best neighbour when they are off
// the grid (lowest sum w (scale value(c) - x)², the first on ties); L gets the chosen point's levels.
template <int Dim, int Bits, class Value = Coordinate>
int snap_to_grid(const GridSearch<Dim, Bits>& g, const float* x, const float* w, float scale, int8_t* L, bool& on_grid,
                 Value value = {}) {
  const int u = g.tuple_of(L);
  on_grid = g.index[u] >= 0;
  if (on_grid) return g.index[u];
  const uint16_t* list = g.lists.data() + (-1 - g.index[u]);
  float best = FLT_MAX;
  int best_k = list[1];
  for (int j = 1; j <= list[0]; ++j) {
    float d2 = 0;
    for (int i = 0; i < Dim; ++i) {
      const float diff = scale * value(g.points[list[j]][i]) - x[i];
      d2 += w[i] * diff * diff;
    }
    if (d2 < best) best = d2, best_k = list[j];
  }
  for (int i = 0; i < Dim; ++i) L[i] = static_cast<int8_t>((g.points[best_k][i] - 1) / 2);
  return best_k;
}

// How the points are re-snapped at the chosen scale: those that were off the grid (IQ3_XXS,
// IQ2_XS, IQ2_S); all of them when any was off (IQ3_S); all of them always (IQ2_XXS).
enum class Resnap { OffGrid, AllIfAnyOff, All };

struct Search {
  int trials;      // trial scales is in -trials..trials
  float step;      // trial is: (2 max_level + 1 + is * step) / ref
  int max_level;   // levels 0..max_level
  Resnap resnap;
};

// One row's state. L and on_grid outlive a group as in ggml (a group whose trials all fail keeps
// the previous group's), which only matters for degenerate weights.
template <int G, int Dim>
struct GroupState {
  static constexpr int kPoints = G / Dim;
  float weight[G], xval[G], waux[G];
  int8_t L[G] = {}, trial[G];
  bool on_grid[kPoints] = {}, trial_on_grid[kPoints];
  uint16_t grid_index[kPoints];
};

template <int G, int Dim>
void fit_sums(const GroupState<G, Dim>& s, const int8_t* L, float& sumqx, float& sumq2) {
  sumqx = 0, sumq2 = 0;
  for (int i = 0; i < G; ++i) {
    const float q = static_cast<float>(2 * L[i] + 1);
    sumqx += s.weight[i] * s.xval[i] * q;
    sumq2 += s.weight[i] * q * q;
  }
}

inline void round_levels(const float* xval, int n, float inv_scale, int max_level, int8_t* L) {
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(std::clamp(nearest_int(0.5f * (inv_scale * xval[i] - 1)), 0, max_level));
}

// The group's scale (magnitudes in s.xval; ref > 0 the reference magnitude of the trials, scale the
// scale kept if no trial fits) and its grid indexes in s.grid_index.
template <int G, int Dim, int Bits>
float quantize_group(const GridSearch<Dim, Bits>& g, GroupState<G, Dim>& s, float ref, float scale, const Search& how) {
  constexpr int K = G / Dim;
  const float top = static_cast<float>(2 * how.max_level + 1);
  float best = 0;
  for (int is = -how.trials; is <= how.trials; ++is) {
    const float id = (top + static_cast<float>(is) * how.step) / ref;
    const float trial_scale = 1 / id;
    for (int k = 0; k < K; ++k) {
      round_levels(s.xval + Dim * k, Dim, id, how.max_level, s.trial + Dim * k);
      snap_to_grid(g, s.xval + Dim * k, s.waux + Dim * k, trial_scale, s.trial + Dim * k, s.trial_on_grid[k]);
    }
    float sumqx, sumq2;
    fit_sums(s, s.trial, sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2, best = scale * sumqx;
      std::copy_n(s.trial, G, s.L);
      std::copy_n(s.trial_on_grid, K, s.on_grid);
    }
  }
  const bool any_off = std::count(s.on_grid, s.on_grid + K, false) > 0;
  if (scale > 0 && (how.resnap == Resnap::All || any_off)) {
    const float id = 1 / scale;
    for (int k = 0; k < K; ++k) {
      if (how.resnap == Resnap::OffGrid && s.on_grid[k]) continue;
      bool unused;
      round_levels(s.xval + Dim * k, Dim, id, how.max_level, s.L + Dim * k);
      snap_to_grid(g, s.xval + Dim * k, s.waux + Dim * k, scale, s.L + Dim * k, unused);
    }
    float sumqx, sumq2;
    fit_sums(s, s.L, sumqx, sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  // ggml aborts on a point off the grid here (only degenerate weights get one); Squish snaps it.
  for (int k = 0; k < K; ++k) {
    bool unused;
    s.grid_index[k] = static_cast<uint16_t>(snap_to_grid(g, s.xval + Dim * k, s.waux + Dim * k, scale, s.L + Dim * k, unused));
  }
  return scale;
}

// |x| of 8 weights into xval and their sign bits (bit j: x_j < 0 or NaN). With `even` the count of
// negatives is made even, as the 7-bit sign codes need: the weight of least w x² is flipped (it is
// then quantized as its own negative), and the 7 stored bits are returned.
inline uint8_t signs_of_8(const float* x, const float* weight, float* xval, bool even) {
  unsigned bits = 0;
  for (int j = 0; j < 8; ++j) {
    xval[j] = x[j] >= 0 ? x[j] : -x[j];
    if (!(x[j] >= 0)) bits |= 1u << j;
  }
  if (!even) return static_cast<uint8_t>(bits);
  if (std::popcount(bits) % 2) {
    int imin = 0;
    float min = weight[0] * x[0] * x[0];
    for (int j = 1; j < 8; ++j) {
      const float e = weight[j] * x[j] * x[j];
      if (e < min) min = e, imin = j;
    }
    xval[imin] = -xval[imin];
    bits ^= 1u << imin;
  }
  return static_cast<uint8_t>(bits & 127);
}

// True when no weight of the group's error is positive (an imatrix with dead channels): no fit can
// tell its levels apart, and ggml's IQ1_S, IQ1_M and IQ2_XXS abort there. Those store it as a group
// of zeros, kept out of the super-block's scale.
inline bool weightless(const float* w, int n) {
  for (int i = 0; i < n; ++i)
    if (w[i] > 0) return false;
  return true;
}

inline float max_of(const float* v, int n) {
  float max = v[0];
  for (int j = 1; j < n; ++j) max = max > v[j] ? max : v[j];
  return max;
}

// mult * mean of x² over a super-block (ggml writes mult*sumx2/QK_K).
inline float super_block_sigma2(const float* x, float mult) {
  float sumx2 = 0;
  for (int i = 0; i < kQK_K; ++i) sumx2 += x[i] * x[i];
  return mult * sumx2 / kQK_K;
}

// The error weights of n values: qw_j * sqrt(sigma² + x_j²) with an importance row, else the
// type's own choice `plain`; and their square roots for the neighbour search.
template <int G, int Dim, class Plain>
void group_weights(GroupState<G, Dim>& s, const float* x, const float* qw, float sigma2, Plain plain) {
  for (int i = 0; i < G; ++i) s.weight[i] = qw ? qw[i] * std::sqrt(sigma2 + x[i] * x[i]) : plain(x[i]);
  for (int i = 0; i < G; ++i) s.waux[i] = std::sqrt(s.weight[i]);
}

// The 4-bit odd multiple of d nearest a group scale: s with scale ~ d (2s + 1).
inline uint32_t scale_code(float scale, float inv_d) {
  return static_cast<uint32_t>(std::clamp(nearest_int(0.5f * (inv_d * scale - 1)), 0, 15));
}

}  // namespace squish::quant::iq
