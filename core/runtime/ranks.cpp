#include "core/runtime/ranks.hpp"

#include "core/base/error.hpp"
#include "core/runtime/launcher.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef SQUISH_HAVE_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace squish {

namespace {
#ifdef SQUISH_HAVE_MPI
void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail(ExitCode::Runtime, "MPI: {} failed: {}", what, std::string(msg, len));
  }
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

template <class T>
void allreduce_sum(std::span<T> v, MPI_Datatype type) {
  // MPI counts are int, and a reduction may allocate a temporary of its size: large
  // statistics (second moments) go in pieces of 16 M values.
  constexpr size_t kPiece = size_t(1) << 24;
  for (size_t o = 0; o < v.size(); o += kPiece) {
    const int n = static_cast<int>(std::min(kPiece, v.size() - o));
    check(MPI_Allreduce(MPI_IN_PLACE, v.data() + o, n, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }
}
#endif
}  // namespace


Ranks::Ranks() {
  const LauncherRanks launcher = launcher_ranks();
  if (!launcher.launched && launcher.size <= 1) return;  // no launcher: one rank, no MPI
#ifdef SQUISH_HAVE_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // SERIALIZED: MPI starts on the flow graph's thread that runs the first node that asks
    // (score, measure) and is finalized on the main thread at exit; the nodes that use it run
    // in different waves and call it from their own thread only, so calls never overlap.
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    std::atexit(finalize_at_exit);
    if (provided < MPI_THREAD_SERIALIZED)
      fail(ExitCode::Runtime, "MPI: this MPI library does not allow calls from more than one thread (MPI_THREAD_SERIALIZED)");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
#else
  if (launcher.size > 1)
    fail(ExitCode::Usage, "launched as {} MPI ranks, but this build has no MPI (install libopenmpi-dev and rebuild)",
         launcher.size);
#endif
}

Ranks& Ranks::world() {
  static Ranks w;
  return w;
}

void Ranks::sum(std::span<double> v) const { sum_in_place(v); }
void Ranks::sum(std::span<float> v) const { sum_in_place(v); }
void Ranks::sum(std::span<int64_t> v) const { sum_in_place(v); }

template <class T>
void Ranks::sum_in_place(std::span<T> v) const {
#ifdef SQUISH_HAVE_MPI
  if (!distributed()) return;
  if constexpr (std::is_same_v<T, double>) allreduce_sum(v, MPI_DOUBLE);
  else if constexpr (std::is_same_v<T, float>) allreduce_sum(v, MPI_FLOAT);
  else allreduce_sum(v, MPI_INT64_T);
#else
  (void)v;
#endif
}

std::string Ranks::broadcast(const std::string& s) const {
#ifdef SQUISH_HAVE_MPI
  if (!distributed()) return s;
  uint64_t n = s.size();
  check(MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD), "MPI_Bcast");
  std::string out = rank_ == 0 ? s : std::string(n, '\0');
  if (n > uint64_t(std::numeric_limits<int>::max())) fail(ExitCode::Runtime, "MPI: broadcast of {} bytes", n);
  check(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
  return out;
#else
  return s;
#endif
}

std::vector<std::string> Ranks::all_gather(const std::string& s) const {
#ifdef SQUISH_HAVE_MPI
  if (!distributed()) return {s};
  // Sizes first, as 64-bit: every rank sees the same total and fails (or not) together.
  const int64_t mine = static_cast<int64_t>(s.size());
  std::vector<int64_t> sizes(static_cast<size_t>(size_));
  check(MPI_Allgather(&mine, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, MPI_COMM_WORLD), "MPI_Allgather");
  std::vector<int> counts(static_cast<size_t>(size_)), offsets(static_cast<size_t>(size_));
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) counts[size_t(r)] = static_cast<int>(sizes[size_t(r)]), offsets[size_t(r)] = static_cast<int>(total), total += sizes[size_t(r)];
  if (total > std::numeric_limits<int>::max()) fail(ExitCode::Runtime, "MPI: gather of {} bytes", total);
  std::string all(size_t(total), '\0');
  check(MPI_Allgatherv(s.data(), static_cast<int>(mine), MPI_CHAR, all.data(), counts.data(), offsets.data(), MPI_CHAR, MPI_COMM_WORLD),
        "MPI_Allgatherv");
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) out.push_back(all.substr(size_t(offsets[size_t(r)]), size_t(sizes[size_t(r)])));
  return out;
#else
  return {s};
#endif
}

void Ranks::run_or_abort_all(const std::function<void()>& f) const {
  try {
    f();
  } catch (const Error& e) {
    if (distributed()) abort(static_cast<int>(e.code()), e.what());
    throw;
  } catch (const std::exception& e) {  // out of memory, a library's own error: exit 5
    if (distributed()) abort(static_cast<int>(ExitCode::Runtime), fmt::format("internal error: {}", e.what()));
    throw;
  }
}

void Ranks::abort(int exit_code, const std::string& message) const {
  std::fputs(fmt::format("squish-run: rank {} of {}: {}\n", rank_, size_, message).c_str(), stderr);
  std::fflush(stderr);
#ifdef SQUISH_HAVE_MPI
  if (distributed()) MPI_Abort(MPI_COMM_WORLD, exit_code);
#endif
  std::_Exit(exit_code);
}

}  // namespace squish
