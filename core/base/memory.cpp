#include "core/base/memory.hpp"

#include "core/base/error.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <sys/mman.h>
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

std::optional<uint64_t> parse_byte_size(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.')) ++i;
  const std::string number(s.substr(0, i));
  std::string unit(s.substr(i));
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1) return std::nullopt;
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'B' && unit != "B") unit.pop_back();  // "GB" -> "G" (decimal below), "GIB" -> "GI"
  const bool binary = unit.size() == 2 && unit[1] == 'I' && std::string_view("KMGT").find(unit[0]) != std::string_view::npos;
  const bool decimal_suffix = s.size() >= 2 && (s.back() == 'B' || s.back() == 'b') && !binary && unit != "B";
  if (binary) unit.pop_back();
  double scale = 1;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit.size() == 1 && std::string_view("KMGT").find(unit[0]) != std::string_view::npos) {
    const int power = static_cast<int>(std::string_view("KMGT").find(unit[0])) + 1;
    scale = std::pow(decimal_suffix ? 1000.0 : 1024.0, power);
  } else
    return std::nullopt;
  const double v = std::strtod(number.c_str(), nullptr) * scale;
  if (!(v >= 0) || v >= 1.8e19) return std::nullopt;
  return static_cast<uint64_t>(v);
}

void advise_huge_pages(void* p, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace squish
