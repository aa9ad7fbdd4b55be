// Fuzz target: a pipeline YAML file (Pipeline::load with no --set overrides), against the
// stand-in plugins. Input = the YAML text.
#include "tests/fuzz/fuzz_pipeline_common.hpp"

using namespace squish;

SQUISH_FUZZ_TARGET(pipeline) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (!fuzz::pipeline_is_safe(text)) return 0;
  const std::string path = fuzz::scratch_dir("pipeline") + "/pipeline.yaml";
  fuzz::write_bytes(path, text);
  const Pipeline p = Pipeline::load(path, {}, fuzz::host());
  fuzz::check_pipeline(p);
  return 0;
}
