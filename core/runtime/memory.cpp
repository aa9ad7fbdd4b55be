#include "core/runtime/memory.hpp"

#include "core/runtime/error.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <sys/resource.h>

namespace squish {

namespace {
uint64_t meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kb * 1024;
  }
  return std::numeric_limits<uint64_t>::max();
}

uint64_t cgroup_headroom() {
  // cgroup v2: this process's group is the "0::<path>" line of /proc/self/cgroup.
  std::ifstream cg("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(cg, line))
    if (line.rfind("0::", 0) == 0) path = line.substr(3);
  if (path.empty()) return std::numeric_limits<uint64_t>::max();
  const std::string dir = "/sys/fs/cgroup" + path;
  std::ifstream max_f(dir + "/memory.max"), cur_f(dir + "/memory.current");
  std::string max_s;
  uint64_t cur = 0;
  if (!(max_f >> max_s) || max_s == "max" || !(cur_f >> cur)) return std::numeric_limits<uint64_t>::max();
  const uint64_t max = std::stoull(max_s);
  return max > cur ? max - cur : 0;
}

uint64_t rlimit_headroom(int resource) {
  rlimit r{};
  if (getrlimit(resource, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return std::numeric_limits<uint64_t>::max();
  return r.rlim_cur;  // an upper bound: what is mapped already is not subtracted
}
}  // namespace

uint64_t available_memory_bytes() {
  return std::min({meminfo_available(), cgroup_headroom(), rlimit_headroom(RLIMIT_AS), rlimit_headroom(RLIMIT_DATA)});
}

void require_memory(uint64_t bytes, std::string_view what) {
  const uint64_t avail = available_memory_bytes();
  if (bytes <= avail) return;
  constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
  fail(ExitCode::Runtime, "{} needs {:.2f} GiB of memory, {:.2f} GiB are available", what, double(bytes) / GiB, double(avail) / GiB);
}

}  // namespace squish
