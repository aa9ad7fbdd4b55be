// Regression replay of the fuzz targets (normal build, no libFuzzer): every file in
// tests/fuzz/seeds/<target>/ and tests/fuzz/regressions/<target>/ goes through the same
// target code the fuzzers run. An input may be refused (squish::Error) but nothing else may
// escape, and it must not crash, hang or exhaust memory. Each input runs in a child process
// (address space 4 GB, 60 s) so one crash names its file and does not stop the others.
#include "tests/fuzz/fuzz_common.hpp"
#include "tests/sanitized.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/resource.h>
#include <sys/wait.h>

namespace fs = std::filesystem;
using squish::fuzz::Registry;

namespace {

std::string fuzz_dir() { return std::string(SQUISH_SOURCE_DIR) + "/tests/fuzz"; }

std::vector<std::string> inputs_of(const std::string& target) {
  std::vector<std::string> files;
  for (const char* kind : {"seeds", "regressions"}) {
    const fs::path d = fs::path(fuzz_dir()) / kind / target;
    std::error_code ec;
    if (!fs::is_directory(d, ec)) continue;
    for (const auto& de : fs::directory_iterator(d))
      if (de.is_regular_file() && de.path().filename().string()[0] != '.') files.push_back(de.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Runs one input in a child; "" when fine, else what went wrong.
std::string run_one(squish::fuzz::TargetFn fn, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  int pipefd[2];
  if (::pipe(pipefd) != 0) return "pipe failed";
  fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(pipefd[0]);
#ifndef SQUISH_SANITIZED
    // (sanitizers reserve terabytes of shadow address space: no limit under them)
    rlimit as{4ull << 30, 4ull << 30};
    ::setrlimit(RLIMIT_AS, &as);
#endif
    ::alarm(60);
    std::string msg;
    try {
      fn(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const squish::fuzz::FuzzFinding& e) {
      msg = std::string("finding: ") + e.what();
    } catch (const std::exception& e) {
      msg = "uncaught " + squish::fuzz::current_exception_type() + ": " + e.what();
    } catch (...) {
      msg = "uncaught non-std exception " + squish::fuzz::current_exception_type();
    }
    if (!msg.empty()) {
      (void)!::write(pipefd[1], msg.data(), msg.size());
      ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) return msg.empty() ? "exit " + std::to_string(WEXITSTATUS(status)) : msg;
  return "";
}

class FuzzReplay : public ::testing::TestWithParam<std::string> {};

TEST_P(FuzzReplay, NoUnexpectedExceptions) {
  const std::string target = GetParam();
  squish::fuzz::TargetFn fn = nullptr;
  for (const auto& [name, f] : Registry::all())
    if (name == target) fn = f;
  ASSERT_NE(fn, nullptr) << target;
  const auto files = inputs_of(target);
  EXPECT_FALSE(files.empty()) << "no seeds in tests/fuzz/seeds/" << target;
  for (const auto& file : files) {
    const std::string problem = run_one(fn, file);
    EXPECT_EQ(problem, "") << file;
  }
}

// The list comes from CMake (SQUISH_FUZZ_TARGETS): test parameters are built during static
// initialisation, possibly before the targets' registrars have run.
std::vector<std::string> target_names() {
  std::vector<std::string> v;
  std::stringstream ss(SQUISH_FUZZ_TARGET_LIST);
  std::string t;
  while (std::getline(ss, t, ',')) v.push_back(t);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzReplay, ::testing::ValuesIn(target_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
