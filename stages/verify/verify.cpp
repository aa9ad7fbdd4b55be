#include "stages/verify/verify.hpp"

#include "core/arch/architecture.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/quant/quantize.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"
#include "core/recipe/recipe.hpp"
#include "core/tokenizer/vocab.hpp"
#include "core/model/generate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

namespace squish::verify {

const char* status_name(Status s) {
  switch (s) {
    case Status::Pass: return "pass";
    case Status::Fail: return "fail";
    case Status::Skip: return "skip";
  }
  return "?";
}

nlohmann::json CheckResult::to_json() const {
  nlohmann::json j{{"name", name}, {"ok", ok()}, {"status", status_name(status)}, {"detail", detail}};
  for (const auto& [k, v] : data.items()) j[k] = v;
  return j;
}

bool VerifyReport::ok() const {
  return std::all_of(checks.begin(), checks.end(), [](const CheckResult& c) { return c.ok(); });
}

std::vector<const CheckResult*> VerifyReport::failed() const {
  std::vector<const CheckResult*> out;
  for (const auto& c : checks)
    if (!c.ok()) out.push_back(&c);
  return out;
}

const CheckResult* VerifyReport::find(const std::string& name) const {
  for (const auto& c : checks)
    if (c.name == name) return &c;
  return nullptr;
}

nlohmann::json VerifyReport::to_json() const {
  nlohmann::json j{{"format", "squish.verify/1"}, {"model", model}, {"file_bytes", file_bytes}, {"ok", ok()}};
  j["failed"] = nlohmann::json::array();
  for (const auto* c : failed()) j["failed"].push_back(c->name);
  j["checks"] = nlohmann::json::array();
  for (const auto& c : checks) j["checks"].push_back(c.to_json());
  return j;
}

std::string VerifyReport::summary() const {
  std::string s = fmt::format("verify {} ({} bytes): {}\n", model, file_bytes, ok() ? "OK" : "FAILED");
  for (const auto& c : checks) s += fmt::format("  {:<4} {:<11} {}\n", status_name(c.status), c.name, c.detail);
  return s;
}

std::string VerifyReport::failure_message() const {
  std::vector<std::string> parts;
  for (const auto* c : failed()) parts.push_back(fmt::format("{} ({})", c->name, c->detail));
  if (parts.empty()) return "";
  return fmt::format("{}: failed checks: {}", model, fmt::join(parts, ", "));
}

namespace {

// The first few problems inline, the rest counted: details stay one line.
std::string first_problems(const std::vector<std::string>& problems, size_t shown = 4) {
  std::vector<std::string> head(problems.begin(), problems.begin() + std::min(shown, problems.size()));
  std::string s = fmt::format("{}", fmt::join(head, "; "));
  if (problems.size() > shown) s += fmt::format(" (+{} more)", problems.size() - shown);
  return s;
}

std::string ne_str(const std::vector<int64_t>& ne) { return fmt::format("[{}]", fmt::join(ne, ", ")); }

}  // namespace

// ---- shapes ------------------------------------------------------------------------------------

ExpectedTensors expected_tensors(const gguf::Reader& r, std::vector<std::string>* problems) {
  // The architecture the metadata describes (core/arch); tensors it makes optional (output
  // when tied, biases, rope_freqs) are read off the file, so all it implies are required.
  ExpectedTensors out;
  try {
    const arch::ModelArch a = arch::ModelArch::from_gguf(r);
    for (const auto& d : arch::tensors_of(a)) out.required.emplace_back(d.gguf_name, d.ne());
  } catch (const Error& e) {
    if (problems) problems->push_back(e.what());
  }
  return out;
}

CheckResult check_shapes(const gguf::Reader& r, const recipe::CompressPlan* plan) {
  CheckResult c{"shapes"};
  std::vector<std::string> problems, missing, extra, mismatched;
  try {
    ExpectedTensors exp = expected_tensors(r, &problems);
    std::set<std::string> known;
    auto compare = [&](const std::string& name, const std::vector<int64_t>& ne, bool required) {
      known.insert(name);
      const auto* t = r.find(name);
      if (!t) {
        if (required) missing.push_back(name);
        return;
      }
      if (t->ne != ne) mismatched.push_back(name), problems.push_back(fmt::format("{}: ne {} but the metadata implies {}", name, ne_str(t->ne), ne_str(ne)));
    };
    if (!exp.required.empty()) {
      for (const auto& [n, ne] : exp.required) compare(n, ne, true);
      for (const auto& t : r.tensors())
        if (!known.count(t.name)) extra.push_back(t.name);
    }
  } catch (const Error& e) {
    problems.push_back(e.what());  // malformed per-layer arrays and the like
  }
  c.data["architecture"] = r.get_string("general.architecture", "");
  c.data["n_tensors"] = r.tensors().size();

  // Against the plan: the exact ne and type the compress stage was told to write.
  if (plan) {
    std::set<std::string> planned;
    int n_plan_problems = 0;
    for (const auto& pt : plan->tensors) {
      planned.insert(pt.gguf_name);
      const auto* t = r.find(pt.gguf_name);
      if (!t) {
        if (std::find(missing.begin(), missing.end(), pt.gguf_name) == missing.end()) missing.push_back(pt.gguf_name);
        continue;
      }
      if (t->ne != pt.ne) {
        problems.push_back(fmt::format("{}: ne {} but the plan says {}", pt.gguf_name, ne_str(t->ne), ne_str(pt.ne)));
        ++n_plan_problems;
      }
      if (t->type != pt.type) {
        problems.push_back(fmt::format("{}: type {} but the plan says {}", pt.gguf_name, ggml_type_name(t->type), ggml_type_name(pt.type)));
        ++n_plan_problems;
      }
    }
    for (const auto& t : r.tensors())
      if (!planned.count(t.name) && std::find(extra.begin(), extra.end(), t.name) == extra.end()) extra.push_back(t.name);
    c.data["plan_tensors"] = plan->tensors.size();
    c.data["plan_mismatches"] = n_plan_problems;
  }

  if (!missing.empty()) problems.push_back(fmt::format("missing tensors: {}", fmt::join(missing, ", ")));
  if (!extra.empty()) problems.push_back(fmt::format("unexpected tensors: {}", fmt::join(extra, ", ")));
  c.data["missing"] = missing;
  c.data["extra"] = extra;
  c.data["problems"] = problems;
  if (problems.empty()) {
    c.detail = fmt::format("{} tensors agree with the {} metadata{}", r.tensors().size(), r.get_string("general.architecture", "?"),
                           plan ? fmt::format(" and with the plan ({} tensors: ne and type)", plan->tensors.size()) : "");
  } else {
    c.status = Status::Fail;
    c.detail = first_problems(problems);
  }
  return c;
}

// ---- finite ------------------------------------------------------------------------------------

CheckResult check_finite(const gguf::Reader& r, int threads) {
  CheckResult c{"finite"};
  const auto& ts = r.tensors();
  struct Count {
    uint64_t nan = 0, inf = 0;
    bool checked = false;
  };
  std::vector<Count> counts(ts.size());
  auto scan = [&](size_t i) {
    const auto& t = ts[i];
    if (!quantize_supported(t.type)) return;  // e.g. Q5_0 from stock llama.cpp: reported as unchecked
    const int64_t n = t.ne[0], rows = t.n_rows();
    const size_t row_bytes = ggml_row_size(t.type, n);
    std::vector<float> buf(static_cast<size_t>(n));
    Count k;
    for (int64_t row = 0; row < rows; ++row) {
      dequantize_row(t.type, t.data.data() + static_cast<size_t>(row) * row_bytes, buf.data(), n);
      for (float v : buf) {
        k.nan += std::isnan(v);
        k.inf += std::isinf(v);
      }
    }
    k.checked = true;
    counts[i] = k;
    // Read once: its pages leave this process's RSS (15 GB of mapped file by the end of a 7B F16).
    r.mapping()->release(r.data_offset() + t.offset, t.data.size());
  };
  tbb::task_arena arena(threads > 0 ? threads : tbb::task_arena::automatic);
  arena.execute([&] { tbb::parallel_for(size_t{0}, ts.size(), scan); });

  nlohmann::json bad = nlohmann::json::object();
  std::vector<std::string> problems, unchecked;
  uint64_t values = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& k = counts[i];
    if (!k.checked) {
      unchecked.push_back(fmt::format("{} ({})", ts[i].name, ggml_type_name(ts[i].type)));
      continue;
    }
    values += static_cast<uint64_t>(ts[i].n_elements());
    if (!k.nan && !k.inf) continue;
    bad[ts[i].name] = {{"nan", k.nan}, {"inf", k.inf}};
    std::string what;
    if (k.nan) what += fmt::format("{} NaN", k.nan);
    if (k.inf) what += fmt::format("{}{} Inf", what.empty() ? "" : " ", k.inf);
    problems.push_back(fmt::format("{}: {}", ts[i].name, what));
  }
  c.data["non_finite"] = bad;
  c.data["values_checked"] = values;
  c.data["unchecked"] = unchecked;
  if (!problems.empty()) {
    c.status = Status::Fail;
    c.detail = first_problems(problems);
  } else {
    c.detail = fmt::format("{} values in {} tensors are finite", values, ts.size() - unchecked.size());
    if (!unchecked.empty()) c.detail += fmt::format(" ({} tensors of unsupported types not checked)", unchecked.size());
  }
  return c;
}

// ---- budget ------------------------------------------------------------------------------------

CheckResult check_budget(uint64_t file_bytes, uint64_t budget, const recipe::CompressPlan* plan) {
  CheckResult c{"budget"};
  c.data["file_bytes"] = file_bytes;
  std::string vs_plan;
  if (plan) {
    c.data["planned_file_bytes"] = plan->file_bytes;
    const int64_t diff = static_cast<int64_t>(file_bytes) - static_cast<int64_t>(plan->file_bytes);
    c.data["vs_plan_bytes"] = diff;
    vs_plan = diff == 0 ? "; equals the plan's prediction" : fmt::format("; plan predicted {} bytes ({:+} bytes)", plan->file_bytes, diff);
  }
  if (!budget) {
    c.detail = "no budget" + vs_plan;
    return c;
  }
  c.data["budget_bytes"] = budget;
  if (file_bytes <= budget) {
    c.detail = fmt::format("{} bytes <= budget {} bytes ({:.1f}%){}", file_bytes, budget, 100.0 * file_bytes / budget, vs_plan);
  } else {
    c.status = Status::Fail;
    c.detail = fmt::format("{} bytes exceeds the budget of {} bytes by {}{}", file_bytes, budget, file_bytes - budget, vs_plan);
  }
  return c;
}

// ---- generation --------------------------------------------------------------------------------

CheckResult check_generation_tokens(const std::vector<int32_t>& tokens, const std::string& text) {
  CheckResult c{"generation"};
  c.data["tokens"] = tokens;
  c.data["text"] = text;
  const size_t n = tokens.size();
  if (n == 0) {
    c.status = Status::Fail;
    c.detail = "empty output";
    return c;
  }
  // Longest stretch that repeats with period p (t[i] == t[i-p]), counting the p tokens that
  // start the loop. A period-1 loop is also a period-2 loop, so p = 2 covers both.
  auto longest_loop = [&](size_t p) {
    size_t best = 0, run = 0;
    for (size_t i = p; i < n; ++i) {
      run = tokens[i] == tokens[i - p] ? run + 1 : 0;
      best = std::max(best, run ? run + p : 0);
    }
    return std::min(best, n);
  };
  const bool single = std::all_of(tokens.begin(), tokens.end(), [&](int32_t t) { return t == tokens[0]; });
  const size_t loop1 = longest_loop(1), loop2 = longest_loop(2);
  c.data["loop_period1"] = loop1;
  c.data["loop_period2"] = loop2;
  const size_t loop = std::max(loop1, loop2);
  if (single && n > 1) {
    c.status = Status::Fail;
    c.detail = fmt::format("degenerate: token {} repeated for all {} tokens", tokens[0], n);
  } else if (n >= 4 && loop * 10 > n * 9) {
    c.status = Status::Fail;
    c.detail = fmt::format("degenerate: a period-{} loop covers {} of {} tokens", loop1 >= loop2 ? 1 : 2, loop, n);
  } else {
    std::string shown = text.size() > 60 ? text.substr(0, 60) + "..." : text;
    for (auto& ch : shown)
      if (ch == '\n') ch = ' ';
    c.detail = fmt::format("{} tokens, longest short loop {}: \"{}\"", n, loop, shown);
  }
  return c;
}

// ---- perplexity / generation (infer library) ----------------------------------------------------

CheckResult check_perplexity(const std::shared_ptr<const infer::Model>& model, const VerifyOptions& opt) {
  CheckResult c{"perplexity"};
  const Tokenizer tok = infer::tokenizer_of(*model);
  const std::vector<int32_t> tokens = tok.encode(read_text_file(opt.text, "text file"), /*add_special=*/true);
  c.data["text"] = opt.text;
  c.data["ctx"] = opt.ctx;
  c.data["tokens"] = tokens.size();
  if (static_cast<int64_t>(tokens.size()) < opt.ctx) {
    c.status = Status::Fail;
    c.detail = fmt::format("{}: {} tokens, fewer than one chunk of ctx {}", opt.text, tokens.size(), opt.ctx);
    return c;
  }
  PerplexityOptions po;
  po.text_path = opt.text;
  po.model_path = opt.model;
  po.n_ctx = opt.ctx;
  po.threads = opt.threads;
  po.bos_token = tok.vocab().add_bos ? tok.bos() : -1;
  const PerplexityResult r = perplexity(model, tokens, po);
  c.data["ppl"] = std::isfinite(r.ppl) ? nlohmann::json(r.ppl) : nlohmann::json(nullptr);
  c.data["ppl_stderr"] = r.ppl_stderr;
  c.data["chunks"] = r.chunks;
  if (!std::isfinite(r.ppl)) {
    c.status = Status::Fail;
    c.detail = fmt::format("PPL is {} over {} chunks of {}", r.ppl, r.chunks, opt.ctx);
    return c;
  }
  if (opt.ppl_reference <= 0) {
    c.detail = fmt::format("PPL {:.4f} ± {:.4f} ({} chunks of {}; no reference)", r.ppl, r.ppl_stderr, r.chunks, opt.ctx);
    return c;
  }
  const double rel = r.ppl / opt.ppl_reference - 1.0;
  c.data["ppl_reference"] = opt.ppl_reference;
  c.data["ppl_tolerance"] = opt.ppl_tolerance;
  c.data["relative_diff"] = rel;
  c.detail = fmt::format("PPL {:.4f} vs reference {:.4f} ({:+.2f}%, tolerance {:.2f}%; {} chunks of {})", r.ppl, opt.ppl_reference,
                         100 * rel, 100 * opt.ppl_tolerance, r.chunks, opt.ctx);
  if (std::abs(rel) > opt.ppl_tolerance) c.status = Status::Fail;
  return c;
}

CheckResult check_generation(const std::shared_ptr<const infer::Model>& model, const VerifyOptions& opt) {
  const Tokenizer tok = infer::tokenizer_of(*model);
  infer::GenerateOptions go;
  go.n = opt.n;
  go.threads = opt.threads;
  go.temperature = 0.f;  // greedy: the most revealing and reproducible
  const infer::GenerateResult r = infer::generate(model, tok, opt.prompt, go);
  CheckResult c = check_generation_tokens(r.generated, tok.decode(r.generated));
  c.data["prompt"] = opt.prompt;
  return c;
}

// ---- driver ------------------------------------------------------------------------------------

namespace {

std::string recipe_label(const recipe::CompressionRecipe& r) {
  if (!r.name.empty()) return "'" + r.name + "'";
  return r.preset ? "(preset " + *r.preset + ")" : "(unnamed)";
}

CheckResult skipped(const std::string& name, const std::string& why) {
  CheckResult c{name};
  c.status = Status::Skip;
  c.detail = why;
  return c;
}

}  // namespace

VerifyReport verify_gguf(const VerifyOptions& opt) {
  VerifyReport rep;
  rep.model = opt.model;
  // A missing or unreadable file is reported by gguf_valid (the reader's message), not thrown:
  // the report is written in every case.
  std::error_code ec;
  const auto size = std::filesystem::file_size(opt.model, ec);
  rep.file_bytes = ec ? 0 : size;

  // 1. gguf_valid
  std::optional<gguf::Reader> reader;
  {
    CheckResult c{"gguf_valid"};
    try {
      reader.emplace(gguf::Reader::open(opt.model));
      c.detail = fmt::format("GGUF v{}, {} tensors, {} metadata keys", reader->version(), reader->tensors().size(), reader->metadata().size());
      c.data["tensors"] = reader->tensors().size();
      c.data["version"] = reader->version();
    } catch (const Error& e) {
      c.status = Status::Fail;
      c.detail = e.what();
    }
    rep.checks.push_back(std::move(c));
  }
  const std::vector<std::string> later = {"tokenizer", "recipe", "shapes", "finite", "budget", "perplexity", "generation"};
  if (!reader) {
    for (const auto& n : later) rep.checks.push_back(skipped(n, "not run: the file is not a valid GGUF"));
    return rep;
  }
  const gguf::Reader& r = *reader;

  // The vocabulary every runtime reads from the file: its special token ids inside it, and the
  // rest of what Squish's own tokenizer checks.
  {
    CheckResult c{"tokenizer"};
    try {
      const Vocab v = Vocab::from_gguf(r);
      c.detail = fmt::format("{} vocabulary of {} tokens, bos {}, eos {}", v.model, v.tokens.size(), v.bos, v.eos);
      c.data["tokens"] = v.tokens.size();
    } catch (const Error& e) {
      c.status = Status::Fail;
      c.detail = e.what();
    }
    rep.checks.push_back(std::move(c));
  }

  // The recipe (file or the GGUF's own copy) and, with the source checkpoint, its plan.
  std::optional<recipe::CompressionRecipe> recipe;
  std::unique_ptr<recipe::CompressPlan> plan;
  {
    CheckResult c{"recipe"};
    try {
      if (!opt.recipe.empty()) {
        recipe = recipe::CompressionRecipe::load(opt.recipe);
        c.data["from"] = opt.recipe;
      } else if (const auto* v = r.get("squish.recipe")) {
        const std::string origin = opt.model + ": squish.recipe";
        const nlohmann::json j = parse_json(v->as_string(), opt.model, "its squish.recipe key");
        recipe = recipe::CompressionRecipe::from_json(j, origin);
        c.data["from"] = "squish.recipe";
      }
      if (!recipe) {
        c.status = Status::Skip;
        c.detail = "no recipe (none given, no squish.recipe key)";
      } else if (opt.source.empty()) {
        c.detail = fmt::format("recipe {} from {}; no source checkpoint, so no plan to compare with", recipe_label(*recipe),
                               c.data["from"].get<std::string>());
      } else {
        // The budget is checked on its own below; resolve() would refuse an over-budget plan.
        plan = std::make_unique<recipe::CompressPlan>(recipe::resolve(*recipe, opt.source, /*enforce_budget=*/false));
        c.detail = fmt::format("recipe {} from {} resolved against {}: {} tensors, {} bytes predicted", recipe_label(*recipe),
                               c.data["from"].get<std::string>(), opt.source, plan->tensors.size(), plan->file_bytes);
        c.data["source"] = opt.source;
      }
    } catch (const Error& e) {
      c.status = Status::Fail;
      c.detail = e.what();
    }
    rep.checks.push_back(std::move(c));
  }

  // 2. shapes, 3. finite, 4. budget
  rep.checks.push_back(check_shapes(r, plan.get()));
  if (opt.progress) opt.progress("checks", 1, 4);
  rep.checks.push_back(check_finite(r, opt.threads));
  if (opt.progress) opt.progress("checks", 2, 4);
  const uint64_t budget = opt.budget_bytes ? opt.budget_bytes : recipe ? recipe->memory_budget_bytes : 0;
  rep.checks.push_back(check_budget(rep.file_bytes, budget, plan.get()));
  if (budget && opt.budget_bytes) rep.checks.back().data["budget_from"] = "budget_bytes";

  // 5. perplexity, 6. generation: both run the model, loaded once.
  std::shared_ptr<const infer::Model> model;
  std::string load_error;
  if (!opt.text.empty() || !opt.prompt.empty()) {
    try {
      model = infer::Model::load(opt.model);
    } catch (const Error& e) {
      load_error = fmt::format("cannot load the model: {}", e.what());
    }
  }
  auto model_check = [&](const std::string& name, auto&& run) {
    if (!model) {
      CheckResult c{name};
      c.status = Status::Fail;
      c.detail = load_error;
      return c;
    }
    try {
      return run();
    } catch (const Error& e) {
      CheckResult c{name};
      c.status = Status::Fail;
      c.detail = e.what();
      return c;
    }
  };
  if (opt.text.empty())
    rep.checks.push_back(skipped("perplexity", "no text given"));
  else
    rep.checks.push_back(model_check("perplexity", [&] { return check_perplexity(model, opt); }));
  if (opt.progress) opt.progress("checks", 3, 4);
  if (opt.prompt.empty())
    rep.checks.push_back(skipped("generation", "no prompt given"));
  else
    rep.checks.push_back(model_check("generation", [&] { return check_generation(model, opt); }));
  if (opt.progress) opt.progress("checks", 4, 4);
  return rep;
}

}  // namespace squish::verify
