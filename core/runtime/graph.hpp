#pragma once
// Runs a validated pipeline on a oneTBB flow graph.
//
// Sources become input_nodes behind a limiter_node: at most `max_in_flight` source messages (and
// everything derived from them) are alive at once, so peak memory does not grow with model size.
// A message's flight ticket returns its slot when the last message derived from it dies.
// Transforms and sinks become multifunction_nodes (serial, or parallel when the node allows).
// A source may have input edges: it receives their documents through consume() and starts only
// after those nodes have finished (a compress reader waits for the planned recipe). The graph
// thus runs in waves; after each, finish() runs in topological order for every node whose inputs
// are done, and what it emits flows on (documents such as a recipe or a report). The first error cancels the graph; it is
// reported once and rethrown from run().
#include "core/runtime/events.hpp"
#include "core/runtime/pipeline.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace squish {

struct NodeStats {
  uint64_t messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0;
  double seconds = 0;  // wall time from graph start to the node's finish()
};

// One wave of execution: the nodes that finished in it (its sources started together).
struct WaveStats {
  std::vector<std::string> nodes;
  double seconds = 0;
  size_t peak_rss_bytes = 0;     // VmHWM at the wave's end
  bool peak_is_wave_only = false; // the peak was reset when the wave began (else: since process start)
};

class GraphRunner {
 public:
  GraphRunner(const Pipeline& pipeline, EventSink& events);
  ~GraphRunner();
  // Throws the first error any node raised (squish::Error keeps its exit code).
  void run();
  const std::map<std::string, NodeStats>& stats() const { return stats_; }
  const std::vector<WaveStats>& waves() const { return waves_; }
  // Peak RSS of the process over the run (per-wave resets included).
  size_t peak_rss() const { return std::max(peak_rss_, peak_rss_bytes()); }

 private:
  class Run;
  const Pipeline& p_;
  EventSink& events_;
  std::map<std::string, NodeStats> stats_;
  std::vector<WaveStats> waves_;
  size_t peak_rss_ = 0;
};

}  // namespace squish
