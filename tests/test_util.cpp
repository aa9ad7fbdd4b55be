#include "tests/test_util.hpp"

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

}  // namespace squish::test
