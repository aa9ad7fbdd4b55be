// Fuzz target: squish-run's --set overrides, on a fixed shipped pipeline (Pipeline::load).
// Input = NAME=VALUE lines (split at the first '=', as squish-run does; lines without one, or
// starting with one, are skipped as squish-run refuses them first). An optional first line
// "@<pipeline>" picks pipelines/<pipeline>.yaml (default squish.yaml, the one with most nodes).
#include "tests/fuzz/fuzz_pipeline_common.hpp"

#include <filesystem>

using namespace squish;

SQUISH_FUZZ_TARGET(overrides) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string pipeline = "squish";
  std::vector<std::pair<std::string, std::string>> sets;
  bool first = true;
  while (!in.empty()) {
    const size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
    if (first && line.starts_with("@")) {
      pipeline = std::string(line.substr(1));
      first = false;
      continue;
    }
    first = false;
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    sets.emplace_back(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }
  static const char* const known[] = {"checksum", "compress", "generate", "perplexity", "plan", "score", "squish", "verify"};
  if (std::find(std::begin(known), std::end(known), pipeline) == std::end(known)) pipeline = "squish";
  const std::string path = std::string(SQUISH_SOURCE_DIR) + "/pipelines/" + pipeline + ".yaml";
  const Pipeline p = Pipeline::load(path, sets, fuzz::host());
  fuzz::check_pipeline(p);
  // Every --set that was accepted took effect.
  for (const auto& [k, v] : sets) {
    if (k.find('.') != std::string::npos) continue;
    auto it = p.variables.find(k);
    SQUISH_FUZZ_CHECK(it != p.variables.end() && it->second.set, "--set " + k + " accepted but not set");
  }
  return 0;
}
