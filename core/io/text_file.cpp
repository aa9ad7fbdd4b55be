#include "core/io/text_file.hpp"

#include "core/runtime/error.hpp"

#include <fstream>
#include <sstream>

namespace squish {

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ExitCode::InputData, "{}: cannot open {}", path, what);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace squish
