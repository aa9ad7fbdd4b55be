#include "core/linalg/spd.hpp"

#include "core/base/error.hpp"

#include <cstddef>

// LAPACK from OpenBLAS (Fortran calling convention: trailing hidden string lengths). Declared
// here only: this file is the one user of LAPACK.
extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b, const int* ldb, int* info,
             size_t uplo_len);
}

namespace squish::linalg {

double mean_diagonal(const std::vector<double>& a, int n, int count) {
  double s = 0;
  for (int i = 0; i < count; ++i) s += a[size_t(i) * n + i];
  s = count ? s / count : 0;
  return s > 0 ? s : 1;
}

DampedCholesky damped_cholesky(std::vector<double> a, int n, int damped, double mean_diag, double ridge, int attempts,
                               const char* what) {
  for (int attempt = 0; attempt < attempts; ++attempt, ridge *= 10) {
    std::vector<double> f = a;
    for (int i = 0; i < damped; ++i) f[size_t(i) * n + i] += ridge * mean_diag;
    int info = 0;
    dpotrf_("L", &n, f.data(), &n, &info, 1);
    if (info == 0) return {std::move(f), ridge};
  }
  fail(ExitCode::InputData, "{} not positive definite even with damping", what);
}

void inverse_from_cholesky(std::vector<double>& f, int n, const char* what) {
  int info = 0;
  dpotri_("L", &n, f.data(), &n, &info, 1);
  if (info != 0) fail(ExitCode::InputData, "{} could not be inverted", what);
  for (int j = 0; j < n; ++j)  // lower triangle (column-major) -> full
    for (int i = j + 1; i < n; ++i) f[size_t(j) + size_t(i) * n] = f[size_t(i) + size_t(j) * n];
}

void solve_with_cholesky(const std::vector<double>& f, int n, double* b, int nrhs, const char* what) {
  int info = 0;
  dpotrs_("L", &n, &nrhs, f.data(), &n, b, &n, &info, 1);
  if (info != 0) fail(ExitCode::Runtime, "{}: solve failed (LAPACK info {})", what, info);
}

bool upper_cholesky(std::vector<double>& a, int n) {
  int info = 0;
  dpotrf_("U", &n, a.data(), &n, &info, 1);
  return info == 0;
}

}  // namespace squish::linalg
