#pragma once
// Whole-file reads for small inputs (texts, JSON): one implementation, one error message form.
#include <string>

namespace squish {

// Throws Error(InputData) "<path>: cannot open <what>".
std::string read_text_file(const std::string& path, const char* what = "file");

}  // namespace squish
