#pragma once
// Loops over [0, n) in the current TBB arena, one contiguous share per thread; serial when the
// arena has one thread (no scheduling cost at all).
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

namespace squish::infer {

template <class Fn>
void par_for(int n, Fn&& f) {
  if (tbb::this_task_arena::max_concurrency() == 1 || n <= 1) {
    for (int i = 0; i < n; ++i) f(i);
  } else {
    tbb::parallel_for(0, n, f, tbb::static_partitioner());
  }
}

}  // namespace squish::infer
