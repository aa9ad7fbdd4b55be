#pragma once
// Runs a validated pipeline on a oneTBB flow graph.
//
// Sources become input_nodes behind a limiter_node: at most `max_in_flight` source messages (and
// everything derived from them) are alive at once, so peak memory does not grow with model size.
// A message's flight ticket returns its slot when the last message derived from it dies.
// Transforms and sinks become multifunction_nodes (serial, or parallel when the node allows).
// When the graph drains, each node's finish() runs in topological order, and what it emits
// flows on (documents such as a recipe or a report). The first error cancels the graph; it is
// reported once and rethrown from run().
#include "core/runtime/events.hpp"
#include "core/runtime/pipeline.hpp"

namespace squish {

struct NodeStats {
  uint64_t messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0;
  double seconds = 0;  // wall time from graph start to the node's finish()
};

class GraphRunner {
 public:
  GraphRunner(const Pipeline& pipeline, EventSink& events) : p_(pipeline), events_(events) {}
  // Throws the first error any node raised (squish::Error keeps its exit code).
  void run();
  const std::map<std::string, NodeStats>& stats() const { return stats_; }

 private:
  const Pipeline& p_;
  EventSink& events_;
  std::map<std::string, NodeStats> stats_;
};

}  // namespace squish
