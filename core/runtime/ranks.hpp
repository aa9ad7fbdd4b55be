#pragma once
// The processes one run is spread over (scoring splits the calibration chunks, measuring the
// layers). Launched by mpirun (Open MPI; any launcher that
// sets PMIx/PMI variables), each process is one rank of MPI_COMM_WORLD; otherwise the run is
// one rank and MPI is never initialized: the same binary runs alone without mpirun.
// Collectives are MPI's (sums with MPI_Allreduce); nothing here is a protocol of our own.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace squish {

class Ranks {
 public:
  // The world, initialized on first use. Error(Runtime) when launched by an MPI launcher but
  // built without MPI.
  static Ranks& world();
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }

  // Element-wise sums over all ranks, in place on every rank (MPI_Allreduce).
  void sum(std::span<double> v) const;
  void sum(std::span<float> v) const;
  void sum(std::span<int64_t> v) const;
  // Rank 0's value on every rank.
  std::string broadcast(const std::string& s) const;
  // Every rank's string, in rank order, on every rank (MPI_Allgatherv).
  std::vector<std::string> all_gather(const std::string& s) const;
  // Ends every rank of the run with `exit_code` after `message` (one line, to stderr): a failing
  // rank cannot leave the others waiting in a collective (MPI_Abort).
  [[noreturn]] void abort(int exit_code, const std::string& message) const;
  // Runs `f`; when it throws in a distributed run, aborts every rank with the error's exit code
  // (Runtime for anything but an Error, as "internal error: ...") and message. Alone, rethrows.
  void run_or_abort_all(const std::function<void()>& f) const;

 private:
  Ranks();
  template <class T> void sum_in_place(std::span<T> v) const;
  int rank_ = 0, size_ = 1;
};

}  // namespace squish
