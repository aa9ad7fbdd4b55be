#pragma once
// What to remove, from the score stage's statistics: KV groups (with the q heads that share
// them), q heads within the kept groups (the same number from each, as GGUF's GQA layout needs),
// FFN channels and whole layers, under targets given as fractions / counts.
//
// A unit's cost is the loss increase its removal is predicted to cause *after* the recipe's
// recovery repairs the output projection it feeds (core/prune/recovery.hpp: the Fisher-weighted
// reconstruction error, in nats per token like the quantization measurements), or, with
// by = "taylor" / "fisher", the score stage's mask importance of the unit. Units are removed
// greedily, cheapest first across all layers, so layers lose different amounts where the costs
// say so; a KV group's cost is recomputed jointly with what its layer already lost (removing two
// groups is not the sum of removing each). A layer always keeps one KV group and `ffn_align`
// channels; whole layers go only through `drop_layers` (ranked by the score stage's branch
// importance, attention + MLP Taylor). Deterministic: ties go to the lower layer and index.
#include "core/prune/recovery.hpp"
#include "core/recipe/recipe.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace squish::plan {

struct PruneTarget {
  double kv = 0;          // fraction of all KV groups to remove
  double q = 0;           // fraction of all q heads to remove (those of removed groups count), one per kept group at a time
  double ffn = 0;         // fraction of all FFN channels to remove
  int drop_layers = 0;    // whole layers to remove
  std::string recovery = "none";  // none | bias | refit: what compress will do, and what costs assume
  double damp = prune::kDefaultRidge;  // refit's ridge
  std::string by = "predicted";   // predicted | taylor | fisher
  int ffn_align = 0;      // channels removed per layer in multiples of this; 0 = 256 when n_ff is a multiple of it, else 32
  bool any() const { return kv > 0 || q > 0 || ffn > 0 || drop_layers > 0; }
};

// Fills recipe.attention, ffn_channels, drop_layers, recovery and removals (each removal with
// its kind, layer, index, cost and reason). Throws Error(Usage) for targets out of range and
// Error(InputData) naming the file for missing statistics.
void select_pruning(const std::string& model_dir, const std::string& stats_dir, const PruneTarget& t, recipe::CompressionRecipe& recipe,
                    const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace squish::plan
