#pragma once
// The verify stage: checks a GGUF produced by the compress stage (or any GGUF of a core/arch family)
// before it is shipped. Each check reports {name, ok, status, detail}:
//   gguf_valid  - the strict reader opens it (truncation, corrupt header, bad offsets)
//   shapes      - every tensor's ne agrees with the architecture in the metadata (per-layer
//                 head counts x head_dim, FFN widths, embedding/vocab) and, with a recipe and the
//                 source checkpoint, with the resolved plan's ne and type; missing/extra named
//   finite      - every tensor dequantizes to finite values (NaN/Inf counted per tensor)
//   budget      - file size <= the recipe's memory_budget_bytes (or an override); size vs the
//                 plan's predicted file_bytes
//   perplexity  - PPL on a text within a relative tolerance of a reference (infer library)
//   generation  - short greedy generation is not degenerate (infer library)
// A check that cannot run (file invalid, nothing to compare with) has status "skip" and ok=true.
#include "core/gguf/gguf.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace squish::recipe {
struct CompressPlan;
struct CompressionRecipe;
}  // namespace squish::recipe

namespace squish::infer {
class Model;
}  // namespace squish::infer

namespace squish::verify {

enum class Status { Pass, Fail, Skip };
const char* status_name(Status s);  // "pass" | "fail" | "skip"

struct CheckResult {
  CheckResult() = default;
  explicit CheckResult(std::string n) : name(std::move(n)) {}

  std::string name;
  Status status = Status::Pass;
  std::string detail;                              // one line; for failures names what failed
  nlohmann::json data = nlohmann::json::object();  // check-specific figures (counts, sizes, lists)

  bool ok() const { return status != Status::Fail; }
  nlohmann::json to_json() const;
};

struct VerifyOptions {
  std::string model;             // GGUF to check
  std::string recipe;            // recipe JSON file; "" = the GGUF's squish.recipe key, if any
  std::string source;            // Hugging Face folder the GGUF was built from; "" = no plan
  uint64_t budget_bytes = 0;     // > 0 overrides the recipe's memory_budget_bytes
  // perplexity (skipped when text is empty)
  std::string text;              // text file to score
  double ppl_reference = 0;      // expected PPL; 0 = report the PPL without comparing
  double ppl_tolerance = 0.05;   // relative
  int ctx = 128;                 // context per chunk
  // generation (skipped when prompt is empty)
  std::string prompt;
  int n = 32;                    // tokens to generate
  int threads = 0;               // 0 = all cores
  std::function<void(const std::string& unit, uint64_t done, uint64_t total)> progress;
};

struct VerifyReport {
  std::string model;
  uint64_t file_bytes = 0;
  std::vector<CheckResult> checks;

  bool ok() const;
  std::vector<const CheckResult*> failed() const;
  const CheckResult* find(const std::string& name) const;
  nlohmann::json to_json() const;
  // Human summary: one line per check.
  std::string summary() const;
  // "<model>: failed checks: finite (blk.3.attn_q.weight: 12 NaN), budget (...)"; "" when ok.
  std::string failure_message() const;
};

// Runs every check. Never throws for a bad input file: problems become failed checks.
// Throws Error(Usage / InputData) only for bad options (e.g. an unreadable recipe file).
VerifyReport verify_gguf(const VerifyOptions& opt);

// ---- individual checks (exposed for tests and tools) ----------------------------------------

// Architecture-derived shapes: expected ne of every tensor the metadata implies (core/arch).
CheckResult check_shapes(const gguf::Reader& r, const recipe::CompressPlan* plan);
CheckResult check_finite(const gguf::Reader& r, int threads = 0);
// budget: 0 = none.
CheckResult check_budget(uint64_t file_bytes, uint64_t budget, const recipe::CompressPlan* plan);
// Model checks (infer library). Throw Error on unreadable input; verify_gguf turns that into a
// failed check.
CheckResult check_perplexity(const std::shared_ptr<const infer::Model>& model, const VerifyOptions& opt);
CheckResult check_generation(const std::shared_ptr<const infer::Model>& model, const VerifyOptions& opt);
// Degenerate output: empty, a single token repeated throughout, or a period-1/2 loop covering
// more than 90% of the tokens.
CheckResult check_generation_tokens(const std::vector<int32_t>& tokens, const std::string& text);

// Expected GGUF ne of every tensor the file's metadata implies (core/arch's description of its
// family); `problems` gets metadata defects (missing keys, inconsistent counts).
struct ExpectedTensors {
  std::vector<std::pair<std::string, std::vector<int64_t>>> required;
};
ExpectedTensors expected_tensors(const gguf::Reader& r, std::vector<std::string>* problems);

}  // namespace squish::verify
