#pragma once
// Machine-readable progress for orchestrators (JSON lines) and a progress line for people.
// Event schema (one object per line, always with "event" and "t" = seconds since start):
//   pipeline_start {pipeline, file, nodes}
//   node_start {node, kind}
//   node_progress {node, unit, done, total, bytes, eta_seconds}  (eta: at the rate since the node's first progress)
//   node_finish {node, messages_in, messages_out, bytes_in, bytes_out, seconds}
//   wave_finish {wave, sources, nodes, seconds, peak_rss_bytes, peak_since_wave_start}
//   warning {node?, message}
//   error {node?, code, message}
//   pipeline_end {ok, exit_code, seconds, peak_rss_bytes}
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>

namespace squish {

class EventSink {
 public:
  // jsonl: FILE* to write JSON lines to (nullptr for none). tty_progress: draw a progress line on stderr.
  EventSink(std::FILE* jsonl, bool tty_progress);
  ~EventSink();
  void emit(const std::string& event, nlohmann::json fields = nlohmann::json::object());
  // Rate-limited progress (JSON at most ~4/s per node and always the last; terminal line ~10/s).
  void progress(const std::string& node, const std::string& unit, uint64_t done, uint64_t total, uint64_t bytes = 0);
  void warn(const std::string& node, const std::string& message);
  double seconds() const;
  void clear_line();  // erase the progress line before printing a message on stderr

 private:
  std::mutex mu_;
  std::FILE* jsonl_;
  bool tty_;
  bool line_drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
  nlohmann::json last_progress_time_ = nlohmann::json::object();
  // Per node and unit: when progress was first reported and how much was done then.
  std::map<std::string, std::pair<double, uint64_t>> progress_start_;
};

// Peak resident set size of this process (VmHWM), in bytes.
size_t peak_rss_bytes();
// Restarts the VmHWM count (Linux clear_refs "5"), so the next peak_rss_bytes() is the peak
// since now. Returns false where the kernel does not allow it (the peak then stays cumulative).
bool reset_peak_rss();
// Resident set size now (VmRSS), 0 where /proc is not available.
size_t current_rss_bytes();

}  // namespace squish
