#pragma once
// The widest SIMD paths this CPU runs: AVX2 (avx2 + fma + f16c) or AVX-512 with VNNI (avx512f,
// bw, vl, dq, vnni: the dot kernels). SQUISH_SIMD=scalar|avx2 in the environment caps it
// (SQUISH_NO_SIMD=1 = scalar), to compare paths and to benchmark them.

namespace squish {

enum class SimdLevel { Scalar, Avx2, Avx512 };
SimdLevel simd_level();

}  // namespace squish
