#include "core/linalg/spd.hpp"

#include "core/base/error.hpp"

#include <cblas.h>
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <cstddef>
#include <utility>

// LAPACK from OpenBLAS (Fortran calling convention: trailing hidden string lengths). Declared
// here only: this file is the one user of LAPACK.
extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b, const int* ldb, int* info,
             size_t uplo_len);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, size_t uplo_len);
void strtri_(const char* uplo, const char* diag, const int* n, float* a, const int* lda, int* info, size_t uplo_len, size_t diag_len);
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info, size_t uplo_len, size_t diag_len);
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

namespace {

// Tile edge: large enough that each tile's sgemm runs near the machine's rate, small enough that
// each step's trailing update still has tens of tiles for the threads. A function of n alone.
int tile_for(int n) { return n < 8192 ? 128 : 256; }

size_t at(int row, int col, int n) { return size_t(row) + size_t(col) * size_t(n); }

// The BLAS and LAPACK calls of the tiles, by element type (column-major throughout).
void potrf_lower(int n, float* a, int lda, int* info) { spotrf_("L", &n, a, &lda, info, 1); }
void potrf_lower(int n, double* a, int lda, int* info) { dpotrf_("L", &n, a, &lda, info, 1); }
void trtri_lower(int n, float* a, int lda, int* info) { strtri_("L", "N", &n, a, &lda, info, 1, 1); }
void trtri_lower(int n, double* a, int lda, int* info) { dtrtri_("L", "N", &n, a, &lda, info, 1, 1); }
void trsm(CBLAS_SIDE s, CBLAS_UPLO u, CBLAS_TRANSPOSE t, int m, int n, float al, const float* a, int lda, float* b, int ldb) {
  cblas_strsm(CblasColMajor, s, u, t, CblasNonUnit, m, n, al, a, lda, b, ldb);
}
void trsm(CBLAS_SIDE s, CBLAS_UPLO u, CBLAS_TRANSPOSE t, int m, int n, double al, const double* a, int lda, double* b, int ldb) {
  cblas_dtrsm(CblasColMajor, s, u, t, CblasNonUnit, m, n, al, a, lda, b, ldb);
}
void trmm(CBLAS_SIDE s, CBLAS_UPLO u, CBLAS_TRANSPOSE t, int m, int n, float al, const float* a, int lda, float* b, int ldb) {
  cblas_strmm(CblasColMajor, s, u, t, CblasNonUnit, m, n, al, a, lda, b, ldb);
}
void trmm(CBLAS_SIDE s, CBLAS_UPLO u, CBLAS_TRANSPOSE t, int m, int n, double al, const double* a, int lda, double* b, int ldb) {
  cblas_dtrmm(CblasColMajor, s, u, t, CblasNonUnit, m, n, al, a, lda, b, ldb);
}
void syrk_lower(int n, int k, float al, const float* a, int lda, float be, float* c, int ldc) {
  cblas_ssyrk(CblasColMajor, CblasLower, CblasNoTrans, n, k, al, a, lda, be, c, ldc);
}
void syrk_lower(int n, int k, double al, const double* a, int lda, double be, double* c, int ldc) {
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, n, k, al, a, lda, be, c, ldc);
}
void gemm(CBLAS_TRANSPOSE tb, int m, int n, int k, float al, const float* a, int lda, const float* b, int ldb, float be, float* c, int ldc) {
  cblas_sgemm(CblasColMajor, CblasNoTrans, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc);
}
void gemm(CBLAS_TRANSPOSE tb, int m, int n, int k, double al, const double* a, int lda, const double* b, int ldb, double be, double* c,
          int ldc) {
  cblas_dgemm(CblasColMajor, CblasNoTrans, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc);
}

}  // namespace

template <typename T>
bool cholesky_lower(T* a, int n) {
  const int kTile = tile_for(n);
  // Right-looking: factor the diagonal tile, solve the panel below it, update the trailing lower
  // triangle; each step's tiles run in parallel.
  for (int k0 = 0; k0 < n; k0 += kTile) {
    const int kb = std::min(kTile, n - k0), r0 = k0 + kb, rest = n - r0;
    T* akk = a + at(k0, k0, n);
    int info = 0;
    potrf_lower(kb, akk, n, &info);
    if (info != 0) return false;
    if (rest == 0) break;
    const int tiles = (rest + kTile - 1) / kTile;
    tbb::parallel_for(0, tiles, [&](int t) {  // A_ik <- A_ik L_kk⁻ᵀ
      const int i0 = r0 + t * kTile, ib = std::min(kTile, n - i0);
      trsm(CblasRight, CblasLower, CblasTrans, ib, kb, T(1), akk, n, a + at(i0, k0, n), n);
    });
    std::vector<std::pair<int, int>> pairs;  // (i, j) tiles of the trailing lower triangle
    for (int i = 0; i < tiles; ++i)
      for (int j = 0; j <= i; ++j) pairs.emplace_back(i, j);
    tbb::parallel_for(size_t(0), pairs.size(), [&](size_t p) {  // A_ij -= A_ik A_jkᵀ
      const int i0 = r0 + pairs[p].first * kTile, j0 = r0 + pairs[p].second * kTile;
      const int ib = std::min(kTile, n - i0), jb = std::min(kTile, n - j0);
      if (i0 == j0)
        syrk_lower(ib, kb, T(-1), a + at(i0, k0, n), n, T(1), a + at(i0, i0, n), n);
      else
        gemm(CblasTrans, ib, jb, kb, T(-1), a + at(i0, k0, n), n, a + at(j0, k0, n), n, T(1), a + at(i0, j0, n), n);
    });
  }
  return true;
}

template <typename T>
void invert_lower(T* l, int n) {
  const int kTile = tile_for(n);
  // Block columns from the last to the first: with X = L⁻¹ already in place right of column
  // j0 + jb, X_jj = L_jj⁻¹ and X_(below j) = -X_(below) L_(below j) X_jj, the product formed
  // tile by tile in a scratch panel (n x kTile) and copied back.
  std::vector<T> panel(size_t(n) * kTile);
  for (int j0 = (n - 1) / kTile * kTile; j0 >= 0; j0 -= kTile) {
    const int jb = std::min(kTile, n - j0), r0 = j0 + jb, rest = n - r0;
    T* xjj = l + at(j0, j0, n);
    if (rest > 0) {
      const int tiles = (rest + kTile - 1) / kTile;
      tbb::parallel_for(0, tiles, [&](int t) {  // panel_i = sum_{m <= i} X_im L_mj
        const int i0 = r0 + t * kTile, ib = std::min(kTile, n - i0);
        T* p = panel.data() + size_t(i0 - r0);
        for (int c = 0; c < jb; ++c) std::copy_n(l + at(i0, j0 + c, n), ib, p + size_t(c) * rest);
        trmm(CblasLeft, CblasLower, CblasNoTrans, ib, jb, T(1), l + at(i0, i0, n), n, p, rest);
        if (i0 > r0) gemm(CblasNoTrans, ib, jb, i0 - r0, T(1), l + at(i0, r0, n), n, l + at(r0, j0, n), n, T(1), p, rest);
      });
    }
    int info = 0;
    trtri_lower(jb, xjj, n, &info);
    if (info != 0) fail(ExitCode::Runtime, "triangular inverse: zero on the diagonal at {}", j0 + info - 1);
    if (rest == 0) continue;
    trmm(CblasRight, CblasLower, CblasNoTrans, rest, jb, T(-1), xjj, n, panel.data(), rest);
    for (int c = 0; c < jb; ++c) std::copy_n(panel.data() + size_t(c) * rest, rest, l + at(r0, j0 + c, n));
  }
}

template bool cholesky_lower<float>(float*, int);
template bool cholesky_lower<double>(double*, int);
template void invert_lower<float>(float*, int);
template void invert_lower<double>(double*, int);

}  // namespace squish::linalg
