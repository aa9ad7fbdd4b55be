// Stand-ins for the shipped plugins, for the pipeline fuzz targets: the same plugin names and
// node kinds with the same parameter lists (types, required, defaults) as plugins/io and
// stages/*/<stage>_plugin.cpp, but nodes that do nothing. Built once per plugin name with
// -DFAKE_PLUGIN_<NAME>, into a directory of their own, so the pipeline loader and validator run
// as deep as with the real plugins without building the stages (or dlopen'ing anything else).
// Keep in step with the real registrations when they change.
#include "core/prune/recovery.hpp"
#include "core/quant/gptq.hpp"
#include "core/runtime/plugin_api.hpp"

namespace squish {
namespace {

using P = ParamType;
using json = nlohmann::json;

class Nothing final : public Node {};
std::unique_ptr<Node> make(const NodeContext&) { return std::make_unique<Nothing>(); }

[[maybe_unused]] void register_io(NodeRegistry& r) {
  r.add({"io.safetensors_source", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"include", P::List, false, json::array(), ""},
          {"exclude", P::List, false, json::array(), ""},
          {"release_pages", P::Bool, false, true, ""}},
         make});
  r.add({"io.passthrough", "fake", NodeRole::Transform, true,
         {{"check_finite", P::Bool, false, false, ""}, {"to_f32", P::Bool, false, false, ""}}, make});
  r.add({"io.checksum_manifest", "fake", NodeRole::Sink, true, {{"output", P::Path, true, nullptr, ""}}, make});
}

[[maybe_unused]] void register_score(NodeRegistry& r) {
  r.add({"score.importance", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"text", P::Path, true, nullptr, ""},
          {"output", P::Path, true, nullptr, ""},
          {"ctx", P::Int, false, 512, ""},
          {"max_tokens", P::Int, false, 0, ""},
          {"moments", P::Bool, false, false, ""},
          {"reuse", P::Bool, false, false, ""}},
         make});
}

[[maybe_unused]] void register_plan(NodeRegistry& r) {
  r.add({"plan.measure", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"stats", P::Path, true, nullptr, ""},
          {"output", P::String, false, "", ""},
          {"reuse", P::Bool, false, true, ""},
          {"method", P::String, false, "rtn", ""},
          {"damp", P::Float, false, quant::kDefaultDamp, ""},
          {"threads", P::Int, false, 0, ""}},
         make});
  r.add({"plan.recipe", "fake", NodeRole::Transform, false,
         {{"model", P::Path, true, nullptr, ""},
          {"output", P::Path, true, nullptr, ""},
          {"size", P::Int, false, 0, ""},
          {"bpw", P::Float, false, 0.0, ""},
          {"device", P::String, false, "", ""},
          {"memory", P::Float, false, 0.0, ""},
          {"ctx", P::Int, false, 4096, ""},
          {"prune_kv", P::Float, false, 0.0, ""},
          {"prune_q", P::Float, false, 0.0, ""},
          {"prune_ffn", P::Float, false, 0.0, ""},
          {"drop_layers", P::Int, false, 0, ""},
          {"recovery", P::String, false, "none", ""},
          {"recovery_damp", P::Float, false, prune::kDefaultRidge, ""},
          {"prune_by", P::String, false, "predicted", ""},
          {"prune_search", P::Bool, false, false, ""},
          {"ffn_align", P::Int, false, 0, ""}},
         make});
}

[[maybe_unused]] void register_compress(NodeRegistry& r) {
  r.add({"compress.recipe", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""}, {"recipe", P::String, false, "", ""}, {"preset", P::String, false, "", ""},
          {"imatrix", P::String, false, "", ""}, {"stats", P::String, false, "", ""}},
         make});
  r.add({"compress.prune", "fake", NodeRole::Transform, true, {{"stats", P::String, false, "", ""}}, make});
  r.add({"compress.quantize", "fake", NodeRole::Transform, true,
         {{"imatrix", P::String, false, "", ""},
          {"stats", P::String, false, "", ""},
          {"method", P::String, false, "", ""},
          {"damp", P::Float, false, -1.0, ""},
          {"act_order", P::Bool, false, false, ""}},
         make});
  r.add({"compress.gguf_writer", "fake", NodeRole::Sink, true, {{"output", P::Path, true, nullptr, ""}}, make});
  r.add({"compress.plan_report", "fake", NodeRole::Sink, false, {{"output", P::Path, true, nullptr, ""}}, make});
}

[[maybe_unused]] void register_verify(NodeRegistry& r) {
  r.add({"verify.gguf", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"report", P::String, false, "", ""},
          {"recipe", P::String, false, "", ""},
          {"source", P::String, false, "", ""},
          {"budget_bytes", P::Int, false, 0, ""},
          {"text", P::String, false, "", ""},
          {"ppl_reference", P::Float, false, 0.0, ""},
          {"ppl_tolerance", P::Float, false, 0.05, ""},
          {"ctx", P::Int, false, 128, ""},
          {"prompt", P::String, false, "", ""},
          {"n", P::Int, false, 32, ""}},
         make});
}

[[maybe_unused]] void register_infer(NodeRegistry& r) {
  r.add({"infer.perplexity", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"text", P::Path, true, nullptr, ""},
          {"ctx", P::Int, false, 512, ""},
          {"chunks", P::Int, false, 0, ""},
          {"threads", P::Int, false, 0, ""},
          {"exact", P::Bool, false, false, ""},
          {"reference", P::String, false, "", ""},
          {"report", P::String, false, "", ""}},
         make});
  r.add({"infer.generate", "fake", NodeRole::Source, false,
         {{"model", P::Path, true, nullptr, ""},
          {"prompt", P::String, true, nullptr, ""},
          {"n", P::Int, false, 128, ""},
          {"threads", P::Int, false, 0, ""},
          {"temperature", P::Float, false, 0.0, ""},
          {"top_k", P::Int, false, 40, ""},
          {"top_p", P::Float, false, 0.95, ""},
          {"repeat_penalty", P::Float, false, 1.0, ""},
          {"seed", P::Int, false, 0, ""},
          {"report", P::String, false, "", ""}},
         make});
}

}  // namespace
}  // namespace squish

#if defined(FAKE_PLUGIN_IO)
SQUISH_PLUGIN("io", "fake", "fuzzing stand-in", squish::register_io)
#elif defined(FAKE_PLUGIN_SCORE)
SQUISH_PLUGIN("score", "fake", "fuzzing stand-in", squish::register_score)
#elif defined(FAKE_PLUGIN_PLAN)
SQUISH_PLUGIN("plan", "fake", "fuzzing stand-in", squish::register_plan)
#elif defined(FAKE_PLUGIN_COMPRESS)
SQUISH_PLUGIN("compress", "fake", "fuzzing stand-in", squish::register_compress)
#elif defined(FAKE_PLUGIN_VERIFY)
SQUISH_PLUGIN("verify", "fake", "fuzzing stand-in", squish::register_verify)
#elif defined(FAKE_PLUGIN_INFER)
SQUISH_PLUGIN("infer", "fake", "fuzzing stand-in", squish::register_infer)
#else
#error "define FAKE_PLUGIN_<NAME>"
#endif
