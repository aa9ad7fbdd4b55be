#pragma once
// Whole-file reads for small inputs (texts, JSON) and JSON text out: one implementation, one
// error message form, one set of limits.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace squish {

// Nesting deeper than this is refused before parsing: nothing Squish reads nests past ~6, and
// the serializer (and any recursive walk) would otherwise overflow the stack on hostile input.
inline constexpr int kMaxJsonDepth = 256;

// Throws Error(InputData) "<path>: cannot open <what>" / "<path>: <what> is a directory" /
// "<path>: <what> is larger than <limit> bytes". A limit of 0 = no limit.
std::string read_text_file(const std::string& path, const char* what = "file", uint64_t max_bytes = 0);
// Throws Error(InputData) "<path>: cannot open <what>" or "<path>: <what> is not valid JSON: <why>".
nlohmann::json read_json_file(const std::string& path, const char* what = "file");
// Parses JSON text read from `where` (a file, a GGUF key); the same errors as read_json_file.
nlohmann::json parse_json(std::string_view text, const std::string& where, const char* what);

// nlohmann's exception text without its "[json.exception.type_error.302] " prefix; with
// JSON_DIAGNOSTICS on it starts with the JSON pointer of the bad value, e.g. "(/name) type must be
// string, but is number".
std::string json_error_text(const std::exception& e);

// JSON text for files, reports and messages: invalid UTF-8 (a generated text cut inside a
// character, a path in another encoding) is replaced by U+FFFD, never thrown.
std::string json_text(const nlohmann::json& j, int indent = -1);
// json_text(j, 1) + "\n", written atomically.
void write_json_file(const std::string& path, const nlohmann::json& j);

}  // namespace squish

namespace squish {

// "<where>: <what>: at /path: type must be string, but is number" from a JSON type or range error
// met while interpreting a parsed document (a value of the wrong type, a missing key).
[[noreturn]] void fail_json_shape(const std::string& where, const char* what, const std::exception& e);

}  // namespace squish
