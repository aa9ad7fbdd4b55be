#pragma once
// The layer-major score pass (Transformer::mask_importance_by_layer): a run of chunks scored
// layer by layer instead of chunk by chunk, with the chunks' activation checkpoints and
// gradients in a spill store (memory, then an unnamed scratch file). Internal to core/model.
#include "core/model/reference_model.hpp"

namespace squish {

// Chunks [c0, c1) of n_ctx tokens under `masks`, their mask importance and statistics added in
// the order loss_and_grads chunk by chunk would add them (the same sums, bit for bit).
template <class F>
LossResult layer_major_pass(ReferenceModel<F>& model, std::span<const int32_t> tokens, int n_ctx, int c0, int c1,
                            const MaskSet& masks, MaskImportance& importance, ActivationStats* stats,
                            const LayerMajorOptions& opt, LayerMajorReport* report);

extern template LossResult layer_major_pass(ReferenceModel<float>&, std::span<const int32_t>, int, int, int, const MaskSet&,
                                            MaskImportance&, ActivationStats*, const LayerMajorOptions&, LayerMajorReport*);
extern template LossResult layer_major_pass(ReferenceModel<double>&, std::span<const int32_t>, int, int, int, const MaskSet&,
                                            MaskImportance&, ActivationStats*, const LayerMajorOptions&, LayerMajorReport*);

}  // namespace squish
