#pragma once
// Error-compensating quantization (GPTQ: Frantar et al. 2022; the LDLQ view: Chee et al. 2023)
// into ordinary ggml blocks, so the file still loads in any GGUF runtime.
//
// With H = E[x xᵀ] of the layer's input (from calibration), the output error of a quantized
// weight matrix is tr((W - Q) H (W - Q)ᵀ). GPTQ quantizes the columns left to right; after each
// column it moves the column's rounding error onto the columns not yet quantized, along the
// rows of the upper Cholesky factor U of H⁻¹ (damped), which keeps the output error minimal
// given the columns already fixed. Into ggml's formats: when a column starts a (super-)block,
// ggml's own scale search (importance-weighted) picks that block's scales from the weights as
// they are now, error updates included; then each weight of the block takes the level nearest
// to its updated value on that grid (core/quant/levels.hpp), and the block is re-encoded with
// those scales. Lazy batches (GPTQ's "lazy batch updates") keep the trailing update a GEMM.
#include "core/quant/ggml_types.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace squish::quant {

// GPTQ's default damping (as AutoGPTQ and llm-compressor: 1% of H's mean diagonal); every
// default elsewhere (plan, compress, recipes) is this one.
inline constexpr double kDefaultDamp = 0.01;

struct GptqOptions {
  double damp = kDefaultDamp;  // added to H's diagonal, as a fraction of the mean diagonal
  int batch = 128;     // columns per lazy batch
  // Columns by decreasing H_ii, with every block's scales fixed up front from the original
  // weights ("static groups"); the file keeps the original column order.
  bool act_order = false;
  // The factor in double precision (about twice the time and memory) instead of the float one,
  // which is otherwise taken when its measured residual is within kFloatFactorTolerance.
  bool double_factor = false;
};

// Largest || Uᵀ U H_d v - v || / || v || (two fixed probes) at which the float factor is used.
// GPTQ's updates are U's rows, so a relative error e in them moves each update by ~e and adds
// O(e²) to the output error it removes: at 1e-3, a millionth of it.
inline constexpr double kFloatFactorTolerance = 1e-3;

// What GPTQ needs of H, computed once per layer input (q/k/v share one, as do gate/up, and every
// candidate type of a measurement): the upper Cholesky factor U of the damped H⁻¹ (n x n,
// row-major; in act-order's column order when act_order), and H's diagonal.
struct GptqFactor {
  int n = 0;
  bool act_order = false;
  double damp = 0;
  std::vector<float> U;
  std::vector<int> perm;   // act-order: processing position -> column
  std::vector<float> diag; // H_ii (the scale search's weights without an imatrix)
  double float_residual = 0; // the float factor's probe residual (0 when not tried)
  double mean_diag = 1;      // H's mean diagonal (a dead input's curvature in H_d)
  double ridge = 0;          // added to H's diagonal: damp x mean_diag (or more, if that failed)
  bool in_double = false;    // the factor was computed in double precision
};
GptqFactor gptq_factor(const float* H, int64_t cols, const GptqOptions& opt = {});

// True for the types gptq_quantize handles (those with levels per weight: Q8_0, Q4_0, Q2_K..Q6_K,
// IQ4_NL, IQ4_XS; not the grid i-quants, whose codes span 4 or 8 weights).
bool gptq_supported(GGMLType type);

// Quantizes W (rows x cols, row-major) to `type`, one ggml row per W row (ggml_row_size(type,
// cols) bytes each). H: cols x cols, symmetric, E[x xᵀ] of the input (a dead column, H_ii = 0,
// is quantized without spreading its error). imatrix: per-column weights for the scale search
// (nullptr: diag(H), which is the same statistic). Parallel over row blocks (TBB).
std::vector<std::byte> gptq_quantize(GGMLType type, const float* W, int64_t rows, int64_t cols, const float* H,
                                     const float* imatrix, const GptqOptions& opt = {});
// The same with a factor from gptq_factor(H, cols, opt) (same damp and act_order). With
// `row_error`, each row's output error (W - Q)_r H (W - Q)_rᵀ as GPTQ's own bookkeeping gives it,
// without a second pass over H: each column's scaled error e = (w - q) / U_ii, spread onto the
// later columns along U's row, adds exactly e² to the error on the damped H_d (the OBS identity,
// exact for U exact), from which the damping's share Σ (H_d - H)_jj (w - q)_j² is taken out.
std::vector<std::byte> gptq_quantize(GGMLType type, const float* W, int64_t rows, int64_t cols, const GptqFactor& factor,
                                     const float* imatrix, const GptqOptions& opt = {}, std::vector<double>* row_error = nullptr);

// tr((W - Q) H (W - Q)ᵀ) / rows, Q the dequantized `q` (the output error GPTQ minimises).
double output_error(GGMLType type, const float* W, const std::byte* q, int64_t rows, int64_t cols, const float* H);

}  // namespace squish::quant
