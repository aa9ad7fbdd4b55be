// The process-wide set-up of every Squish executable, linked into each (core/CMakeLists.txt) and
// never into the libraries, so a program that embeds libsquish_core keeps its own settings:
//  - OpenBLAS's kernels chosen by instruction set (below);
//  - OpenBLAS single-threaded: Squish's parallelism is TBB's (one sgemm per TBB task; OpenBLAS's
//    own spinning workers beside TBB's cost ~20% of the time in sched_yield on two cores);
//  - SIGINT, SIGTERM and SIGHUP remove the named temporaries of unfinished outputs
//    (core/io/atomic_file.hpp), then end the process by the same signal (exit 128 + signal);
//  - freed blocks of 1 MiB and more go back to the system at once (mmap'd), so that the score
//    stage's bound on its RSS holds when it frees one layer's weights for the next: glibc's
//    adaptive threshold would otherwise keep them in its heap (RSS 8% past the bound seen).
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
#include "core/io/atomic_file.hpp"

#include <cblas.h>
#include <malloc.h>
#include <unistd.h>

#include <csignal>

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

extern "C" void remove_temporaries_and_die(int sig) {
  squish::remove_named_temporaries();
  ::signal(sig, SIG_DFL);  // die of the signal itself so the parent sees it (shells: 130, 143, 129)
  ::raise(sig);
}

// After every library's constructor (OpenBLAS's included), before main.
__attribute__((constructor)) void squish_process_startup() {
  openblas_set_num_threads(1);
  ::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    ::sigaction(sig, nullptr, &old);
    if (old.sa_handler == SIG_IGN) continue;  // nohup: keep ignoring
    struct sigaction sa {};
    sa.sa_handler = remove_temporaries_and_die;
    sigemptyset(&sa.sa_mask);
    ::sigaction(sig, &sa, nullptr);
  }
}

}  // namespace
