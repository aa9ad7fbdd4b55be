#include "tests/test_util.hpp"

#include <fmt/format.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>

namespace squish::test {

std::string shared_dir() {
  if (const char* e = std::getenv("SQUISH_SHARED")) return e;
  return SQUISH_SHARED_DIR;
}
bool have_shared() { return std::filesystem::exists(shared_dir() + "/models/coder-28m/config.json"); }
std::string shared(const std::string& rel) { return shared_dir() + "/" + rel; }

TempDir::TempDir() {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path();
  for (int i = 0; i < 100; ++i) {
    auto p = base / ("squish-test-" + std::to_string(rd()));
    if (std::filesystem::create_directory(p)) {
      path_ = p;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory");
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

RunResult run(const std::string& cmdline) {
  TempDir tmp;
  const std::string out = tmp / "out", err = tmp / "err";
  const std::string full = "( " + cmdline + " ) >" + out + " 2>" + err + " </dev/null";
  int status = std::system(full.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

RunResult squish_run(const std::string& args) { return run(binary_dir() + "/bin/squish-run " + args); }

bool have_mpirun() { return run("command -v mpirun >/dev/null 2>&1").exit_code == 0; }

std::string mpirun(int np, const std::string& command) {
  return fmt::format("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none "
                     "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun -np {} {}",
                     np, command);
}

}  // namespace squish::test
