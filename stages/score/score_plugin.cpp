// The score stage plugin: `score.importance` scores a Hugging Face model on calibration text
// and writes the score folder (core/io/score_folder.hpp, docs/scores.md).
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "core/base/memory.hpp"
#include "core/runtime/ranks.hpp"
#include "stages/score/scorer.hpp"

#include <filesystem>

namespace fs = std::filesystem;

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
    const Ranks& ranks = Ranks::world();
    ranks.run_or_abort_all([&] { out = Message::of(Document{"scores", score(ranks)}); });  // no rank left waiting
    return true;
  }

  nlohmann::json score(const Ranks& ranks) {
    ScoreOptions opt;
    opt.ctx = static_cast<int>(ctx_.params["ctx"].get<int64_t>());
    opt.max_tokens = ctx_.params["max_tokens"].get<int64_t>();
    opt.moments = ctx_.params["moments"].get<bool>();
    opt.threads = ctx_.threads;
    const std::string memory = ctx_.params["memory"].get<std::string>();
    if (!memory.empty()) {
      const auto bytes = parse_byte_size(memory);
      if (!bytes) fail(ExitCode::Usage, "score: memory '{}' is not a size (bytes, or e.g. 8G, 512MiB, 4GB)", memory);
      opt.memory = *bytes;
    }
    opt.progress = [this](uint64_t d, uint64_t t) {
      if (ctx_.is_cancelled()) fail(ExitCode::Runtime, "cancelled");
      ctx_.progress("tokens", d, t);
    };
    const std::string model = ctx_.params["model"].get<std::string>(), text = ctx_.params["text"].get<std::string>();
    const std::string dir = ctx_.params["output"].get<std::string>();
    const std::string scratch = ctx_.params["scratch"].get<std::string>();
    // The scratch file goes beside the output (its nearest existing folder) unless told
    // otherwise: not /tmp, often in memory.
    if (!scratch.empty()) {
      opt.scratch_dir = scratch;
    } else {
      fs::path p = fs::absolute(fs::path(dir)).lexically_normal();
      if (!p.has_filename()) p = p.parent_path();  // "out/"
      std::error_code ec;
      do p = p.parent_path();
      while (!fs::is_directory(p, ec) && p != p.root_path());
      opt.scratch_dir = p.string();
    }
    if (ctx_.params["reuse"].get<bool>()) {
      // Rank 0 decides for every rank: nodes need not see the same files.
      auto stored = ranks.rank() == 0 ? stored_scores(model, text, opt, dir) : std::nullopt;
      const std::string shared = ranks.broadcast(stored ? stored->dump() : std::string());
      if (!shared.empty()) {
        ctx_.progress("tokens (stored scores)", 1, 1);
        return nlohmann::json::parse(shared);
      }
    }
    // Every rank holds the sums; rank 0 writes them. The second moments go to the folder's
    // staging area layer by layer as they are complete (scoring never holds all of them). The
    // staging area is made at the first write, so a run refused at its start (a rank's text
    // differs, a bound cannot be met) leaves nothing, even when MPI_Abort kills this rank.
    std::optional<ScoreFolderWriter> out;
    const auto writer = [&]() -> ScoreFolderWriter& {
      if (!out) out.emplace(dir);
      return *out;
    };
    if (opt.moments)  // called on rank 0 only
      opt.moment_sink = [&](const std::string& key, MomentSum m, int64_t tokens) { writer().write_moment(key, m, tokens); };
    ScoreResult r = score_model(model, text, opt);
    if (ranks.rank() == 0) write_scores(r, writer());
    return std::move(r.scores);
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
          {"output", ParamType::Output, true, nullptr, "score folder to write: scores, imatrix, Fisher factors, channel scores (docs/scores.md)"},
          {"ctx", ParamType::Int, false, 512, "tokens per chunk", 2, 1 << 20},
          {"max_tokens", ParamType::Int, false, 0, "use at most this many tokens (0 = all)", 0},
          {"moments", ParamType::Bool, false, false, "also write moments/: E[x xᵀ] of every linear layer input (for method gptq; n² floats each)"},
          {"memory", ParamType::String, false, "", "bound on scoring's memory (e.g. 8G): layer by layer, checkpoints beyond it in a scratch file; empty = the memory available (with moments: layer by layer, every layer kept when they fit; without: the whole model in memory)"},
          {"scratch", ParamType::String, false, "", "folder for the scratch file (default: the output's parent folder)"},
          {"reuse", ParamType::Bool, false, false, "keep the scores already in 'output' when they were taken from this model, text and settings"}},
         [](const NodeContext& c) { return std::make_unique<Importance>(c); }});
}

}  // namespace
}  // namespace squish::score

SQUISH_PLUGIN("score", "0.1.0", "task-specific importance from mask gradients, natively on the CPU", squish::score::register_nodes)
