#pragma once
// Errors carry the process exit code orchestrators rely on (documented in README.md):
//   0 ok, 2 usage/validation, 3 input data, 4 plugin, 5 runtime/IO.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace squish {

enum class ExitCode : int {
  Ok = 0,
  Usage = 2,      // bad command line, invalid pipeline file
  InputData = 3,  // malformed model/checkpoint/GGUF/recipe, NaN weights, wrong shapes
  Plugin = 4,     // plugin missing, bad entry point, ABI mismatch, unknown node kind
  Runtime = 5,    // I/O failure, full disk, internal error
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, std::string message) : std::runtime_error(std::move(message)), code_(code) {}
  ExitCode code() const noexcept { return code_; }

 private:
  ExitCode code_;
};

template <typename... Args>
[[noreturn]] void fail(ExitCode code, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(code, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace squish
