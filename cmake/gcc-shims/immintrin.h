// Stand-in for <immintrin.h>, found before the real one in GCC builds (the top-level
// CMakeLists.txt puts cmake/gcc-shims on the include path for GCC only).
//
// GCC 12.1 and 12.2 report -Wuninitialized / -Wmaybe-uninitialized on the deliberate
// `__m512i __Y = __Y;` of _mm512_undefined_*() (and _mm256_undefined_*()) inside the intrinsic
// headers whenever an intrinsic that uses it is inlined into our kernels: GCC bug 105593, fixed
// in GCC 12.3. The two warnings are ignored for the lines of the intrinsic headers only (GCC
// matches a warning against the pragmas at every place of its inlining chain, innermost first),
// and only on the affected releases: an uninitialized read in our own code is still reported
// there. The cost: on those two releases, a variable of ours passed uninitialized straight into
// an intrinsic is reported inside the header and so goes unreported (clang and other GCCs see it).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12 && __GNUC_MINOR__ < 3
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include_next <immintrin.h>
#pragma GCC diagnostic pop
#else
#include_next <immintrin.h>
#endif
