#pragma once
// The plan stage: measurements + a target -> a squish.recipe/1 CompressionRecipe choosing one
// type per tensor so the whole GGUF file (metadata included) fits the budget with the least
// predicted loss. Deterministic: the same measurements and target give the same bytes.
#include "core/recipe/recipe.hpp"
#include "stages/plan/allocate.hpp"
#include "stages/plan/measure.hpp"

#include <nlohmann/json.hpp>

#include <span>
#include <string>

namespace squish::plan {

// A device a budget can name: the memory left for the model after the OS and runtime.
struct DevicePreset {
  const char* name;
  double usable_gb;  // 1e9 bytes
};
// The presets (planner.cpp holds the one list).
std::span<const DevicePreset> device_presets();
// "macbook-air-16gb (11 GB usable), ...": for help texts and errors.
std::string device_presets_text();

// One of: size (bytes of the file), bpw (bits per source parameter, file bytes x 8 / params),
// device preset or memory (GB usable) minus the engine's KV cache at ctx tokens (F16, kept KV
// heads: arch::ModelArch::kv_cache_bytes).
struct Target {
  uint64_t size = 0;
  double bpw = 0;
  std::string device;  // a device_presets() name
  double memory_gb = 0;
  int ctx = 4096;
};

// The file-size budget a target means for this model; `why` says how it was derived.
uint64_t budget_bytes(const Target& t, const recipe::CompressPlan& base, std::string* why);

struct PlanResult {
  recipe::CompressionRecipe recipe;
  uint64_t file_bytes = 0;     // the resolved plan's predicted file size (<= budget)
  uint64_t budget = 0;
  double predicted_loss = 0;   // summed predicted loss increase (nats per token)
  nlohmann::json summary;      // per tensor: type, bytes, predicted loss, reason
};

// Throws Error(InputData) when the budget cannot be met (naming the smallest reachable size) or
// the measurements do not belong to the model.
// `structure` (optional): what to prune and how to repair it (attention, ffn_channels,
// drop_layers, recovery, removals: stages/plan/prune_select.hpp); the types are then chosen for
// the pruned tensors (candidates whose block fits the pruned rows; predicted losses scaled by the
// weights kept) and the KV cache of a device budget is the pruned one.
PlanResult plan(const Measurements& m, const std::string& model_dir, const Target& t,
                const recipe::CompressionRecipe* structure = nullptr);

// Terminal summary: bytes and bits per weight per tensor kind and per layer.
std::string summary_text(const PlanResult& p);
// An SVG picture: rows = layers, columns = tensor kinds, colour = type.
std::string summary_svg(const PlanResult& p);

}  // namespace squish::plan
