// The infer stage: run a GGUF of any core/arch family (llama, mistral, qwen2) on the CPU.
//   infer.perplexity - llama-perplexity's protocol on a text file; JSON report + "PPL = x ± y"
//   infer.generate   - continue a prompt (greedy or sampled); JSON report + the text on stdout
// Both are sources that do their whole job in the first produce() and emit nothing: a pipeline
// is just the one node.
#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"
#include "core/model/generate.hpp"
#include "core/model/transformer.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace squish::infer {
namespace {

void write_report(const std::string& path, const nlohmann::json& j) {
  if (!path.empty()) write_json_file(path, j);
}

// The KV cache's element type (llama.cpp's -ctk/-ctv): f16 (its default) or f32.
const ParamSpec kKvCacheParam{"kv_cache", ParamType::String, false, "f16", "KV cache element type: f16 (half the memory a long context reads) or f32"};

KVType kv_type_param(const nlohmann::json& p) {
  const std::string v = p["kv_cache"].get<std::string>();
  if (v == "f16") return KVType::F16;
  if (v == "f32") return KVType::F32;
  fail(ExitCode::Usage, "kv_cache must be f16 or f32 (got '{}')", v);
}

class PerplexityNode final : public Node {
 public:
  explicit PerplexityNode(const NodeContext& ctx) : ctx_(ctx) {}
  bool produce(Message&) override {
    if (done_) return false;
    done_ = true;
    const auto& p = ctx_.params;
    auto model = Model::load(p["model"].get<std::string>());
    const Tokenizer tok = tokenizer_of(*model);
    const std::string text_path = p["text"].get<std::string>();
    const std::vector<int32_t> tokens = tok.encode(read_text_file(text_path, "text file"), /*add_special=*/true);
    PerplexityOptions opt;
    opt.text_path = text_path;
    opt.model_path = p["model"].get<std::string>();
    opt.n_ctx = static_cast<int>(p["ctx"].get<int64_t>());
    opt.threads = ctx_.threads_param();
    opt.max_chunks = static_cast<int>(p["chunks"].get<int64_t>());
    if (p["exact"].get<bool>()) opt.batch_path = BatchPath::Integer;
    opt.kv_type = kv_type_param(p);
    opt.progress = [this](int done, int total) { ctx_.progress("chunks", done, total); };
    opt.cancelled = [this] { return ctx_.is_cancelled(); };
    const std::string reference = p["reference"].get<std::string>();
    PerplexityResult r;
    nlohmann::json j;
    std::string kl_text;
    if (reference.empty()) {
      r = perplexity(model, tokens, with_bos(opt, tok));
      j = r.to_json();
    } else {  // KL divergence against the float model of the source checkpoint
      Transformer ref(SafetensorsWeights::open(reference), {.threads = opt.threads});
      const KlResult k = kl_divergence(model, ref, tokens, with_bos(opt, tok));
      r = k.ppl;
      j = k.to_json();
      j["reference"] = reference;
      kl_text = fmt::format(", mean KLD {:.6f} ± {:.6f}, 99% KLD {:.5f}, same top token {:.2f}%", k.kl_mean, k.kl_stderr, k.kl_p99,
                            100 * k.same_top_p);
    }
    j["model"] = p["model"];
    j["text"] = text_path;
    j["ctx"] = opt.n_ctx;
    write_report(p["report"].get<std::string>(), j);
    fmt::print("PPL = {:.4f} ± {:.5f} ({} chunks of {}, {:.0f} tokens/s){}\n", r.ppl, r.ppl_stderr, r.chunks, opt.n_ctx,
               r.tokens_per_s, kl_text);
    std::fflush(stdout);
    return false;
  }

 private:
  NodeContext ctx_;
  bool done_ = false;
};

class GenerateNode final : public Node {
 public:
  explicit GenerateNode(const NodeContext& ctx) : ctx_(ctx) {}
  bool produce(Message&) override {
    if (done_) return false;
    done_ = true;
    const auto& p = ctx_.params;
    auto model = Model::load(p["model"].get<std::string>());
    const Tokenizer tok = tokenizer_of(*model);
    GenerateOptions opt;
    opt.n = static_cast<int>(std::min<int64_t>(p["n"].get<int64_t>(), 1 << 30));
    if (opt.n < 0) fail(ExitCode::Usage, "n must be >= 0 (got {})", opt.n);
    opt.threads = ctx_.threads_param();
    opt.kv_type = kv_type_param(p);
    opt.temperature = static_cast<float>(p["temperature"].get<double>());
    opt.top_k = static_cast<int>(p["top_k"].get<int64_t>());
    opt.top_p = static_cast<float>(p["top_p"].get<double>());
    opt.repeat_penalty = static_cast<float>(p["repeat_penalty"].get<double>());
    opt.seed = static_cast<uint64_t>(p["seed"].get<int64_t>());
    int done = 0;
    opt.on_token = [&](int32_t) { ctx_.progress("tokens", ++done, opt.n); };
    const GenerateResult r = generate(model, tok, p["prompt"].get<std::string>(), opt);
    if (r.stopped_at_context)
      ctx_.warn(fmt::format("stopped after {} tokens: prompt and generation fill the model's context of {}", r.generated.size(), r.context));
    nlohmann::json j = r.to_json();
    j["model"] = p["model"];
    write_report(p["report"].get<std::string>(), j);
    fmt::print("{}\n", r.text);
    fmt::print("[{} prompt + {} generated tokens; prefill {:.0f} tokens/s, decode {:.0f} tokens/s]\n", r.prompt_tokens.size(),
               r.generated.size(), r.prefill_tokens_per_s, r.decode_tokens_per_s);
    std::fflush(stdout);
    return false;
  }

 private:
  NodeContext ctx_;
  bool done_ = false;
};

void register_nodes(NodeRegistry& r) {
  r.add({"infer.perplexity", "perplexity of a GGUF on a text file (llama-perplexity protocol)", NodeRole::Source, false,
         {{"model", ParamType::Path, true, nullptr, "GGUF file (llama or qwen2 architecture)"},
          {"text", ParamType::Path, true, nullptr, "text file to score"},
          {"ctx", ParamType::Int, false, 512, "tokens per chunk; the second half of each chunk is scored", 2, 1 << 20},
          {"chunks", ParamType::Int, false, 0, "score only the first N chunks (0 = all)", 0},
          {"threads", ParamType::Int, false, 0, "worker threads (0 = the pipeline's setting / all cores)", 0, 4096},
          {"exact", ParamType::Bool, false, false, "integer dots in batches too (llama.cpp's arithmetic; the default where the CPU has AVX-512 VNNI, slower without)"},
          kKvCacheParam,
          {"reference", ParamType::Path, false, "", "HF folder the GGUF came from: also report KL divergence against its float model"},
          {"report", ParamType::Output, false, "", "JSON report to write (ppl, ppl_stderr, tokens, chunks, tokens_per_s)"}},
         [](const NodeContext& c) { return std::make_unique<PerplexityNode>(c); }});
  r.add({"infer.generate", "continue a prompt with a GGUF model (greedy or sampled)", NodeRole::Source, false,
         {{"model", ParamType::Path, true, nullptr, "GGUF file (llama or qwen2 architecture)"},
          {"prompt", ParamType::String, true, nullptr, "prompt text"},
          {"n", ParamType::Int, false, 128, "tokens to generate (stops early at end-of-text; at most the context length)", 0},
          {"threads", ParamType::Int, false, 0, "worker threads (0 = the pipeline's setting / all cores)", 0, 4096},
          {"temperature", ParamType::Float, false, 0.0, "0 = greedy", 0, 100},
          {"top_k", ParamType::Int, false, 40, "sample among the k most likely tokens (0 = all)", 0},
          {"top_p", ParamType::Float, false, 0.95, "nucleus: smallest set with this much probability (1 = off)", 0, 1},
          {"repeat_penalty", ParamType::Float, false, 1.0, "llama.cpp repetition penalty over the last 64 tokens (1 = off)", 0.001, 1000},
          {"seed", ParamType::Int, false, 0, "random seed for sampling", 0},
          kKvCacheParam,
          {"report", ParamType::Output, false, "", "JSON report to write (text, token counts, speeds)"}},
         [](const NodeContext& c) { return std::make_unique<GenerateNode>(c); }});
}

}  // namespace
}  // namespace squish::infer

SQUISH_PLUGIN("infer", "0.1.0", "CPU inference of llama / mistral / qwen2 GGUFs: perplexity and generation", squish::infer::register_nodes)
