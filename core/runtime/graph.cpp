#include "core/runtime/graph.hpp"

#include "core/runtime/error.hpp"

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>

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
  std::vector<std::unique_ptr<flow::input_node<Message>>> sources(n);
  std::vector<std::unique_ptr<Multi>> multis(n);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < n; ++i) index[p_.nodes[i].name] = i;

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
        return m;
      });
      flow::make_edge(*sources[i], *limiters[i]);
    } else {
      const size_t conc = pn.concurrency == 0 ? static_cast<size_t>(flow::unlimited) : static_cast<size_t>(pn.concurrency);
      multis[i] = std::make_unique<Multi>(g, conc, [&, i, impl](const Message& m, Multi::output_ports_type& ports) {
        if (cancelled) return;
        c.in.fetch_add(1, std::memory_order_relaxed);
        c.bytes_in.fetch_add(message_bytes(m), std::memory_order_relaxed);
        PortEmitter em(c, [&ports](Message out) { std::get<0>(ports).try_put(std::move(out)); });
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
  for (const auto& e : p_.edges) flow::make_edge(sender_of(index[e.from]), *multis[index[e.to]]);

  const double t0 = events_.seconds();
  for (auto& s : sources)
    if (s) s->activate();
  g.wait_for_all();

  // Drain: finish() in topological order; what it emits flows downstream before the next finishes.
  for (size_t i = 0; i < n && !cancelled; ++i) {
    Counters& c = counters[i];
    PortEmitter em(c, [&, i](Message out) {
      if (multis[i]) flow::output_port<0>(*multis[i]).try_put(std::move(out));
      else fail(ExitCode::Runtime, "source node '{}' emitted a message from finish()", p_.nodes[i].name);
    });
    try {
      impls[i]->finish(em);
    } catch (...) {
      record_error(i, std::current_exception());
    }
    g.wait_for_all();
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
