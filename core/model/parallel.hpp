#pragma once
// Parallel loops over [0, n) in the current TBB arena, the two ways core/model splits work.
// Both call f(i) once for every i and nothing else, so a loop whose items write disjoint data
// computes the same bits either way and on any number of threads; they differ only in how the
// items are handed out and when the loop stays on the calling thread.
//
//   par_for_static(n, f)            one contiguous share per thread (TBB's static partition, no
//                                   stealing); parallel whenever the arena has two threads and
//                                   n > 1. For the inference engine's loops of small, equal
//                                   items (rows, KV groups, query blocks), scheduled at least cost.
//   par_for_balanced(n, work, f)    load-balanced (TBB's auto partition, work stealing); serial
//                                   when the whole loop (n items of about `work` operations
//                                   each) is too little to pay for waking the workers. For the
//                                   float reference model, whose loops range from a few rows to
//                                   every head's attention.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

namespace squish {

template <class Fn>
void par_for_static(int n, Fn&& f) {
  if (tbb::this_task_arena::max_concurrency() == 1 || n <= 1) {
    for (int i = 0; i < n; ++i) f(i);
  } else {
    tbb::parallel_for(0, n, f, tbb::static_partitioner());
  }
}

// Loops below this many operations in all run on the calling thread.
inline constexpr double kParallelMinWork = 65536;

template <class Fn>
void par_for_balanced(int n, double work, Fn&& f) {
  if (double(n) * work < kParallelMinWork || tbb::this_task_arena::max_concurrency() <= 1) {
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int>(0, n), [&](const tbb::blocked_range<int>& r) {
    for (int i = r.begin(); i < r.end(); ++i) f(i);
  });
}

}  // namespace squish
