#pragma once
// A Hugging Face checkpoint folder with seeded random weights, for any config.json a family of
// core/arch accepts: config.json, model.safetensors (or shards with an index), and the tokenizer
// files copied from another folder. For tests and benchmarks at shapes no shipped model has
// (speed does not depend on the weight values; the math's agreement does not either).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace squish {

struct SyntheticOptions {
  std::string tokenizer_from;  // folder whose tokenizer.json / tokenizer_config.json are copied ("" = none)
  uint64_t seed = 0;
  bool bf16 = true;            // weights in bf16 (as published checkpoints), else f32
  uint64_t shard_bytes = 0;    // > 0: shards of at most about this size, with model.safetensors.index.json
};

// Writes `dir` (created; must not exist or be empty). Matrices are N(0, 1/fan_in), embeddings
// N(0, 1), norms 1 + N(0, 0.1^2), biases N(0, 0.1^2): activations stay O(1) at any size.
// Throws Error(InputData) when the config is not one Squish supports.
void write_synthetic_checkpoint(const std::string& dir, const nlohmann::json& config, const SyntheticOptions& opt);

}  // namespace squish
