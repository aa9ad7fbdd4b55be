// Fuzz target: a CompressionRecipe JSON file (CompressionRecipe::load), then its to_json round
// trip: the JSON it writes (into recipe.json and the GGUF's squish.recipe key) must read back to
// the same recipe. Input = the JSON text.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/io/text_file.hpp"
#include "core/recipe/recipe.hpp"

using namespace squish;

SQUISH_FUZZ_TARGET(recipe) {
  const std::string path = fuzz::scratch_dir("recipe") + "/recipe.json";
  fuzz::write_bytes(path, data, size);
  const recipe::CompressionRecipe r = recipe::CompressionRecipe::load(path);
  const nlohmann::json j = r.to_json();
  // A recipe Squish wrote is one Squish reads: a refusal here is a finding, not an Error.
  recipe::CompressionRecipe back;
  try {
    back = recipe::CompressionRecipe::from_json(j, "round trip of " + path);
  } catch (const Error& e) {
    fuzz::finding(std::string("to_json() output refused by from_json(): ") + e.what());
  }
  SQUISH_FUZZ_CHECK(back.to_json() == j, "to_json differs after a from_json(to_json()) round trip");
  // As text (what write_json_file and the squish.recipe GGUF key hold).
  const std::string text = json_text(j, 1);
  const nlohmann::json parsed = parse_json(text, "recipe text", "recipe");
  (void)recipe::CompressionRecipe::from_json(parsed, "text round trip of " + path);
  return 0;
}
