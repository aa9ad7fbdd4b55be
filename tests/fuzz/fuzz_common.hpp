#pragma once
// Shared by every fuzz target (tests/fuzz/fuzz_*.cpp).
//
// Each target is written once as SQUISH_FUZZ_TARGET(name) { ... } and built two ways:
//   * libFuzzer (SQUISH_FUZZ build, clang): it becomes LLVMFuzzerTestOneInput; a finding (an
//     exception other than squish::Error, a broken invariant) prints what it was and traps, so
//     libFuzzer records the input as a crash.
//   * the regression replay test (normal build): it becomes squish_fuzz_<name>(), registered in
//     a table fuzz_replay_test.cpp runs every seed and regression file through; a finding throws
//     FuzzFinding, so the test sees it as an exception that is not a squish::Error.
//
// Policy: squish::Error is an expected refusal (return 0). Anything else escaping is a finding.
#include "core/base/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <unistd.h>
#include <vector>

#include <cxxabi.h>
#include <fcntl.h>

namespace squish::fuzz {

// A broken invariant found by a target's own checks of a successful parse.
class FuzzFinding : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

using TargetFn = int (*)(const uint8_t*, size_t);

#ifdef SQUISH_FUZZ_REPLAY
struct Registry {
  static std::vector<std::pair<std::string, TargetFn>>& all() {
    static std::vector<std::pair<std::string, TargetFn>> v;
    return v;
  }
};
struct Registrar {
  Registrar(const char* name, TargetFn fn) { Registry::all().emplace_back(name, fn); }
};
#endif

inline std::string current_exception_type() {
  int status = 0;
  const std::type_info* t = abi::__cxa_current_exception_type();
  if (!t) return "?";
  char* d = abi::__cxa_demangle(t->name(), nullptr, nullptr, &status);
  std::string s = (status == 0 && d) ? d : t->name();
  std::free(d);
  return s;
}

[[noreturn]] inline void finding(const std::string& what) {
#ifdef SQUISH_FUZZ_REPLAY
  throw FuzzFinding(what);
#else
  std::fprintf(stderr, "\n==squish-fuzz== FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  __builtin_trap();
#endif
}

// An invariant the parse result must satisfy when the parser accepted the input.
#define SQUISH_FUZZ_CHECK(cond, ...)                                                              \
  do {                                                                                            \
    if (!(cond)) ::squish::fuzz::finding(std::string("invariant failed: " #cond " -- ") + (__VA_ARGS__)); \
  } while (0)

// Runs `body`; squish::Error -> 0; anything else -> finding (replay mode: rethrown as is, so the
// test reports the real exception type).
template <typename F>
int guarded(const char* target, F&& body) {
  try {
    body();
  } catch (const squish::Error& e) {
    // SQUISH_FUZZ_VERBOSE=1: print refusals (to check that seeds get past the parser).
    static const bool verbose = std::getenv("SQUISH_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "[%s] refused: %s\n", target, e.what());
    return 0;
  } catch (const FuzzFinding& e) {
#ifdef SQUISH_FUZZ_REPLAY
    throw;
#else
    finding(e.what());
#endif
  } catch (const std::exception& e) {
#ifdef SQUISH_FUZZ_REPLAY
    throw;
#else
    finding(std::string(target) + ": uncaught " + current_exception_type() + ": " + e.what());
#endif
  } catch (...) {
#ifdef SQUISH_FUZZ_REPLAY
    throw;
#else
    finding(std::string(target) + ": uncaught non-std exception " + current_exception_type());
#endif
  }
  return 0;
}

// A per-process scratch directory ($SQUISH_FUZZ_TMP, else /dev/shm, else /tmp: squish-fuzz-<target>-<pid>), created once, removed at exit.
inline const std::string& scratch_dir(const char* target) {
  static std::string dir = [&] {
    std::error_code ec;
    std::filesystem::path base = std::filesystem::temp_directory_path();
    if (const char* e = std::getenv("SQUISH_FUZZ_TMP")) base = e;
    else if (::access("/dev/shm", W_OK) == 0) base = "/dev/shm";  // tmpfs: no disk I/O per input
    std::string d = (base / ("squish-fuzz-" + std::string(target) + "-" +
                                                               std::to_string(::getpid())))
                        .string();
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    static const std::string keep = d;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return d;
  }();
  return dir;
}

// Writes bytes to `path` (truncating); aborts the harness (not a finding) on I/O failure.
inline void write_bytes(const std::string& path, const void* data, size_t n) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    std::abort();
  }
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) {
      std::perror(path.c_str());
      std::abort();
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  ::close(fd);
}
inline void write_bytes(const std::string& path, std::string_view s) { write_bytes(path, s.data(), s.size()); }

// Splits "<main>\n@@<file>@@\n<content>..." into the main part and named side files.
struct Parts {
  std::string main;
  std::vector<std::pair<std::string, std::string>> files;
};
inline Parts split_parts(std::string_view in, const std::vector<std::string>& names) {
  Parts p;
  // Find the earliest marker of any allowed name, repeatedly.
  std::string_view rest = in;
  std::string* cur = &p.main;
  for (;;) {
    size_t best = std::string_view::npos;
    size_t best_len = 0;
    std::string best_name;
    for (const auto& n : names) {
      const std::string marker = "\n@@" + n + "@@\n";
      size_t at = rest.find(marker);
      if (at < best) best = at, best_len = marker.size(), best_name = n;
    }
    if (best == std::string_view::npos) {
      cur->append(rest);
      break;
    }
    cur->append(rest.substr(0, best));
    rest.remove_prefix(best + best_len);
    p.files.emplace_back(best_name, "");
    cur = &p.files.back().second;
  }
  return p;
}

}  // namespace squish::fuzz

#ifdef SQUISH_FUZZ_REPLAY
#define SQUISH_FUZZ_TARGET(name)                                                             \
  static int squish_fuzz_body_##name(const uint8_t* data, size_t size);                      \
  int squish_fuzz_##name(const uint8_t* data, size_t size) {                                 \
    return ::squish::fuzz::guarded(#name, [&] { squish_fuzz_body_##name(data, size); });      \
  }                                                                                          \
  static ::squish::fuzz::Registrar squish_fuzz_registrar_##name(#name, &squish_fuzz_##name); \
  static int squish_fuzz_body_##name(const uint8_t* data, size_t size)
#else
#define SQUISH_FUZZ_TARGET(name)                                                        \
  static int squish_fuzz_body_##name(const uint8_t* data, size_t size);                 \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {             \
    return ::squish::fuzz::guarded(#name, [&] { squish_fuzz_body_##name(data, size); }); \
  }                                                                                     \
  static int squish_fuzz_body_##name(const uint8_t* data, size_t size)
#endif
