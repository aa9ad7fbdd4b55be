// The score stage plugin: `score.importance` scores a Hugging Face model on calibration text
// and writes scores.json, channels.bin.zst and imatrix.dat into a directory.
#include "core/runtime/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "stages/score/scorer.hpp"

namespace squish::score {
namespace {

// A source: its single produce() call runs the whole scoring job (progress: tokens), writes the
// artifacts and emits the scores document for downstream nodes (e.g. a planner).
class Importance final : public Node {
 public:
  explicit Importance(const NodeContext& ctx) : ctx_(ctx) {}
  bool produce(Message& out) override {
    if (done_) return false;
    done_ = true;
    ScoreOptions opt;
    opt.ctx = static_cast<int>(ctx_.params["ctx"].get<int64_t>());
    opt.max_tokens = ctx_.params["max_tokens"].get<int64_t>();
    opt.moments = ctx_.params["moments"].get<bool>();
    opt.threads = ctx_.threads;
    opt.progress = [this](uint64_t d, uint64_t t) {
      if (ctx_.is_cancelled()) fail(ExitCode::Runtime, "cancelled");
      ctx_.progress("tokens", d, t);
    };
    const std::string model = ctx_.params["model"].get<std::string>(), text = ctx_.params["text"].get<std::string>();
    const std::string dir = ctx_.params["output"].get<std::string>();
    if (ctx_.params["reuse"].get<bool>())
      if (auto stored = stored_scores(model, text, opt, dir)) {
        ctx_.progress("tokens (stored scores)", 1, 1);
        out = Message::of(Document{"scores", std::move(*stored)});
        return true;
      }
    ScoreResult r = score_model(model, text, opt);
    write_scores(r, dir);
    out = Message::of(Document{"scores", std::move(r.scores)});
    return true;
  }
  uint64_t expected_count() const override { return 1; }

 private:
  NodeContext ctx_;
  bool done_ = false;
};

void register_nodes(NodeRegistry& r) {
  r.add({"score.importance",
         "mask-gradient importance of heads, KV groups, FFN channels and layers, plus activation statistics",
         NodeRole::Source,
         false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face model folder"},
          {"text", ParamType::Path, true, nullptr, "calibration text file"},
          {"output", ParamType::Output, true, nullptr, "directory for scores.json, channels.bin.zst, imatrix.dat"},
          {"ctx", ParamType::Int, false, 512, "tokens per chunk", 2, 1 << 20},
          {"max_tokens", ParamType::Int, false, 0, "use at most this many tokens (0 = all)", 0},
          {"moments", ParamType::Bool, false, false, "also write moments/: E[x xᵀ] of every linear layer input (for method gptq; n² floats each)"},
          {"reuse", ParamType::Bool, false, false, "keep the scores already in 'output' when they were taken from this model, text and settings"}},
         [](const NodeContext& c) { return std::make_unique<Importance>(c); }});
}

}  // namespace
}  // namespace squish::score

SQUISH_PLUGIN("score", "0.1.0", "task-specific importance from mask gradients, natively on the CPU", squish::score::register_nodes)
