#pragma once
// Sensitivity measurements: for every 2-D weight and every candidate type, the bytes it costs and
// what quantizing it at that type is predicted to cost the model's loss, from the score stage's
// diagonal Fisher estimate (fisher.dat):
//   dL(W, t) ~ 1/2 sum_ij E[(n dL/dy_i)^2] E[x_j^2] (W_ij - Q_t(W)_ij)^2
// with Q_t the quantize-dequantize round trip compress would apply (importance-weighted with the
// same imatrix). For method "gptq" Q_t is GPTQ's result, whose errors are correlated so as to
// cancel on the layer's inputs; its prediction takes the full input second moments H = E[x xᵀ]
// (moments/) in place of their diagonal (the Kronecker-factored Fisher, diagonal in the output):
//   dL(W, t) ~ 1/2 sum_i E[(n dL/dy_i)^2] (W - Q_t(W))_i H (W - Q_t(W))_iᵀ
// Computed once (seconds: one quantization per tensor and type) and stored as a
// `squish.measurements/1` JSON document (docs/plan.md); planning for a new budget reads it.
#include "core/quant/ggml_types.hpp"
#include "core/quant/gptq.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace squish::plan {

struct Candidate {
  GGMLType type;
  uint64_t bytes = 0;      // in the file, with the alignment padding
  double predicted = 0;    // predicted loss increase (nats per token)
  double rel_error = 0;    // imatrix-weighted relative squared error sum c e^2 / sum c w^2
};

struct TensorMeasure {
  std::string name;        // GGUF name
  std::vector<int64_t> ne;
  std::vector<Candidate> candidates;  // in kCandidateTypes order, those whose block fits a row
};

struct Measurements {
  std::string model;       // HF folder measured
  std::string stats;       // score output folder (core/io/score_folder.hpp)
  std::string method = "rtn";  // the quantizer measured: "rtn" | "gptq" (recipes planned from it use it)
  double gptq_damp = quant::kDefaultDamp;
  std::string scope;       // why only some types were measured ("" = every candidate)
  std::vector<TensorMeasure> tensors;
  nlohmann::json to_json() const;
  static Measurements from_json(const nlohmann::json& j, const std::string& origin);
  static Measurements load(const std::string& path);
};

// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0, F16, and every type of a loaded plugin (squish-run --plugin).
std::vector<GGMLType> candidate_types();
// Their names, as a measurements file records them ("types"): a stored file measured with another
// set (a plugin loaded or not) is measured again.
std::vector<std::string> candidate_type_names();

struct MeasureOptions {
  int threads = 0;
  std::string method = "rtn";  // "gptq" needs <stats>/moments/
  double gptq_damp = quant::kDefaultDamp;
  std::function<void(uint64_t done, uint64_t total)> progress;  // tensors
  std::vector<GGMLType> only_types;  // measure these candidates only (empty = candidate_types())
  // A file the tensors measured so far are appended to as they finish; a later call with the
  // same inputs starts after them (an interrupted run resumes). Empty = none. The caller
  // removes it once the full measurements are stored.
  std::string checkpoint;
  std::function<void(uint64_t stored, uint64_t total)> resumed;  // called when a checkpoint is taken up
};

// Throws Error(InputData) naming the file when the statistics miss a tensor or disagree in size.
Measurements measure(const std::string& model_dir, const std::string& stats_dir, const MeasureOptions& opt = {});

}  // namespace squish::plan
