// Run-time dispatch between the scalar references and the AVX2 paths.
#include "core/quant/quantize.hpp"

#include "core/quant/type_registry.hpp"
#include "core/base/error.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace squish {

bool quant_simd_enabled() { return simd_level() >= SimdLevel::Avx2; }

void quantize_rows(GGMLType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* imatrix) {
  if (!quantize_supported(type)) fail(ExitCode::Runtime, "quantization to {} is not supported", ggml_type_name(type));
  const size_t row_size = ggml_row_size(type, n_per_row);
  if (const PluginType* p = plugin_type(type)) {
    if (!p->supports_row(n_per_row))
      fail(ExitCode::Runtime, "type {} (plugin '{}') cannot store rows of {} elements", p->name, p->plugin, n_per_row);
    p->ops.quantize_rows(p->ops.self, src, dst, nrows, n_per_row, imatrix);
    return;
  }
  auto* out = static_cast<std::byte*>(dst);
  const bool simd = quant_simd_enabled();
  for (int64_t r = 0; r < nrows; ++r) {
    const float* x = src + r * n_per_row;
    void* y = out + static_cast<size_t>(r) * row_size;
    if (simd)
      avx2::quantize_row(type, x, y, n_per_row, imatrix);
    else
      ref::quantize_row(type, x, y, n_per_row, imatrix);
  }
}

void dequantize_row(GGMLType type, const void* src, float* dst, int64_t n) {
  if (const PluginType* p = plugin_type(type)) return p->ops.dequantize_row(p->ops.self, src, dst, n);
  if (quant_simd_enabled())
    avx2::dequantize_row(type, src, dst, n);
  else
    ref::dequantize_row(type, src, dst, n);
}

}  // namespace squish
