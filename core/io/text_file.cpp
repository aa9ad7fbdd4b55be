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

nlohmann::json read_json_file(const std::string& path, const char* what) {
  const std::string text = read_text_file(path, what);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::InputData, "{}: {} is not valid JSON ({})", path, what, e.what());
  }
}

}  // namespace squish
