// Linked into every Squish executable (not into libraries: .preinit_array exists only there).
//
// Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels in a library constructor from the
// CPU's family/model numbers. A CPU newer than the library (Emerald Rapids, model 207, on this
// project's machines) is not in its table and gets the generic SSE3 "Prescott" kernels: sgemm
// at 15 instead of 100 GFLOP/s per core. OpenBLAS honours OPENBLAS_CORETYPE, read by that
// constructor, but a variable set by the process itself cannot reach it: libc's own initialiser
// (which runs after .preinit_array and before OpenBLAS's) resets `environ` to the one the kernel
// passed. So when the variable is unset, the executable starts itself again, once, with it set
// from the instruction sets the CPU reports (same pid, arguments and environment otherwise). A
// user's own OPENBLAS_CORETYPE is left alone; without /proc the run goes on unchanged.
#include <unistd.h>

#include <cstring>
#include <vector>

namespace {

void select_openblas_core(int /*argc*/, char** argv, char** envp) {
  for (char** e = envp; *e; ++e)
    if (std::strncmp(*e, "OPENBLAS_CORETYPE=", 18) == 0) return;
  __builtin_cpu_init();
  const char* core = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    core = "OPENBLAS_CORETYPE=SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    core = "OPENBLAS_CORETYPE=Haswell";
  if (!core) return;
  std::vector<char*> env;
  for (char** e = envp; *e; ++e) env.push_back(*e);
  env.push_back(const_cast<char*>(core));
  env.push_back(nullptr);
  execve("/proc/self/exe", argv, env.data());  // returns only on failure: carry on as we are
}

__attribute__((section(".preinit_array"), used)) void (*const preinit_select_openblas_core)(int, char**, char**) =
    select_openblas_core;

}  // namespace
