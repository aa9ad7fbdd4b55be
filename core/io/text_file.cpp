#include "core/io/text_file.hpp"

#include "core/io/atomic_file.hpp"
#include "core/base/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <unordered_set>
#include <vector>

namespace squish {

std::string read_text_file(const std::string& path, const char* what, uint64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ExitCode::InputData, "{}: cannot open {}: {}", path, what, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(ExitCode::InputData, "{}: cannot read {}: {}", path, what, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(ExitCode::InputData, "{}: {} is a directory, not a file", path, what);
  if (max_bytes && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes)
    fail(ExitCode::InputData, "{}: {} is {} bytes, more than the {} allowed", path, what, st.st_size, max_bytes);
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ExitCode::InputData, "{}: cannot read {}: {}", path, what, std::strerror(errno));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (max_bytes && out.size() > max_bytes) fail(ExitCode::InputData, "{}: {} is more than the {} bytes allowed", path, what, max_bytes);
  }
  return out;
}

std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  if (s.starts_with("[json.exception.")) {
    const auto close = s.find("] ");
    if (close != std::string::npos) s.erase(0, close + 2);
  }
  return s;
}

namespace {

// Deepest nesting of [ and { outside strings: a linear scan, so hostile depth never reaches the parser.
int json_depth(std::string_view t) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : t) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > kMaxJsonDepth) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& where, const char* what) {
  if (json_depth(text) > kMaxJsonDepth)
    fail(ExitCode::InputData, "{}: {} is not valid JSON: nested deeper than {} levels", where, what, kMaxJsonDepth);
  // A key given twice is ambiguous (parsers disagree on which wins): refused, naming the key.
  std::vector<std::unordered_set<std::string>> keys;
  std::string duplicate;
  const auto check = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) keys.emplace_back();
    else if (ev == E::object_end) keys.pop_back();
    else if (ev == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    auto j = nlohmann::json::parse(text.begin(), text.end(), check);
    if (!duplicate.empty()) fail(ExitCode::InputData, "{}: {} has the key '{}' twice", where, what, duplicate);
    return j;
  } catch (const nlohmann::json::exception& e) {
    fail(ExitCode::InputData, "{}: {} is not valid JSON: {}", where, what, json_error_text(e));
  }
}

nlohmann::json read_json_file(const std::string& path, const char* what) {
  return parse_json(read_text_file(path, what, uint64_t(1) << 30), path, what);
}

std::string json_text(const nlohmann::json& j, int indent) { return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace); }

void write_json_file(const std::string& path, const nlohmann::json& j) { write_file_atomic(path, json_text(j, 1) + "\n"); }

}  // namespace squish

namespace squish {

void fail_json_shape(const std::string& where, const char* what, const std::exception& e) {
  std::string s = json_error_text(e);
  if (s.starts_with("(")) {  // JSON_DIAGNOSTICS: "(/a/b) message"
    const auto close = s.find(") ");
    if (close != std::string::npos) s = "at " + s.substr(1, close - 1) + ": " + s.substr(close + 2);
  }
  fail(ExitCode::InputData, "{}: {}: {}", where, what, s);
}

}  // namespace squish
