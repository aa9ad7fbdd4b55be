#pragma once
// What an MPI launcher (mpirun of Open MPI, or any launcher that sets PMIx/PMI variables) told
// this process in its environment, read before (and without) initializing MPI: squish-run uses
// it to let only rank 0 speak, the score stage to decide whether to start MPI at all.
namespace squish {

struct LauncherRanks {
  bool launched = false;  // a launcher set a rank variable
  int rank = 0;           // this process's rank (0 when not launched)
  int size = 1;           // ranks in the run, when the launcher says (1 when not launched or unknown)
};

// OMPI_COMM_WORLD_RANK / _SIZE (Open MPI), PMIX_RANK (PMIx), PMI_RANK / PMI_SIZE (PMI).
LauncherRanks launcher_ranks();

}  // namespace squish
