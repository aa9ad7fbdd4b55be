#pragma once
// Symmetric positive (semi)definite systems through LAPACK (OpenBLAS), behind one damping rule:
// the second moments Squish factors (GPTQ's H, pruning refits' input moments) are singular
// wherever an input is dead or inputs are collinear, so a ridge proportional to the mean
// diagonal is added and raised tenfold until the factorization succeeds.
// Matrices are n x n doubles in column-major order; for a symmetric matrix either layout.
#include <vector>

namespace squish::linalg {

// Mean of the first `count` diagonal entries, or 1 when that is not positive (no signal at all:
// the ridge then sets the scale).
double mean_diagonal(const std::vector<double>& a, int n, int count);

// A = L Lᵀ after adding ridge x mean_diag to the first `damped` diagonal entries, the ridge
// raised tenfold after each failure, `attempts` tries in all. Returns L (lower triangle; the
// strict upper triangle keeps A's values) and the ridge that worked; throws Error(InputData)
// "<what> not positive definite even with damping" when every try fails.
struct DampedCholesky {
  std::vector<double> lower;
  double ridge = 0;
};
DampedCholesky damped_cholesky(std::vector<double> a, int n, int damped, double mean_diag, double ridge, int attempts,
                               const char* what);

// A⁻¹ from A's factor L (in place), the full symmetric matrix. Throws Error(InputData) naming
// `what` when LAPACK refuses.
void inverse_from_cholesky(std::vector<double>& lower, int n, const char* what);

// Solves A X = B for nrhs right-hand sides (B: n x nrhs, column-major, overwritten by X) from L.
void solve_with_cholesky(const std::vector<double>& lower, int n, double* b, int nrhs, const char* what);

// Blocked and parallel (TBB) forms for the large factors (GPTQ's H at n = 18,944 or 27,648:
// n³/3 flops each), for T = float or double. Each tile is a single-threaded BLAS call and the
// tiles depend on n only, so the bits do not depend on the thread count; TBB rather than
// OpenBLAS's own threads so that they share the process's one thread pool with the tensors
// quantized beside them.
// Matrices are n x n, column-major.

// A = L Lᵀ in place (the lower triangle is read and overwritten by L; the strict upper triangle
// is left as it was). Returns false when A is not positive definite.
template <typename T>
bool cholesky_lower(T* a, int n);

// L⁻¹ in place, for L lower triangular with a nonzero diagonal (the lower triangle; the strict
// upper triangle is left as it was).
template <typename T>
void invert_lower(T* l, int n);

}  // namespace squish::linalg
