#pragma once
// Whole-file reads for small inputs (texts, JSON): one implementation, one error message form.
#include <nlohmann/json.hpp>

#include <string>

namespace squish {

// Throws Error(InputData) "<path>: cannot open <what>".
std::string read_text_file(const std::string& path, const char* what = "file");
// Throws Error(InputData) "<path>: cannot open <what>" or "<path>: <what> is not valid JSON (...)".
nlohmann::json read_json_file(const std::string& path, const char* what = "file");

}  // namespace squish
