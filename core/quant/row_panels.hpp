#pragma once
// Weight rows rearranged for decode: panels of 16 rows interleaved block by block, so one
// AVX-512 VNNI instruction multiplies 4 weights of each of the 16 rows by the same 4 activations
// and every lane is one row's sum (no horizontal sums, one streaming read per panel).
//
// Q8_0 only: its row-at-a-time dot costs ~5 instructions per 34-byte block and could not keep up
// with memory on two cores (0.77x llama.cpp's decode on a 1B model); the K-quants' dots do.
//
// Panel layout (Q8_0, n/32 blocks, kPanelBlockBytes = 544 each, the same bytes as 16 rows):
//   per block b: 16 fp16 row scales (32 bytes), then for k = 0..7 the levels 4k..4k+3 of each of
//   the 16 rows (64 bytes), stored +128 as unsigned bytes (VNNI multiplies unsigned by signed;
//   the kernel subtracts 128 * the block's activation sum).
#include "core/quant/ggml_types.hpp"

#include <cstddef>
#include <cstdint>

namespace squish::quant {

constexpr int64_t kPanelRows = 16;

// Whether decode on this machine uses panels for `type` (Q8_0 with simd_level() == Avx512).
bool panels_supported(GGMLType type);
// Bytes of one panel of kPanelRows rows of n values (n a multiple of the block size).
size_t panel_bytes(GGMLType type, int64_t n);
// Rearranges kPanelRows rows (the first at `rows`, row_bytes apart) into `panel`.
void pack_panel(GGMLType type, int64_t n, const void* rows, size_t row_bytes, void* panel);
// out[r] = vec_dot(row r of the panel, xq) for the panel's 16 rows; xq as quantize_activations
// prepared it for `type`. Equal to vec_dot per row up to float summation order.
void panel_matvec(GGMLType type, int64_t n, const void* panel, const void* xq, float* out);

namespace ref {
// Scalar reference: the same block order and arithmetic as ref::vec_dot, so results are equal.
void panel_matvec(GGMLType type, int64_t n, const void* panel, const void* xq, float* out);
}  // namespace ref

}  // namespace squish::quant
