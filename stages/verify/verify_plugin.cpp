// The verify plugin:
//   verify.gguf - runs every check on one GGUF, writes the JSON report (atomically, also when
//                 checks fail), prints a summary, and fails the pipeline with exit code 3
//                 naming the failed checks.
// A source node: it needs no input and emits the report as a document for downstream nodes.
#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "stages/verify/verify.hpp"

#include <fmt/format.h>

namespace squish::verify {
namespace {

class VerifyNode final : public Node {
 public:
  explicit VerifyNode(const NodeContext& ctx) : ctx_(ctx) {
    const auto& p = ctx.params;
    opt_.model = p["model"].get<std::string>();
    opt_.recipe = p["recipe"].get<std::string>();
    opt_.source = p["source"].get<std::string>();
    const int64_t budget = p["budget_bytes"].get<int64_t>();
    if (budget < 0) fail(ExitCode::Usage, "budget_bytes must be >= 0, got {}", budget);
    opt_.budget_bytes = static_cast<uint64_t>(budget);
    opt_.text = p["text"].get<std::string>();
    opt_.ppl_reference = p["ppl_reference"].get<double>();
    opt_.ppl_tolerance = p["ppl_tolerance"].get<double>();
    opt_.ctx = static_cast<int>(p["ctx"].get<int64_t>());
    opt_.prompt = p["prompt"].get<std::string>();
    opt_.n = static_cast<int>(p["n"].get<int64_t>());
    opt_.threads = ctx.threads;
    if (opt_.ppl_tolerance <= 0) fail(ExitCode::Usage, "ppl_tolerance must be > 0, got {}", opt_.ppl_tolerance);
    if (opt_.ctx < 8) fail(ExitCode::Usage, "ctx must be >= 8, got {}", opt_.ctx);
    if (opt_.n < 1) fail(ExitCode::Usage, "n must be >= 1, got {}", opt_.n);
    report_path_ = p["report"].get<std::string>();
  }

  bool produce(Message& out) override {
    if (done_) return false;
    done_ = true;
    opt_.progress = [this](const std::string& unit, uint64_t d, uint64_t t) { ctx_.progress(unit, d, t); };
    const VerifyReport rep = verify_gguf(opt_);
    // The report first: a failing verification must still leave its evidence behind.
    if (!report_path_.empty()) write_json_file(report_path_, rep.to_json());
    fmt::print("{}", rep.summary());
    std::fflush(stdout);
    if (!rep.ok()) throw Error(ExitCode::InputData, rep.failure_message());
    out = Message::of(Document{"verify_report", rep.to_json()});
    return true;
  }
  uint64_t expected_count() const override { return 1; }

 private:
  NodeContext ctx_;
  VerifyOptions opt_;
  std::string report_path_;
  bool done_ = false;
};

void register_nodes(NodeRegistry& r) {
  r.add({"verify.gguf",
         "check a GGUF: valid file, shapes vs metadata and plan, finite values, budget, perplexity, generation",
         NodeRole::Source,
         false,
         {{"model", ParamType::Path, true, nullptr, "GGUF file to check"},
          {"report", ParamType::Output, false, "", "JSON report to write (atomically, also on failure); \"\" = none"},
          {"recipe", ParamType::Path, false, "", "recipe JSON it was built from; \"\" = the GGUF's squish.recipe key"},
          {"source", ParamType::Path, false, "", "Hugging Face folder it was built from (to compare with the plan); \"\" = none"},
          {"budget_bytes", ParamType::Int, false, 0, "size budget overriding the recipe's memory_budget_bytes; 0 = the recipe's", 0},
          {"text", ParamType::Path, false, "", "text file for the perplexity check; \"\" = skipped"},
          {"ppl_reference", ParamType::Float, false, 0.0, "expected perplexity; 0 = report only", 0},
          {"ppl_tolerance", ParamType::Float, false, 0.05, "allowed relative deviation from ppl_reference", 0},
          {"ctx", ParamType::Int, false, 128, "context length per perplexity chunk", 2, 1 << 20},
          {"prompt", ParamType::String, false, "", "prompt for the generation check; \"\" = skipped"},
          {"n", ParamType::Int, false, 32, "tokens to generate", 0}},
         [](const NodeContext& c) { return std::make_unique<VerifyNode>(c); }});
}

}  // namespace
}  // namespace squish::verify

SQUISH_PLUGIN("verify", "0.1.0", "check a GGUF before shipping it", squish::verify::register_nodes)
