#pragma once
// Retrain-free repair of an output projection (o_proj, down_proj) whose inputs pruning removes,
// from the calibration statistics of its input x: H = E[x xᵀ] and μ = E[x].
//
// The projection y = W x (+ b) keeps the inputs K and loses R. Three repairs:
//   none   W' = W_K                      error  E|W_R x_R|²
//   bias   W' = W_K, b += W_R μ_R        error  E|W_R (x_R - μ_R)|²  (FLAP, An et al. 2024)
//   refit  [W' b'] = [W_K b] + W_R X     X regresses x_R on z = [x_K; 1]:
//          X = [H_RK μ_R] (G + λI)⁻¹, G = E[z zᵀ] = [[H_KK μ_K] [μ_Kᵀ 1]]
//          error  E|W_R (x_R - X z)|²  (the least-squares fit of the unpruned output over the
//          kept inputs and a constant; λ ridge-damps the kept inputs only, so nothing removed
//          means nothing changed)
//
// Selection needs what a removal would cost before doing it. With row weights g (the Fisher
// factor of the projection's output, E[(n ∂L/∂y_i)²]) the predicted loss of removing R is
//   ½ Σ_i g_i e_i = ½ tr(A_RR Q_R),  A = Wᵀ diag(g) W
// with Q_R = H_RR (none), Cov_RR = H_RR - μ_R μ_Rᵀ (bias) or (P_RR)⁻¹ (refit, P = the inverse
// of the damped augmented moments over every input: Optimal Brain Surgeon's group removal).
// These are joint costs: removing two groups is not the sum of removing each.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace squish::prune {

// The refit's default ridge, a fraction of the kept inputs' mean E[x²]; every default elsewhere
// (plan, recipes) is this one.
inline constexpr double kDefaultRidge = 0.01;

enum class Recovery { None, Bias, Refit };
// "none" | "bias" | "refit"; throws Error(Usage) for anything else.
Recovery recovery_from_name(const std::string& name);
const char* recovery_name(Recovery r);

// Calibration statistics of one projection's input.
struct InputStats {
  int n = 0;
  std::vector<float> h;     // n x n, E[x xᵀ], full symmetric
  std::vector<float> mean;  // n, E[x]
};

struct Repair {
  std::vector<float> weight;  // rows x keep.size(), row-major: the kept columns, repaired
  std::vector<float> bias;    // rows: to add to the projection's output (its bias)
};

// W is rows x n row-major (HF [out, in]); keep: kept columns, ascending.
Repair repair(const float* w, int64_t rows, int n, std::span<const int64_t> keep, const InputStats& s, Recovery mode,
              double damp);

// Per output row, E[(W x - (W' x_K + b))²] over the calibration inputs: what the repaired
// projection gets wrong relative to the unpruned one.
std::vector<double> reconstruction_error(const float* w, int64_t rows, int n, std::span<const int64_t> keep, const Repair& r,
                                         const InputStats& s);

// Predicted loss of removing sets of input columns of one projection under one repair.
class RemovalCost {
 public:
  // row_weight: g (rows values, >= 0).
  RemovalCost(const float* w, int64_t rows, int n, const InputStats& s, std::span<const float> row_weight, Recovery mode,
              double damp);
  // ½ tr(A_RR Q_R): the removal of every column in `removed` at once.
  double operator()(std::span<const int64_t> removed) const;
  // Of one column alone (the diagonal of the above): cheap, for ranking many columns.
  double single(int64_t column) const;
  int n() const { return n_; }

 private:
  int n_ = 0;
  Recovery mode_;
  std::vector<double> a_;  // n x n: Wᵀ diag(g) W
  std::vector<double> m_;  // n x n: H, Cov or P
};

}  // namespace squish::prune
