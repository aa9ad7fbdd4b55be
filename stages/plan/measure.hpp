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
// GPTQ is a tensor's dominant cost (a 7B's ffn_down: ~25 s per type on 2 cores), so by default it
// runs at the anchor types Q2_K, Q3_K and Q6_K only. For Q4_K, Q5_K and Q8_0 the prediction is
// the diagonal rounding proxy above times GPTQ's ratio to it, interpolated in bits per weight
// (geometrically) between the anchors either side: on coder-28m that ratio is flat from Q3_K to
// Q6_K within a few percent per tensor while it differs by up to 1.5x between tensors
// (docs/plan.md has the errors and the plans it gives).
// Computed once and stored as a `squish.measurements/1` JSON document (docs/plan.md); planning
// for a new budget reads it.
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
  std::vector<GGMLType> gptq_estimated;  // types whose GPTQ prediction was estimated from the anchors
  int64_t gptq_rows = 0;   // GPTQ weights measured on this many rows when larger (0 = every row)
  std::string scope;       // why only some types were measured ("" = every candidate)
  std::vector<TensorMeasure> tensors;
  nlohmann::json to_json() const;
  static Measurements from_json(const nlohmann::json& j, const std::string& origin);
  static Measurements load(const std::string& path);
};

// Q2_K, Q3_K, IQ4_XS, Q4_K, IQ4_NL, Q5_K, Q6_K, Q8_0, F16, and every type of a loaded plugin (squish-run --plugin).
std::vector<GGMLType> candidate_types();
// Their names, as a measurements file records them ("types"): a stored file measured with another
// set (a plugin loaded or not) is measured again.
std::vector<std::string> candidate_type_names();

// One weight's candidates, as `measure` takes them. W: rows x n, row-major; in, out: its Fisher
// factors (n and rows values); imatrix: the scale search's column weights (nullptr: none).
// The diagonal rounding proxy over every row:
Candidate rounding_candidate(GGMLType type, const float* W, int64_t rows, int64_t n, const std::vector<float>& in,
                             const float* out, const float* imatrix);
// GPTQ's, with `factor` from the weight's input moments.
Candidate gptq_candidate(GGMLType type, const float* W, int64_t rows, int64_t n, const quant::GptqFactor& factor, const float* out,
                         const float* imatrix);
// The rows measured of a weight of `rows` rows: every row up to `sample` (0: every row), else
// `sample` rows spread evenly, the middle row of each of `sample` equal spans.
std::vector<int64_t> measured_rows(int64_t rows, int64_t sample);
// What a prediction on the rows `picked` is multiplied by to stand for every row: their share of
// the Fisher-weighted energy sum_r out_r sum_j in_j W_rj² (GPTQ's and the proxy's errors are
// close to proportional to it row by row).
double sample_scale(const float* W, int64_t rows, int64_t n, const std::vector<float>& in, const float* out,
                    const std::vector<int64_t>& picked);

// The types GPTQ runs at when not every type is measured, and those estimated from them.
inline constexpr GGMLType kGptqAnchors[] = {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q6_K};
inline constexpr GGMLType kGptqEstimated[] = {GGMLType::IQ4_XS, GGMLType::Q4_K, GGMLType::IQ4_NL, GGMLType::Q5_K, GGMLType::Q8_0};

// Rows a weight GPTQ runs on is measured on by default (0 = every row). Its rows are quantized
// independently given its input's factor (ggml's blocks run along a row), so its loss is a sum
// over rows: GPTQ and the rounding proxy run on an even sample of them, and the predictions are
// scaled by the sample's share of the Fisher-weighted energy (sample_scale), a ratio estimator
// of the relative error, where the rows that matter more weigh more.
inline constexpr int64_t kGptqSampleRows = 256;

struct MeasureOptions {
  int threads = 0;
  std::string method = "rtn";  // "gptq" needs <stats>/moments/
  double gptq_damp = quant::kDefaultDamp;
  bool gptq_every_type = false;  // run GPTQ at every type (else at kGptqAnchors, the rest estimated)
  int64_t gptq_rows = kGptqSampleRows;  // rows a GPTQ weight is measured on (0 = every row)
  std::function<void(uint64_t done, uint64_t total)> progress;  // tensors
  std::vector<GGMLType> only_types;  // measure these candidates only (empty = candidate_types())
  // A file the tensors measured so far are appended to as they finish; a later call with the
  // same inputs measures only the others (an interrupted run resumes). Empty = none. The caller
  // removes it (remove_checkpoint) once the full measurements are stored.
  std::string checkpoint;
  std::function<void(uint64_t stored, uint64_t total)> resumed;  // called when a checkpoint is taken up
};

// The types whose GPTQ prediction `measure` estimates with these options (none for rtn, for
// gptq_every_type, or when no anchor type is among the candidates).
std::vector<GGMLType> gptq_estimated_types(const MeasureOptions& opt);

// Under an MPI launcher (core/runtime/ranks.hpp) the weights are shared out among the ranks by
// layer, each rank keeping its own checkpoint (<checkpoint>.rank<r> beside rank 0's), and every
// rank returns the whole: the same bytes as one process. The model and statistics must be at the
// same paths on every rank.
// Throws Error(InputData) naming the file when the statistics miss a tensor or disagree in size.
Measurements measure(const std::string& model_dir, const std::string& stats_dir, const MeasureOptions& opt = {});

// Removes this rank's checkpoint of `measure` (rank 0: also the other ranks' it can see).
void remove_checkpoint(const std::string& checkpoint);

}  // namespace squish::plan
