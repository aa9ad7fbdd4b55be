#pragma once
// Structured pruning of one tensor as a CompressPlan says: keep rows (q/k/v heads, FFN
// gate/up channels), keep columns (o_proj heads, down_proj channels), then the llama q/k rope
// permutation. Output is float32 in HF order (outermost first), ready to quantize.
#include "core/base/tensor.hpp"
#include "core/recipe/recipe.hpp"

#include <span>
#include <vector>

namespace squish::compress {
using namespace squish::recipe;

// Throws Error(InputData) naming the tensor when it holds NaN/Inf or its shape disagrees with the plan.
std::vector<float> prune_tensor(const Tensor& in, const PlannedTensor& plan, const std::string& origin);

// Quantizes a pruned tensor (rows of ne[0] floats) to plan.type; multithreaded over rows.
std::vector<std::byte> quantize_tensor(std::span<const float> data, const PlannedTensor& plan, const float* imatrix = nullptr);

}  // namespace squish::compress
