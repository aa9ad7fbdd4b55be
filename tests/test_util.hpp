#pragma once
// Shared helpers for tests: where things are, temp dirs, running squish-run.
#include "tests/sanitized.hpp"

#include <filesystem>
#include <string>

namespace squish::test {

inline std::string source_dir() { return SQUISH_SOURCE_DIR; }
inline std::string binary_dir() { return SQUISH_BINARY_DIR; }
// ../shared beside the checkout (read-only models, data and llama.cpp references).
std::string shared_dir();
// True when ../shared is present; tests that need it call GTEST_SKIP otherwise... except in CI,
// where a missing ../shared is a failure (see shared_or_fail).
bool have_shared();
std::string shared(const std::string& rel);

// A fresh, empty temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

 private:
  std::filesystem::path path_;
};

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a command line through /bin/sh, capturing stdout and stderr.
RunResult run(const std::string& cmdline);
// Runs build/bin/squish-run with the given arguments.
RunResult squish_run(const std::string& args);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& data);

// Open MPI's mpirun on this machine (CI installs openmpi-bin).
bool have_mpirun();
// `command` as np ranks on this machine: root allowed (containers, CI), oversubscribed cores,
// shared memory without CMA.
std::string mpirun(int np, const std::string& command);

}  // namespace squish::test

#define SQUISH_REQUIRE_SHARED()                                              \
  do {                                                                       \
    if (!::squish::test::have_shared()) {                                    \
      if (std::getenv("CI")) FAIL() << "../shared is missing";               \
      GTEST_SKIP() << "../shared is missing";                                \
    }                                                                        \
  } while (0)

// Tests that launch ranks: no sanitizer (Open MPI's own allocations read as leaks), and mpirun
// (a failure in CI, which has it).
#define SQUISH_REQUIRE_MPIRUN()                                                            \
  do {                                                                                     \
    SQUISH_SKIP_UNDER_SANITIZERS("Open MPI's own allocations read as leaks");              \
    if (!::squish::test::have_mpirun()) {                                                  \
      if (std::getenv("CI")) FAIL() << "mpirun is missing (.ci/deps installs openmpi-bin)"; \
      GTEST_SKIP() << "mpirun is missing";                                                 \
    }                                                                                      \
  } while (0)

// Sanitizers shadow every mapped byte and keep their own allocator: memory figures (RSS, address
// space limits) mean nothing under them, so tests of those skip there.
#ifdef SQUISH_SANITIZED
#define SQUISH_SKIP_UNDER_SANITIZERS(why) GTEST_SKIP() << "under a sanitizer: " << why
namespace squish::test { inline constexpr bool kSanitized = true; }
#else
namespace squish::test { inline constexpr bool kSanitized = false; }
#define SQUISH_SKIP_UNDER_SANITIZERS(why) \
  do {                                    \
  } while (0)
#endif
