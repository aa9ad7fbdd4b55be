// squish-synth: writes a Hugging Face checkpoint with seeded random weights, for benchmarks and
// scale tests at any size without downloads (speed does not depend on the weight values).
//   squish-synth --output DIR (--config config.json | --family F --layers N --hidden N --heads N
//                --kv-heads N --ffn N --vocab N [--ctx N] [--tied]) [--tokenizer DIR] [--seed N]
//                [--f32] [--shard-mb N]
#include "core/arch/synthetic_checkpoint.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <map>
#include <string>

namespace {

constexpr const char* kUsage =
    "usage: squish-synth --output DIR (--config config.json | --family llama|qwen2|mistral --layers N --hidden N\n"
    "                    --heads N --kv-heads N --ffn N --vocab N [--ctx N] [--tied]) [--tokenizer DIR] [--seed N]\n"
    "                    [--f32] [--shard-mb N]\n"
    "  e.g. a 1.0B qwen2: --family qwen2 --layers 22 --hidden 2048 --heads 16 --kv-heads 4 --ffn 5632 --vocab 8192\n";

// config.json for a shape given on the command line (the family's defaults for everything else;
// core/arch validates it like any downloaded config).
nlohmann::json config_for_shape(const std::string& family, const std::map<std::string, long long>& n, bool tied) {
  static const std::map<std::string, std::string> kArchitectures = {
      {"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"mistral", "MistralForCausalLM"}};
  const auto a = kArchitectures.find(family);
  if (a == kArchitectures.end())
    squish::fail(squish::ExitCode::Usage, "--family must be llama, qwen2 or mistral (got '{}')", family);
  for (const char* k : {"--layers", "--hidden", "--heads", "--kv-heads", "--ffn", "--vocab"})
    if (!n.count(k)) squish::fail(squish::ExitCode::Usage, "{} is needed with --family", k);
  return {{"architectures", {a->second}},
          {"model_type", family},
          {"hidden_act", "silu"},
          {"num_hidden_layers", n.at("--layers")},
          {"hidden_size", n.at("--hidden")},
          {"num_attention_heads", n.at("--heads")},
          {"num_key_value_heads", n.at("--kv-heads")},
          {"intermediate_size", n.at("--ffn")},
          {"vocab_size", n.at("--vocab")},
          {"max_position_embeddings", n.count("--ctx") ? n.at("--ctx") : 32768},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", family == "qwen2" ? 1000000.0 : 10000.0},
          {"tie_word_embeddings", tied},
          {"bos_token_id", 0},
          {"eos_token_id", 0},
          {"torch_dtype", "bfloat16"}};
}

}  // namespace

int main(int argc, char** argv) {
  using namespace squish;
  std::string config, output, family;
  std::map<std::string, long long> shape;
  bool tied = false;
  SyntheticOptions opt;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) fail(ExitCode::Usage, "{} needs a value", a);
        return argv[++i];
      };
      auto number = [&]() -> long long {
        const std::string v = value();
        size_t used = 0;
        long long x = -1;
        try {
          x = std::stoll(v, &used);
        } catch (const std::exception&) {
        }
        if (used != v.size() || x <= 0) fail(ExitCode::Usage, "{} needs a positive integer (got '{}')", a, v);
        return x;
      };
      if (a == "--config") config = value();
      else if (a == "--output") output = value();
      else if (a == "--tokenizer") opt.tokenizer_from = value();
      else if (a == "--seed") opt.seed = static_cast<uint64_t>(number());
      else if (a == "--shard-mb") opt.shard_bytes = static_cast<uint64_t>(number()) << 20;
      else if (a == "--f32") opt.bf16 = false;
      else if (a == "--family") family = value();
      else if (a == "--tied") tied = true;
      else if (a == "--layers" || a == "--hidden" || a == "--heads" || a == "--kv-heads" || a == "--ffn" || a == "--vocab" || a == "--ctx")
        shape[a] = number();
      else if (a == "--help" || a == "-h") return std::fputs(kUsage, stdout), 0;
      else fail(ExitCode::Usage, "unknown option '{}'", a);
    }
    if (output.empty() || config.empty() == family.empty()) {
      std::fputs(kUsage, stderr);
      return static_cast<int>(ExitCode::Usage);
    }
    if (!config.empty() && (!shape.empty() || tied)) fail(ExitCode::Usage, "shape options go with --family, not --config");
    const nlohmann::json j = config.empty() ? config_for_shape(family, shape, tied) : read_json_file(config, "config");
    write_synthetic_checkpoint(output, j, opt);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "squish-synth: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "squish-synth: %s\n", e.what());
    return static_cast<int>(ExitCode::Runtime);
  }
}
