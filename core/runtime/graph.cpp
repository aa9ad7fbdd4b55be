#include "core/runtime/graph.hpp"
#include "core/runtime/flight_budget.hpp"

#include "core/base/error.hpp"
#include "core/base/memory.hpp"

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <optional>

namespace flow = oneapi::tbb::flow;

namespace squish {

namespace {

using Multi = flow::multifunction_node<Message, std::tuple<Message>>;
using Limiter = flow::limiter_node<Message, long long>;  // decrements by a count (negative: takes slots)

struct Counters {
  std::atomic<uint64_t> in{0}, out{0}, bytes_in{0}, bytes_out{0};
};

uint64_t message_bytes(const Message& m) { return m.is_tensor() ? m.tensor().nbytes() : 0; }

class PortEmitter final : public Emitter {
 public:
  PortEmitter(Counters& c, std::function<void(Message)> put) : c_(c), put_(std::move(put)) {}
  void emit(Message m) override {
    c_.out.fetch_add(1, std::memory_order_relaxed);
    c_.bytes_out.fetch_add(message_bytes(m), std::memory_order_relaxed);
    put_(std::move(m));  // output ports are broadcast senders; try_put is thread-safe
  }

 private:
  Counters& c_;
  std::function<void(Message)> put_;
};

}  // namespace

// One run of a pipeline: the flow graph, the node objects and what they share. Members are
// declared in the order they must outlive each other: sources may still buffer a message whose
// ticket decrements a limiter, so they go before the limiters and the graph.
class GraphRunner::Run {
 public:
  Run(GraphRunner& r) : r_(r), p_(r.p_), events_(r.events_), n_(p_.nodes.size()) {}

  void execute() {
    std::optional<oneapi::tbb::global_control> limit_threads;
    if (p_.threads > 0)
      limit_threads.emplace(oneapi::tbb::global_control::max_allowed_parallelism, static_cast<size_t>(p_.threads));
    create_nodes();
    build_graph();
    run_waves();
    // Sources (a buffered message) and nodes may hold flight tickets: release them while the
    // limiters and the graph still exist.
    sources_.clear();
    impls_.clear();
    wait_all();
    rethrow_first_error();
  }

 private:
  // TBB's scheduler orders node bodies before wait_for_all() returns, and the main thread's work
  // before the bodies it then starts, but it does so inside libtbb.so, which ThreadSanitizer
  // cannot see. These two counters state the same ordering in instrumented code (one relaxed-cost
  // atomic per message): every body ends with a release on `bodies_done_`, acquired after each
  // wait; `epoch_` is released before sources start and before every message is handed on, and
  // every body acquires it.
  struct BodyScope {
    std::atomic<uint64_t>& done;
    BodyScope(std::atomic<uint64_t>& e, std::atomic<uint64_t>& d) : done(d) { (void)e.load(std::memory_order_acquire); }
    ~BodyScope() { done.fetch_add(1, std::memory_order_release); }
  };
  void wait_all() {
    g_.wait_for_all();
    (void)bodies_done_.load(std::memory_order_acquire);
  }

  void record_error(size_t i, std::exception_ptr e) {
    std::lock_guard lock(error_mu_);
    if (!first_error_) {
      first_error_ = e;
      error_node_ = p_.nodes[i].name;
    }
    cancelled_ = true;
    g_.cancel();
  }

  // Every node object exists before anything runs: constructors validate their inputs.
  void create_nodes() {
    impls_.resize(n_);
    contexts_.resize(n_);
    counters_ = std::vector<Counters>(n_);
    for (size_t i = 0; i < n_; ++i) {
      const auto& pn = p_.nodes[i];
      auto& ctx = contexts_[i];
      ctx.node_name = pn.name;
      ctx.kind = pn.kind;
      ctx.params = pn.params;
      ctx.pipeline_dir = p_.variables.at("pipeline_dir").value;
      ctx.threads = p_.threads;
      ctx.events = &events_;
      ctx.cancelled = &cancelled_;
      try {
        impls_[i] = pn.kind_info->create(ctx);
      } catch (Error& e) {
        throw Error(e.code(), fmt::format("node '{}' ({}): {}", pn.name, pn.kind, e.what()));
      }
      if (!impls_[i]) fail(ExitCode::Plugin, "node '{}' ({}): plugin returned no node", pn.name, pn.kind);
    }
  }

  void build_graph() {
    limiters_.resize(n_);
    budgets_.resize(n_);
    gates_.resize(n_);
    sources_.resize(n_);
    multis_.resize(n_);
    preds_.resize(n_);
    for (size_t i = 0; i < n_; ++i) index_[p_.nodes[i].name] = i;
    for (const auto& e : p_.edges) preds_[index_[e.to]].push_back(index_[e.from]);
    for (size_t i = 0; i < n_; ++i) {
      events_.emit("node_start", {{"node", p_.nodes[i].name}, {"kind", p_.nodes[i].kind}});
      if (p_.nodes[i].kind_info->role == NodeRole::Source) build_source(i);
      else build_transform(i);
    }
    auto sender_of = [&](size_t i) -> flow::sender<Message>& {
      if (limiters_[i]) return *limiters_[i];
      return flow::output_port<0>(*multis_[i]);
    };
    auto receiver_of = [&](size_t i) -> flow::receiver<Message>& { return gates_[i] ? *gates_[i] : *multis_[i]; };
    for (const auto& e : p_.edges) flow::make_edge(sender_of(index_[e.from]), receiver_of(index_[e.to]));
  }

  // A source: an input_node behind a limiter of max_in_flight messages, weighted by their bytes;
  // with input edges, a gate that hands it their documents (it starts only once those nodes
  // have finished).
  void build_source(size_t i) {
    Node* impl = impls_[i].get();
    Counters& c = counters_[i];
    limiters_[i] = std::make_unique<Limiter>(g_, static_cast<size_t>(p_.max_in_flight));
    budgets_[i] = std::make_unique<FlightBudget>(static_cast<size_t>(p_.max_in_flight));
    auto* limiter = limiters_[i].get();
    auto* budget = budgets_[i].get();
    const uint64_t total = impl->expected_count();
    sources_[i] = std::make_unique<flow::input_node<Message>>(g_, [this, i, impl, limiter, budget, total, &c](oneapi::tbb::flow_control& fc) {
      BodyScope scope(epoch_, bodies_done_);
      Message m;
      try {
        if (cancelled_ || !impl->produce(m)) {
          fc.stop();
          return Message{};
        }
      } catch (...) {
        record_error(i, std::current_exception());
        fc.stop();
        return Message{};
      }
      const uint64_t done = c.out.fetch_add(1) + 1;
      const uint64_t bytes = c.bytes_out.fetch_add(message_bytes(m)) + message_bytes(m);
      events_.progress(p_.nodes[i].name, "messages", done, total, bytes);
      // The slots return to the limiter when the last message derived from this one dies.
      size_t take_now = 0;
      auto share = budget->admit(message_bytes(m), take_now);
      if (take_now) limiter->decrementer().try_put(-static_cast<long long>(take_now));
      auto inner = std::move(m.ticket);
      // The ticket dies inside TBB, outside any body: it states the same ordering as BodyScope
      // (the budget's lock is instrumented code, unlike the limiter it replaced).
      m.ticket = std::shared_ptr<void>(nullptr, [this, limiter, budget, share, inner](void*) mutable {
        (void)epoch_.load(std::memory_order_acquire);
        inner.reset();
        if (const size_t back = budget->release(share)) limiter->decrementer().try_put(static_cast<long long>(back));
        bodies_done_.fetch_add(1, std::memory_order_release);
      });
      epoch_.fetch_add(1, std::memory_order_release);
      return m;
    });
    flow::make_edge(*sources_[i], *limiters_[i]);
    if (preds_[i].empty()) return;
    gates_[i] = std::make_unique<Multi>(g_, 1, [this, i, impl, &c](const Message& m, Multi::output_ports_type&) {
      BodyScope scope(epoch_, bodies_done_);
      if (cancelled_) return;
      c.in.fetch_add(1, std::memory_order_relaxed);
      PortEmitter em(c, [this, i](Message) { fail(ExitCode::Runtime, "source node '{}' emitted a message from consume()", p_.nodes[i].name); });
      try {
        impl->consume(m, em);
      } catch (...) {
        record_error(i, std::current_exception());
      }
    });
  }

  // Transforms and sinks: a multifunction_node, serial or as concurrent as the node allows.
  void build_transform(size_t i) {
    Node* impl = impls_[i].get();
    Counters& c = counters_[i];
    const auto& pn = p_.nodes[i];
    const size_t conc = pn.concurrency == 0 ? static_cast<size_t>(flow::unlimited) : static_cast<size_t>(pn.concurrency);
    multis_[i] = std::make_unique<Multi>(g_, conc, [this, i, impl, &c](const Message& m, Multi::output_ports_type& ports) {
      BodyScope scope(epoch_, bodies_done_);
      if (cancelled_) return;
      c.in.fetch_add(1, std::memory_order_relaxed);
      c.bytes_in.fetch_add(message_bytes(m), std::memory_order_relaxed);
      PortEmitter em(c, [this, &ports](Message out) {
        epoch_.fetch_add(1, std::memory_order_release);  // the message's contents, for the body that takes it
        std::get<0>(ports).try_put(std::move(out));
      });
      try {
        impl->consume(m, em);
      } catch (...) {
        record_error(i, std::current_exception());
      }
    });
  }

  // The byte bound on a source's messages in flight, taken when it starts: what the pipeline
  // says, else an eighth of the memory available then: on its way a tensor costs up to ~4x its
  // source bytes (the mapped source pages, a float32 copy, the output), and half of what is
  // available is left to the nodes' own state. 0 = no bound.
  uint64_t in_flight_bytes() const {
    if (p_.max_in_flight_bytes) return *p_.max_in_flight_bytes;
    const uint64_t available = available_memory_bytes();
    return available == UINT64_MAX ? 0 : available / 8;
  }

  bool inputs_finished(size_t i) const {
    return std::all_of(preds_[i].begin(), preds_[i].end(), [&](size_t p) { return finished_[p] != 0; });
  }

  // Waves: a source starts once every node it has an edge from has finished, so the documents
  // those nodes emitted (a recipe, a scores folder) have reached every consumer before its
  // first message flows. Without gated sources this is one wave. After each wave,
  // finish() runs in topological order for every node whose inputs are all finished; what it
  // emits flows downstream before the next node finishes.
  void run_waves() {
    t0_ = events_.seconds();
    activated_.assign(n_, 0);
    finished_.assign(n_, 0);
    for (int wave = 0; !cancelled_; ++wave) {
      const double wave_t0 = events_.seconds();
      std::vector<size_t> starting;
      for (size_t i = 0; i < n_; ++i)
        if (sources_[i] && !activated_[i] && inputs_finished(i)) starting.push_back(i);
      // Per-wave peaks: the high-water mark restarts with each wave (the process peak is kept as
      // the maximum over waves, since the kernel's own count is what gets reset).
      r_.peak_rss_ = std::max(r_.peak_rss_, peak_rss_bytes());
      const bool peak_reset = !starting.empty() && reset_peak_rss();
      std::vector<std::string> started;
      for (size_t i : starting) {
        activated_[i] = 1;
        started.push_back(p_.nodes[i].name);
        budgets_[i]->set_unit(in_flight_bytes() / static_cast<uint64_t>(p_.max_in_flight));
        epoch_.fetch_add(1, std::memory_order_release);
        sources_[i]->activate();
      }
      wait_all();
      const std::vector<std::string> done = finish_ready_nodes();
      if (done.empty()) break;  // every node finished (the graph is acyclic, so nothing waits forever)
      record_wave(wave, started, done, events_.seconds() - wave_t0, peak_reset);
    }
  }

  // finish() of every node whose inputs have all finished, in topological order; each one's
  // output has flowed downstream before the next is finished.
  std::vector<std::string> finish_ready_nodes() {
    std::vector<std::string> done;
    for (size_t i = 0; i < n_ && !cancelled_; ++i) {
      if (finished_[i] || !inputs_finished(i) || (sources_[i] && !activated_[i])) continue;
      Counters& c = counters_[i];
      PortEmitter em(c, [this, i](Message out) {
        epoch_.fetch_add(1, std::memory_order_release);
        if (multis_[i]) flow::output_port<0>(*multis_[i]).try_put(std::move(out));
        else fail(ExitCode::Runtime, "source node '{}' emitted a message from finish()", p_.nodes[i].name);
      });
      try {
        impls_[i]->finish(em);
      } catch (...) {
        record_error(i, std::current_exception());
      }
      wait_all();
      finished_[i] = 1;
      done.push_back(p_.nodes[i].name);
      auto& st = r_.stats_[p_.nodes[i].name];
      st.messages_in = c.in;
      st.messages_out = c.out;
      st.bytes_in = c.bytes_in;
      st.bytes_out = c.bytes_out;
      st.seconds = events_.seconds() - t0_;
      if (!cancelled_)
        events_.emit("node_finish", {{"node", p_.nodes[i].name},
                                     {"messages_in", st.messages_in},
                                     {"messages_out", st.messages_out},
                                     {"bytes_in", st.bytes_in},
                                     {"bytes_out", st.bytes_out},
                                     {"seconds", st.seconds}});
    }
    return done;
  }

  void record_wave(int wave, const std::vector<std::string>& started, const std::vector<std::string>& done, double seconds,
                   bool peak_reset) {
    WaveStats w;
    w.nodes = done;
    w.seconds = seconds;
    w.peak_rss_bytes = peak_rss_bytes();
    w.peak_is_wave_only = peak_reset;
    r_.peak_rss_ = std::max(r_.peak_rss_, w.peak_rss_bytes);
    r_.waves_.push_back(w);
    if (!cancelled_)
      events_.emit("wave_finish", {{"wave", wave},
                                   {"sources", started},
                                   {"nodes", done},
                                   {"seconds", w.seconds},
                                   {"peak_rss_bytes", w.peak_rss_bytes},
                                   {"peak_since_wave_start", peak_reset}});
  }

  // The first error any node raised, named after its node; squish::Error keeps its exit code.
  void rethrow_first_error() {
    if (!first_error_) return;
    try {
      std::rethrow_exception(first_error_);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("node '{}': {}", error_node_, e.what()));
    } catch (const std::bad_alloc&) {
      throw Error(ExitCode::Runtime, fmt::format("node '{}': out of memory", error_node_));
    } catch (const std::exception& e) {
      throw Error(ExitCode::Runtime, fmt::format("node '{}': {}", error_node_, e.what()));
    }
  }

  GraphRunner& r_;
  const Pipeline& p_;
  EventSink& events_;
  const size_t n_;
  std::atomic<bool> cancelled_{false};
  std::atomic<uint64_t> bodies_done_{0}, epoch_{0};
  std::mutex error_mu_;
  std::exception_ptr first_error_;
  std::string error_node_;

  flow::graph g_;
  std::vector<std::unique_ptr<Node>> impls_;
  std::vector<Counters> counters_;
  std::vector<NodeContext> contexts_;
  std::vector<std::unique_ptr<Limiter>> limiters_;
  std::vector<std::unique_ptr<FlightBudget>> budgets_;
  std::vector<std::unique_ptr<Multi>> gates_;  // a gated source's inputs (documents before it starts)
  std::vector<std::unique_ptr<flow::input_node<Message>>> sources_;
  std::vector<std::unique_ptr<Multi>> multis_;
  std::map<std::string, size_t> index_;
  std::vector<std::vector<size_t>> preds_;
  std::vector<char> activated_, finished_;
  double t0_ = 0;
};

GraphRunner::GraphRunner(const Pipeline& pipeline, EventSink& events) : p_(pipeline), events_(events) {}
GraphRunner::~GraphRunner() = default;

void GraphRunner::run() { Run(*this).execute(); }

}  // namespace squish
