// Quantization and dequantization through the type's row of the traits table (ggml_types.hpp).
#include "core/quant/quantize.hpp"

#include "core/base/error.hpp"

namespace squish {

namespace {
const GGMLTypeTraits& quantizer(const GGMLTypeTraits* t, GGMLType type) {
  if (!t || !t->quantize_rows) fail(ExitCode::Runtime, "quantization to {} is not supported", ggml_type_name(type));
  return *t;
}
const GGMLTypeTraits& dequantizer(const GGMLTypeTraits* t, GGMLType type) {
  if (!t || !t->dequantize_row) fail(ExitCode::Runtime, "dequantization of {} is not supported", ggml_type_name(type));
  return *t;
}
}  // namespace

bool quant_simd_enabled() { return simd_level() >= SimdLevel::Avx2; }

bool quantize_supported(GGMLType type) {
  const GGMLTypeTraits* t = ggml_type_traits(type);
  return t && t->quantize_rows;
}

void quantize_rows(GGMLType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* imatrix) {
  const GGMLTypeTraits& t = quantizer(ggml_type_traits(type), type);
  (void)blocks_of(t, n_per_row);
  t.quantize_rows(t.self, src, dst, nrows, n_per_row, imatrix);
}

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  const GGMLTypeTraits& t = dequantizer(ggml_type_traits(type), type);
  t.dequantize_row(t.self, src, dst, n);
}

namespace ref {
void quantize_row(GGMLType type, const float* src, void* dst, int64_t n, const float* imatrix) {
  const GGMLTypeTraits& t = quantizer(ggml_type_traits(type, SimdLevel::Scalar), type);
  t.quantize_rows(t.self, src, dst, 1, n, imatrix);
}
void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  const GGMLTypeTraits& t = dequantizer(ggml_type_traits(type, SimdLevel::Scalar), type);
  t.dequantize_row(t.self, src, dst, n);
}
}  // namespace ref

}  // namespace squish
