#include "core/base/simd.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace squish {

SimdLevel simd_level() {
  static const SimdLevel level = [] {
    SimdLevel cap = SimdLevel::Avx512;
    const char* off = std::getenv("SQUISH_NO_SIMD");
    if (off && *off && std::strcmp(off, "0") != 0) cap = SimdLevel::Scalar;
    if (const char* s = std::getenv("SQUISH_SIMD")) {
      if (std::strcmp(s, "scalar") == 0) cap = std::min(cap, SimdLevel::Scalar);
      else if (std::strcmp(s, "avx2") == 0) cap = std::min(cap, SimdLevel::Avx2);
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#if defined(__clang__) && __clang_major__ < 15
    // clang 14 (the fuzz build) does not know "f16c"; every CPU with AVX2 and FMA has it.
    const bool f16c = true;
#else
    const bool f16c = __builtin_cpu_supports("f16c");
#endif
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)) return SimdLevel::Scalar;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vnni");
    return std::min(cap, avx512 ? SimdLevel::Avx512 : SimdLevel::Avx2);
#else
    return SimdLevel::Scalar;
#endif
  }();
  return level;
}

}  // namespace squish
