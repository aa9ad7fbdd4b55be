#include "core/runtime/events.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include "core/runtime/plugin_api.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <string_view>
#include <string>

namespace squish {

namespace {
// 42s, 3m05s, 2h10m.
std::string duration_text(double s) {
  const auto whole = static_cast<int64_t>(std::llround(s));
  if (whole < 60) return fmt::format("{}s", whole);
  if (whole < 3600) return fmt::format("{}m{:02}s", whole / 60, whole % 60);
  return fmt::format("{}h{:02}m", whole / 3600, whole % 3600 / 60);
}
}  // namespace

EventSink::EventSink(std::FILE* jsonl, bool tty_progress)
    : jsonl_(jsonl), tty_(tty_progress), start_(std::chrono::steady_clock::now()) {}

EventSink::~EventSink() { clear_line(); }

double EventSink::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void EventSink::clear_line() {
  if (tty_ && line_drawn_) {
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    line_drawn_ = false;
  }
}

void EventSink::emit(const std::string& event, nlohmann::json fields) {
  std::lock_guard lock(mu_);
  if (!jsonl_) return;
  nlohmann::json j;
  j["event"] = event;
  j["t"] = std::round(seconds() * 1000.0) / 1000.0;
  for (auto& [k, v] : fields.items()) j[k] = v;
  const std::string line = json_text(j) + "\n";
  std::fwrite(line.data(), 1, line.size(), jsonl_);
  std::fflush(jsonl_);
}

void EventSink::progress(const std::string& node, const std::string& unit, uint64_t done, uint64_t total, uint64_t bytes) {
  const auto now = std::chrono::steady_clock::now();
  const double t = seconds();
  bool send_json = false;
  double eta = -1;
  {
    std::lock_guard lock(mu_);
    const bool last = total && done >= total;
    // The remaining work at the average rate since the first report (a unit changes with the
    // phase of a node, so it restarts the clock).
    auto [it, fresh] = progress_start_.try_emplace(node + '\n' + unit, t, done);
    if (!fresh && total > done && done > it->second.second && t - it->second.first >= 1.0)
      eta = (t - it->second.first) / double(done - it->second.second) * double(total - done);
    const double prev = last_progress_time_.value(node, -1.0);
    if (last || prev < 0 || t - prev >= 0.25) {
      last_progress_time_[node] = t;
      send_json = true;
    }
    if (tty_ && (last || now - last_draw_ > std::chrono::milliseconds(100))) {
      last_draw_ = now;
      std::string bar;
      if (total) {
        const int width = 30;
        const int fill = static_cast<int>(width * std::min<double>(1.0, double(done) / double(total)));
        bar = fmt::format("[{}{}] {}/{} {}", std::string(fill, '#'), std::string(width - fill, '.'), done, total, unit);
      } else {
        bar = fmt::format("{} {}", done, unit);
      }
      if (bytes) bar += fmt::format("  {:.1f} MB", bytes / 1e6);
      if (eta >= 0) bar += "  ETA " + duration_text(eta);
      fmt::print(stderr, "\r\033[K{}: {}  {:.1f}s", node, bar, t);
      std::fflush(stderr);
      line_drawn_ = true;
    }
  }
  if (send_json) {
    nlohmann::json f{{"node", node}, {"unit", unit}, {"done", done}, {"total", total}};
    if (bytes) f["bytes"] = bytes;
    if (eta >= 0) f["eta_seconds"] = std::round(eta * 10) / 10;
    emit("node_progress", std::move(f));
  }
}

void EventSink::warn(const std::string& node, const std::string& message) {
  {
    std::lock_guard lock(mu_);
    if (tty_ && line_drawn_) {
      std::fputs("\r\033[K", stderr);
      line_drawn_ = false;
    }
  }
  if (!jsonl_ || jsonl_ != stderr) fmt::print(stderr, "squish-run: warning: {}{}\n", node.empty() ? "" : node + ": ", message);
  nlohmann::json f{{"message", message}};
  if (!node.empty()) f["node"] = node;
  emit("warning", std::move(f));
}

namespace {
// A "<key>: <n> kB" line of /proc/self/status, in bytes (0 where /proc is not available).
size_t status_bytes(std::string_view key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with(key)) return std::stoull(line.substr(key.size())) * 1024;
  return 0;
}
}  // namespace

size_t peak_rss_bytes() { return status_bytes("VmHWM:"); }
size_t current_rss_bytes() { return status_bytes("VmRSS:"); }

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

void NodeContext::progress(const std::string& unit, uint64_t done, uint64_t total) const {
  if (events) events->progress(node_name, unit, done, total);
}
int NodeContext::threads_param() const {
  const int t = params.contains("threads") ? static_cast<int>(params["threads"].get<int64_t>()) : 0;
  if (t < 0) fail(ExitCode::Usage, "{}: threads must be >= 0 (got {})", node_name, t);
  return t > 0 ? t : threads;
}

void NodeContext::warn(const std::string& message) const {
  if (events) events->warn(node_name, message);
}

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::String: return "string";
    case ParamType::Path: return "path";
    case ParamType::Int: return "integer";
    case ParamType::Float: return "number";
    case ParamType::Bool: return "boolean";
    case ParamType::List: return "list";
    case ParamType::Map: return "map";
    case ParamType::Any: return "any";
    case ParamType::Output: return "output path";
  }
  return "?";
}

}  // namespace squish
