// squish-synth: writes a Hugging Face checkpoint with seeded random weights for a config.json
// (any family core/arch supports), for benchmarks and scale tests without downloads.
//   squish-synth --config config.json --output DIR [--tokenizer DIR] [--seed N] [--f32] [--shard-mb N]
#include "core/io/synthetic_checkpoint.hpp"
#include "core/io/text_file.hpp"
#include "core/runtime/error.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
  using namespace squish;
  std::string config, output;
  SyntheticOptions opt;
  auto usage = [] {
    std::fputs("usage: squish-synth --config config.json --output DIR [--tokenizer DIR] [--seed N] [--f32] [--shard-mb N]\n", stderr);
    return static_cast<int>(ExitCode::Usage);
  };
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw Error(ExitCode::Usage, fmt::format("{} needs a value", a));
        return argv[++i];
      };
      if (a == "--config") config = value();
      else if (a == "--output") output = value();
      else if (a == "--tokenizer") opt.tokenizer_from = value();
      else if (a == "--seed") opt.seed = std::stoull(value());
      else if (a == "--shard-mb") opt.shard_bytes = std::stoull(value()) << 20;
      else if (a == "--f32") opt.bf16 = false;
      else if (a == "--help" || a == "-h") return usage(), 0;
      else throw Error(ExitCode::Usage, fmt::format("unknown option '{}'", a));
    }
    if (config.empty() || output.empty()) return usage();
    const nlohmann::json j = read_json_file(config, "config");
    write_synthetic_checkpoint(output, j, opt);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "squish-synth: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "squish-synth: %s\n", e.what());
    return static_cast<int>(ExitCode::Usage);
  }
}
