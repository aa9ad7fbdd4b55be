#include "core/runtime/graph.hpp"

#include "core/base/error.hpp"

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

void GraphRunner::run() {
  std::optional<oneapi::tbb::global_control> limit_threads;
  if (p_.threads > 0)
    limit_threads.emplace(oneapi::tbb::global_control::max_allowed_parallelism, static_cast<size_t>(p_.threads));

  std::atomic<bool> cancelled{false};
  // TBB's scheduler orders node bodies before wait_for_all() returns, and the main thread's work
  // before the bodies it then starts, but it does so inside libtbb.so, which ThreadSanitizer
  // cannot see. These two counters state the same ordering in instrumented code (one relaxed-cost
  // atomic per message): every body ends with a release on `bodies_done`, acquired after each
  // wait; `epoch` is released before sources start and before every message is handed on, and
  // every body acquires it.
  std::atomic<uint64_t> bodies_done{0}, epoch{0};
  struct BodyScope {
    std::atomic<uint64_t>& done;
    BodyScope(std::atomic<uint64_t>& e, std::atomic<uint64_t>& d) : done(d) { (void)e.load(std::memory_order_acquire); }
    ~BodyScope() { done.fetch_add(1, std::memory_order_release); }
  };
  auto wait_all = [&](flow::graph& gr) {
    gr.wait_for_all();
    (void)bodies_done.load(std::memory_order_acquire);
  };
  std::mutex error_mu;
  std::exception_ptr first_error;
  std::string error_node;

  flow::graph g;
  const size_t n = p_.nodes.size();
  std::vector<std::unique_ptr<Node>> impls(n);
  std::vector<Counters> counters(n);
  std::vector<NodeContext> contexts(n);

  auto record_error = [&](size_t i, std::exception_ptr e) {
    std::lock_guard lock(error_mu);
    if (!first_error) {
      first_error = e;
      error_node = p_.nodes[i].name;
    }
    cancelled = true;
    g.cancel();
  };

  // Instantiate every node before running anything: constructors validate their inputs.
  for (size_t i = 0; i < n; ++i) {
    const auto& pn = p_.nodes[i];
    auto& ctx = contexts[i];
    ctx.node_name = pn.name;
    ctx.kind = pn.kind;
    ctx.params = pn.params;
    ctx.pipeline_dir = p_.variables.at("pipeline_dir").value;
    ctx.threads = p_.threads;
    ctx.events = &events_;
    ctx.cancelled = &cancelled;
    try {
      impls[i] = pn.kind_info->create(ctx);
    } catch (Error& e) {
      throw Error(e.code(), fmt::format("node '{}' ({}): {}", pn.name, pn.kind, e.what()));
    }
    if (!impls[i]) fail(ExitCode::Plugin, "node '{}' ({}): plugin returned no node", pn.name, pn.kind);
  }

  // Declaration order matters for teardown: sources may still buffer a message whose ticket
  // decrements a limiter, so sources are destroyed first (reverse order of declaration).
  std::vector<std::unique_ptr<flow::limiter_node<Message>>> limiters(n);
  std::vector<std::unique_ptr<Multi>> gates(n);  // a gated source's inputs (documents before it starts)
  std::vector<std::unique_ptr<flow::input_node<Message>>> sources(n);
  std::vector<std::unique_ptr<Multi>> multis(n);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < n; ++i) index[p_.nodes[i].name] = i;
  std::vector<std::vector<size_t>> preds(n);
  for (const auto& e : p_.edges) preds[index[e.to]].push_back(index[e.from]);

  for (size_t i = 0; i < n; ++i) {
    const auto& pn = p_.nodes[i];
    Node* impl = impls[i].get();
    Counters& c = counters[i];
    events_.emit("node_start", {{"node", pn.name}, {"kind", pn.kind}});
    if (pn.kind_info->role == NodeRole::Source) {
      limiters[i] = std::make_unique<flow::limiter_node<Message>>(g, static_cast<size_t>(p_.max_in_flight));
      auto* limiter = limiters[i].get();
      const uint64_t total = impl->expected_count();
      sources[i] = std::make_unique<flow::input_node<Message>>(g, [&, i, impl, limiter, total](oneapi::tbb::flow_control& fc) {
        BodyScope scope(epoch, bodies_done);
        Message m;
        try {
          if (cancelled || !impl->produce(m)) {
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
        // The slot returns to the limiter when the last message derived from this one dies.
        auto inner = std::move(m.ticket);
        m.ticket = std::shared_ptr<void>(nullptr, [limiter, inner](void*) mutable {
          inner.reset();
          limiter->decrementer().try_put(flow::continue_msg());
        });
        epoch.fetch_add(1, std::memory_order_release);
        return m;
      });
      flow::make_edge(*sources[i], *limiters[i]);
      if (!preds[i].empty())
        gates[i] = std::make_unique<Multi>(g, 1, [&, i, impl](const Message& m, Multi::output_ports_type&) {
          BodyScope scope(epoch, bodies_done);
          if (cancelled) return;
          c.in.fetch_add(1, std::memory_order_relaxed);
          PortEmitter em(c, [&, i](Message) { fail(ExitCode::Runtime, "source node '{}' emitted a message from consume()", p_.nodes[i].name); });
          try {
            impl->consume(m, em);
          } catch (...) {
            record_error(i, std::current_exception());
          }
        });
    } else {
      const size_t conc = pn.concurrency == 0 ? static_cast<size_t>(flow::unlimited) : static_cast<size_t>(pn.concurrency);
      multis[i] = std::make_unique<Multi>(g, conc, [&, i, impl](const Message& m, Multi::output_ports_type& ports) {
        BodyScope scope(epoch, bodies_done);
        if (cancelled) return;
        c.in.fetch_add(1, std::memory_order_relaxed);
        c.bytes_in.fetch_add(message_bytes(m), std::memory_order_relaxed);
        PortEmitter em(c, [&ports, &epoch](Message out) {
          epoch.fetch_add(1, std::memory_order_release);  // the message's contents, for the body that takes it
          std::get<0>(ports).try_put(std::move(out));
        });
        try {
          impl->consume(m, em);
        } catch (...) {
          record_error(i, std::current_exception());
        }
      });
    }
  }
  auto sender_of = [&](size_t i) -> flow::sender<Message>& {
    if (limiters[i]) return *limiters[i];
    return flow::output_port<0>(*multis[i]);
  };
  auto receiver_of = [&](size_t i) -> flow::receiver<Message>& { return gates[i] ? *gates[i] : *multis[i]; };
  for (const auto& e : p_.edges) flow::make_edge(sender_of(index[e.from]), receiver_of(index[e.to]));

  // Waves: a source starts once every node it has an edge from has finished, so the documents
  // those nodes emitted (a recipe, a scores folder) have reached every consumer before its
  // first message flows. Without gated sources this is one wave. After each wave,
  // finish() runs in topological order for every node whose inputs are all finished; what it
  // emits flows downstream before the next node finishes.
  const double t0 = events_.seconds();
  std::vector<char> activated(n, 0), finished(n, 0);
  auto inputs_finished = [&](size_t i) {
    return std::all_of(preds[i].begin(), preds[i].end(), [&](size_t p) { return finished[p] != 0; });
  };
  for (int wave = 0; !cancelled; ++wave) {
    const double wave_t0 = events_.seconds();
    std::vector<size_t> starting;
    for (size_t i = 0; i < n; ++i)
      if (sources[i] && !activated[i] && inputs_finished(i)) starting.push_back(i);
    // Per-wave peaks: the high-water mark restarts with each wave (the process peak is kept as
    // the maximum over waves, since the kernel's own count is what gets reset).
    peak_rss_ = std::max(peak_rss_, peak_rss_bytes());
    const bool peak_reset = !starting.empty() && reset_peak_rss();
    std::vector<std::string> started;
    for (size_t i : starting) {
      activated[i] = 1;
      started.push_back(p_.nodes[i].name);
      epoch.fetch_add(1, std::memory_order_release);
      sources[i]->activate();
    }
    wait_all(g);
    std::vector<std::string> done;
    for (size_t i = 0; i < n && !cancelled; ++i) {
      if (finished[i] || !inputs_finished(i) || (sources[i] && !activated[i])) continue;
      Counters& c = counters[i];
      PortEmitter em(c, [&, i](Message out) {
        epoch.fetch_add(1, std::memory_order_release);
        if (multis[i]) flow::output_port<0>(*multis[i]).try_put(std::move(out));
        else fail(ExitCode::Runtime, "source node '{}' emitted a message from finish()", p_.nodes[i].name);
      });
      try {
        impls[i]->finish(em);
      } catch (...) {
        record_error(i, std::current_exception());
      }
      wait_all(g);
      finished[i] = 1;
      done.push_back(p_.nodes[i].name);
      auto& st = stats_[p_.nodes[i].name];
      st.messages_in = c.in;
      st.messages_out = c.out;
      st.bytes_in = c.bytes_in;
      st.bytes_out = c.bytes_out;
      st.seconds = events_.seconds() - t0;
      if (!cancelled)
        events_.emit("node_finish", {{"node", p_.nodes[i].name},
                                     {"messages_in", st.messages_in},
                                     {"messages_out", st.messages_out},
                                     {"bytes_in", st.bytes_in},
                                     {"bytes_out", st.bytes_out},
                                     {"seconds", st.seconds}});
    }
    if (done.empty()) break;  // every node finished (the graph is acyclic, so nothing waits forever)
    WaveStats w;
    w.nodes = done;
    w.seconds = events_.seconds() - wave_t0;
    w.peak_rss_bytes = peak_rss_bytes();
    w.peak_is_wave_only = peak_reset;
    peak_rss_ = std::max(peak_rss_, w.peak_rss_bytes);
    waves_.push_back(w);
    if (!cancelled)
      events_.emit("wave_finish", {{"wave", wave},
                                   {"sources", started},
                                   {"nodes", done},
                                   {"seconds", w.seconds},
                                   {"peak_rss_bytes", w.peak_rss_bytes},
                                   {"peak_since_wave_start", peak_reset}});
  }
  // Sources (a buffered message) and nodes may hold flight tickets: release them while the
  // limiters and the graph still exist.
  sources.clear();
  impls.clear();
  g.wait_for_all();

  if (first_error) {
    try {
      std::rethrow_exception(first_error);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("node '{}': {}", error_node, e.what()));
    } catch (const std::bad_alloc&) {
      throw Error(ExitCode::Runtime, fmt::format("node '{}': out of memory", error_node));
    } catch (const std::exception& e) {
      throw Error(ExitCode::Runtime, fmt::format("node '{}': {}", error_node, e.what()));
    }
  }
}

}  // namespace squish
