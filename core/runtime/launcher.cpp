#include "core/runtime/launcher.hpp"

#include <cstdlib>
#include <initializer_list>

namespace squish {

namespace {
// The first of `names` set to a non-negative integer below 2^24, or -1.
int env_int(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) {
      char* end = nullptr;
      const long x = std::strtol(v, &end, 10);
      if (*end == '\0' && x >= 0 && x < (1 << 24)) return static_cast<int>(x);
    }
  return -1;
}
}  // namespace

LauncherRanks launcher_ranks() {
  LauncherRanks l;
  const int rank = env_int({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"});
  const int size = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"});
  l.launched = rank >= 0;
  l.rank = l.launched ? rank : 0;
  l.size = size > 0 ? size : 1;
  return l;
}

}  // namespace squish
