#include "stages/compress/prune.hpp"

#include "core/convert/hf_to_gguf.hpp"
#include "core/quant/quantize.hpp"
#include "core/base/error.hpp"

#include <oneapi/tbb/parallel_for.h>

#include <cmath>
#include <fmt/ranges.h>

namespace squish::compress {
using namespace squish::recipe;

std::vector<float> prune_tensor(const Tensor& in, const PlannedTensor& p, const std::string& origin) {
  if (in.shape != p.src_shape)
    fail(ExitCode::InputData, "{}: tensor '{}' has shape [{}] but the plan expects [{}]", origin, in.name,
         fmt::join(in.shape, ", "), fmt::join(p.src_shape, ", "));
  std::vector<float> src = in.to_f32();
  for (size_t i = 0; i < src.size(); ++i)
    if (!std::isfinite(src[i]))
      fail(ExitCode::InputData, "{}: tensor '{}' has a non-finite value ({}) at element {}", origin, in.name, src[i], i);

  const int64_t rows = in.shape.size() >= 2 ? in.shape[0] : in.shape.empty() ? 1 : in.shape[0];
  const int64_t cols = in.shape.size() >= 2 ? src.size() / rows : 1;
  std::vector<float> out;
  if (p.keep_rows.empty() && p.keep_cols.empty()) {
    out = std::move(src);
  } else {
    const auto& kr = p.keep_rows;
    const auto& kc = p.keep_cols;
    const int64_t out_rows = kr.empty() ? rows : static_cast<int64_t>(kr.size());
    const int64_t out_cols = kc.empty() ? cols : static_cast<int64_t>(kc.size());
    out.resize(static_cast<size_t>(out_rows * out_cols));
    for (int64_t r = 0; r < out_rows; ++r) {
      const int64_t sr = kr.empty() ? r : kr[r];
      const float* s = src.data() + sr * cols;
      float* d = out.data() + r * out_cols;
      if (kc.empty()) std::copy(s, s + cols, d);
      else
        for (int64_t c = 0; c < out_cols; ++c) d[c] = s[kc[c]];
    }
  }
  if (p.permute_heads > 0) {
    const int64_t out_rows = p.shape[0];
    const int64_t row_len = static_cast<int64_t>(out.size()) / out_rows;
    std::vector<float> perm(out.size());
    gguf::permute_qk_rows(out.data(), perm.data(), out_rows, row_len, p.permute_heads);
    out = std::move(perm);
  }
  return out;
}

std::vector<std::byte> quantize_tensor(std::span<const float> data, const PlannedTensor& p, const float* imatrix) {
  const int64_t n_per_row = p.ne[0];
  const int64_t nrows = static_cast<int64_t>(data.size()) / n_per_row;
  const size_t row_bytes = ggml_row_size(p.type, n_per_row);
  std::vector<std::byte> out(row_bytes * static_cast<size_t>(nrows));
  // Rows are independent: split them across threads (large tensors dominate wall time).
  const int64_t chunk = std::max<int64_t>(1, 65536 / n_per_row);
  oneapi::tbb::parallel_for(int64_t{0}, (nrows + chunk - 1) / chunk, [&](int64_t c) {
    const int64_t r0 = c * chunk, r1 = std::min(nrows, r0 + chunk);
    quantize_rows(p.type, data.data() + r0 * n_per_row, out.data() + r0 * row_bytes, r1 - r0, n_per_row, imatrix);
  });
  return out;
}

}  // namespace squish::compress
