// The plan stage: the knapsack allocator against brute force, the planner's budget (whole file,
// never exceeded; infeasible budgets named), determinism, and the measurements predictor.
#include "core/arch/synthetic_checkpoint.hpp"
#include "core/recipe/recipe.hpp"
#include "core/base/error.hpp"
#include "stages/plan/allocate.hpp"
#include "stages/plan/measure.hpp"
#include "stages/plan/planner.hpp"
#include "test_util.hpp"

#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>

using namespace squish;
using namespace squish::plan;

namespace {

// A 2-layer llama with K-quant-sized rows (256 columns), seeded: the same bytes on every run.
void write_test_model(const std::string& dir, int ffn = 512) {
  SyntheticOptions so;
  so.tokenizer_from = test::source_dir() + "/models/stories260K";
  so.seed = 3;
  write_synthetic_checkpoint(dir, {{"model_type", "llama"}, {"hidden_size", 256}, {"intermediate_size", ffn},
                                   {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                   {"vocab_size", 512}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5},
                                   {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}},
                             so);
}

// The test model written to <dir>/model and scored on a short text into <dir>/stats.
void write_and_score_test_model(const std::string& dir, bool moments) {
  write_test_model(dir + "/model");
  auto r = test::squish_run(fmt::format("{}/pipelines/score.yaml --no-progress --set model={}/model --set text={}/models/stories260K/LICENSE "
                                        "--set output={}/stats --set ctx=64 --set moments={}",
                                        test::source_dir(), dir, test::source_dir(), dir, moments));
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

std::vector<nlohmann::json> read_events(const std::string& path) {
  std::vector<nlohmann::json> v;
  std::istringstream in(test::read_file(path));
  for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
  return v;
}

// A measurement with `first` killed after its third tensor (its checkpoint at `checkpoint`
// kept), then one with `second` on the same checkpoint: how many stored tensors the second took
// up, and what it measured.
std::pair<uint64_t, Measurements> killed_then_resumed(const std::string& model, const std::string& stats, const std::string& checkpoint,
                                                      MeasureOptions first, MeasureOptions second) {
  first.checkpoint = second.checkpoint = checkpoint;
  first.progress = [](uint64_t done, uint64_t) {
    if (done == 3) throw std::runtime_error("killed");
  };
  EXPECT_THROW(measure(model, stats, first), std::runtime_error);
  uint64_t resumed_at = 0;
  second.resumed = [&](uint64_t stored, uint64_t) { resumed_at = stored; };
  second.progress = nullptr;
  Measurements m = measure(model, stats, second);
  return {resumed_at, std::move(m)};
}

// Exhaustive optimum: least loss with bytes <= budget (infinity when nothing fits).
double brute_force(const std::vector<std::vector<Option>>& items, uint64_t budget) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<size_t> k(items.size(), 0);
  for (;;) {
    uint64_t b = 0;
    double l = 0;
    for (size_t i = 0; i < items.size(); ++i) b += items[i][k[i]].bytes, l += items[i][k[i]].loss;
    if (b <= budget) best = std::min(best, l);
    size_t i = 0;
    while (i < items.size() && ++k[i] == items[i].size()) k[i++] = 0;
    if (i == items.size()) return best;
  }
}

// Items shaped like tensors x types: more bytes, less loss (with some noise and ties).
std::vector<std::vector<Option>> random_items(std::mt19937& g, int n, int k) {
  std::uniform_int_distribution<int> size(100, 5000);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<std::vector<Option>> items(n);
  for (auto& it : items) {
    uint64_t b = size(g);
    double l = 10 * u(g);
    for (int j = 0; j < k; ++j) {
      it.push_back({b, l});
      b += size(g) / 2;
      l *= 0.3 + 0.6 * u(g);
    }
  }
  return items;
}

}  // namespace

// With a byte-exact grid the DP is the optimum; with a coarse grid it never exceeds the budget
// and is at least as good as the optimum of the budget minus the rounding slack.
TEST(PlanAllocate, MatchesBruteForce) {
  std::mt19937 g(42);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 2 + trial % 5, k = 2 + trial % 4;
    const auto items = random_items(g, n, k);
    uint64_t lo = 0, hi = 0;
    for (const auto& it : items) lo += it.front().bytes, hi += it.back().bytes;
    const uint64_t budget = lo + (hi - lo) * (trial % 10) / 9;
    const double opt = brute_force(items, budget);
    const Allocation exact = allocate(items, budget, static_cast<int>(budget));  // unit = 1 byte
    EXPECT_LE(exact.bytes, budget);
    EXPECT_NEAR(exact.loss, opt, 1e-9 * std::max(1.0, opt)) << "trial " << trial;
    const int grid = 64;
    const Allocation coarse = allocate(items, budget, grid);
    EXPECT_LE(coarse.bytes, budget);
    const uint64_t unit = (budget + grid - 1) / grid, slack = unit * items.size();
    if (budget > slack) {
      EXPECT_LE(coarse.loss, brute_force(items, budget - slack) + 1e-9) << "trial " << trial;
    }
    EXPECT_GE(coarse.loss, opt - 1e-9);
    double recomputed = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < items.size(); ++i) recomputed += items[i][coarse.choice[i]].loss, bytes += items[i][coarse.choice[i]].bytes;
    EXPECT_NEAR(recomputed, coarse.loss, 1e-9);
    EXPECT_EQ(bytes, coarse.bytes);
  }
}

TEST(PlanAllocate, InfeasibleBudgetNamesTheSmallestReachable) {
  const std::vector<std::vector<Option>> items = {{{100, 1}, {200, 0.5}}, {{300, 2}, {50, 3}}};
  try {
    allocate(items, 149);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    EXPECT_NE(std::string(e.what()).find("the smallest reachable is 150 bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(allocate(items, 150).bytes, 150u);
}

// On a synthetic llama (rows that fit every K-quant) scored on a short text: the plan's file
// never exceeds the budget (and compresses to exactly the predicted size), the same inputs give
// the same recipe bytes, a larger budget never predicts a worse loss, and a budget below the
// smallest reachable file is refused.
TEST(Plan, BudgetDeterminismAndInfeasible) {
  test::TempDir tmp;
  const std::string model = tmp / "model";
  ASSERT_NO_FATAL_FAILURE(write_and_score_test_model(tmp.path().string(), false));
  const Measurements m = measure(model, tmp / "stats");
  ASSERT_FALSE(m.tensors.empty());
  for (const auto& t : m.tensors)
    for (size_t i = 1; i < t.candidates.size(); ++i) EXPECT_GE(t.candidates[i].predicted, 0);

  // Measuring again gives the same bytes (parallel sums are added in a fixed order).
  EXPECT_EQ(measure(model, tmp / "stats").to_json().dump(), m.to_json().dump());
  // The stored form reads back to the same measurements; a damaged one is refused.
  EXPECT_EQ(Measurements::from_json(m.to_json(), "x").to_json().dump(), m.to_json().dump());
  auto broken = m.to_json();
  broken["tensors"][0]["candidates"][0]["predicted"] = -1;
  EXPECT_THROW(Measurements::from_json(broken, "x"), Error);

  const auto f16 = recipe::resolve(recipe::CompressionRecipe::from_preset("F16"), model);
  const auto q2 = recipe::resolve(recipe::CompressionRecipe::from_json({{"tensors", {{{"match", "*"}, {"type", "Q2_K"}}}}}, "all Q2_K"), model);
  // Every budget between the smallest and the largest file plans within it (the header, which
  // holds the recipe, changes size with the allocation).
  for (int k = 1; k <= 40; ++k) {
    Target t;
    t.size = q2.file_bytes + static_cast<uint64_t>(k / 40.0 * double(f16.file_bytes - q2.file_bytes));
    const PlanResult p = plan::plan(m, model, t);
    EXPECT_LE(p.file_bytes, t.size) << k;
  }
  double last = std::numeric_limits<double>::infinity();
  for (double frac : {0.02, 0.3, 0.6, 1.0}) {
    Target t;
    t.size = q2.file_bytes + 64 + static_cast<uint64_t>(frac * double(f16.file_bytes - q2.file_bytes));
    const PlanResult p = plan::plan(m, model, t);
    EXPECT_LE(p.file_bytes, t.size);
    EXPECT_LE(p.predicted_loss, last + 1e-12);
    last = p.predicted_loss;
    const PlanResult again = plan::plan(m, model, t);
    EXPECT_EQ(p.recipe.to_json().dump(), again.recipe.to_json().dump());
    const std::string recipe_path = tmp / fmt::format("r{}.json", frac);
    test::write_file(recipe_path, p.recipe.to_json().dump(1));
    // With the stats the plan was measured with: their imatrix weights the rounding (and IQ2_XXS,
    // which a plan may take, needs it).
    const auto r = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set stats={} --set output={}",
                                                test::source_dir(), model, recipe_path, tmp / "stats", tmp / "m.gguf"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(std::filesystem::file_size(tmp / "m.gguf"), p.file_bytes);
  }
  // Too small a budget names the smallest reachable file, and that size plans. (Below all-Q2_K
  // is reachable: IQ2_XXS, 2.06 bits, is a candidate; half of all-Q2_K is not.)
  Target tiny;
  tiny.size = q2.file_bytes / 2;
  try {
    plan::plan(m, model, tiny);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::InputData);
    const std::string msg = e.what();
    const auto at = msg.find("the smallest reachable file is ");
    ASSERT_NE(at, std::string::npos) << msg;
    Target least;
    least.size = std::stoull(msg.substr(at + 31));
    EXPECT_LE(plan::plan(m, model, least).file_bytes, least.size);
    least.size -= 1;
    EXPECT_THROW(plan::plan(m, model, least), Error);
  }
}

// An interrupted measurement resumes: a run stopped after 4 tensors (in the middle of the
// q/k/v that share a GPTQ factor) leaves them in the checkpoint, a torn line after them is
// dropped, and the next run measures only the rest and gives the same bytes as one
// uninterrupted run. Other inputs (another damping) start afresh.
TEST(Plan, InterruptedMeasurementResumes) {
  test::TempDir tmp;
  const std::string model = tmp / "model";
  ASSERT_NO_FATAL_FAILURE(write_and_score_test_model(tmp.path().string(), true));
  MeasureOptions opt;
  opt.method = "gptq";
  const std::string whole = measure(model, tmp / "stats", opt).to_json().dump();

  opt.checkpoint = tmp / "m.partial";
  uint64_t measured = 0, resumed_at = 0;
  opt.resumed = [&](uint64_t stored, uint64_t) { resumed_at = stored; };
  opt.progress = [&](uint64_t done, uint64_t) {
    ++measured;
    if (done == 4) throw std::runtime_error("killed");
  };
  EXPECT_THROW(measure(model, tmp / "stats", opt), std::runtime_error);
  EXPECT_EQ(resumed_at, 0u);
  { std::ofstream(opt.checkpoint, std::ios::app) << "{\"name\": \"blk.0.attn_v.weig"; }  // killed mid-line
  measured = 0;
  opt.progress = [&](uint64_t, uint64_t) { ++measured; };
  const Measurements again = measure(model, tmp / "stats", opt);
  EXPECT_EQ(resumed_at, 4u);
  EXPECT_EQ(measured, again.tensors.size() - 4);
  EXPECT_EQ(again.to_json().dump(), whole);

  // What another rank of an MPI run left beside it (<file>.rank1) is taken up too, and removed
  // with the rest.
  remove_checkpoint(opt.checkpoint);
  EXPECT_FALSE(std::filesystem::exists(opt.checkpoint));
  opt.progress = [&](uint64_t done, uint64_t) {
    if (done == 3) throw std::runtime_error("killed");
  };
  EXPECT_THROW(measure(model, tmp / "stats", opt), std::runtime_error);
  std::filesystem::rename(opt.checkpoint, opt.checkpoint + ".rank1");
  opt.progress = nullptr;
  resumed_at = 0;
  EXPECT_EQ(measure(model, tmp / "stats", opt).to_json().dump(), whole);
  EXPECT_EQ(resumed_at, 3u);
  remove_checkpoint(opt.checkpoint);
  EXPECT_FALSE(std::filesystem::exists(opt.checkpoint + ".rank1"));
  EXPECT_FALSE(std::filesystem::exists(opt.checkpoint));

  // Another damping is another measurement: nothing is taken from the checkpoint.
  resumed_at = 0;
  opt.gptq_damp = 0.02;
  measure(model, tmp / "stats", opt);
  EXPECT_EQ(resumed_at, 0u);
}

// Under mpirun the ranks share the layers out and every rank gets the whole: the measurements and
// the plan are the same bytes as one process's (each rank with one thread, the process with two),
// rank 0 measured only its share, and no checkpoint is left.
TEST(PlanMpi, TwoRanksMeasureWhatOneProcessDoes) {
  SQUISH_REQUIRE_MPIRUN();
  test::TempDir tmp;
  ASSERT_NO_FATAL_FAILURE(write_and_score_test_model(tmp.path().string(), true));
  test::write_file(tmp / "measure.yaml", R"(name: measure-gptq
description: GPTQ measurements and a plan
plugins: [plan]
variables:
  model: {default: ~, help: model}
  stats: {default: ~, help: statistics}
  out: {default: ~, help: output prefix}
  threads: {default: "0", help: threads}
nodes:
  measure:
    kind: plan.measure
    params: {model: "${model}", stats: "${stats}", output: "${out}.json", method: gptq, threads: "${threads}"}
  recipe:
    kind: plan.recipe
    params: {model: "${model}", output: "${out}.recipe.json", bpw: "4"}
edges: ["measure -> recipe"]
)");
  auto args = [&](const std::string& out, int threads) {
    return fmt::format("{} --no-progress --events-file {}.events --set model={} --set stats={} --set out={} --set threads={}", tmp / "measure.yaml",
                       out, tmp / "model", tmp / "stats", out, threads);
  };
  const std::string one = tmp / "one", two = tmp / "two";
  auto r = test::squish_run(args(one, 2));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run(test::mpirun(2, test::binary_dir() + "/bin/squish-run " + args(two, 1)));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_file(two + ".json"), test::read_file(one + ".json"));
  EXPECT_EQ(test::read_file(two + ".recipe.json"), test::read_file(one + ".recipe.json"));
  for (const auto& e : std::filesystem::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().string().find(".partial"), std::string::npos) << e.path();
  const size_t weights = Measurements::load(one + ".json").tensors.size();
  uint64_t rank0_total = 0;
  for (auto& e : read_events(two + ".events"))
    if (e["event"] == "node_progress" && e["node"] == "measure" && e["unit"] == "tensors measured")  // not the runtime's "messages"
      rank0_total = e["total"].get<uint64_t>();
  EXPECT_GT(rank0_total, 0u);
  EXPECT_LT(rank0_total, weights);

  // A rank that sees another model (here: wider FFN, same tensor names) ends the run naming
  // itself, exit 3, and nothing is written.
  write_test_model(tmp / "other", 768);
  const std::string bad = tmp / "bad", run = test::binary_dir() + "/bin/squish-run ";
  std::string rank1 = args(bad, 1);
  rank1.replace(rank1.find("--set model=" + tmp / "model"), ("--set model=" + tmp / "model").size(), "--set model=" + tmp / "other");
  r = test::run(test::mpirun(1, run + args(bad, 1) + " : -np 1 " + run + rank1));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("rank 1 of 2: the model " + tmp / "other"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(bad + ".json"));
  EXPECT_FALSE(std::filesystem::exists(bad + ".json.partial"));
}

// GPTQ at the anchor types only: the anchors' candidates are the every-type measurement's to the
// bit, every other tensor and type the same, and each estimated type is the rounding proxy (the
// rtn measurement) times GPTQ's ratio to it at the anchors either side, interpolated
// geometrically in bits per weight (the formats' block sizes: ggml-common.h). The two are
// different measurements to a resumed run.
TEST(Plan, GptqEstimatesFollowTheAnchors) {
  test::TempDir tmp;
  const std::string model = tmp / "model";
  ASSERT_NO_FATAL_FAILURE(write_and_score_test_model(tmp.path().string(), true));
  MeasureOptions opt;
  opt.method = "gptq";
  opt.gptq_rows = 0;  // every row, as the rtn measurement below (the row sample: the next tests)
  const Measurements anchors = measure(model, tmp / "stats", opt);
  EXPECT_EQ(anchors.gptq_estimated,
            (std::vector<GGMLType>{GGMLType::IQ4_XS, GGMLType::Q4_K, GGMLType::IQ4_NL, GGMLType::Q5_K, GGMLType::Q8_0}));
  EXPECT_EQ(Measurements::from_json(anchors.to_json(), "test").to_json(), anchors.to_json());
  opt.gptq_every_type = true;
  const Measurements every = measure(model, tmp / "stats", opt);
  EXPECT_TRUE(every.gptq_estimated.empty());
  EXPECT_EQ(gptq_estimated_types(opt), every.gptq_estimated);
  opt.method = "rtn";
  const Measurements rtn = measure(model, tmp / "stats", opt);
  const std::map<GGMLType, double> bpw = {{GGMLType::Q2_K, 84 * 8 / 256.0}, {GGMLType::Q3_K, 110 * 8 / 256.0},
                                          {GGMLType::Q4_K, 144 * 8 / 256.0}, {GGMLType::Q5_K, 176 * 8 / 256.0},
                                          {GGMLType::Q6_K, 210 * 8 / 256.0}, {GGMLType::Q8_0, 34 * 8 / 32.0},
                                          {GGMLType::IQ4_XS, 136 * 8 / 256.0}, {GGMLType::IQ4_NL, 18 * 8 / 32.0}};
  ASSERT_EQ(anchors.tensors.size(), every.tensors.size());
  int estimated = 0;
  for (size_t i = 0; i < anchors.tensors.size(); ++i) {
    const auto &a = anchors.tensors[i], &e = every.tensors[i], &r = rtn.tensors[i];
    ASSERT_EQ(a.candidates.size(), e.candidates.size()) << a.name;
    auto at = [](const TensorMeasure& tm, GGMLType t) {
      for (const auto& c : tm.candidates)
        if (c.type == t) return c;
      ADD_FAILURE() << tm.name << " has no " << ggml_type_name(t);
      return Candidate{};
    };
    // GPTQ's ratio to the proxy where it ran: a tensor without GPTQ (the embedding) has ratio 1.
    auto ratio = [&](GGMLType t) { return at(e, t).predicted / at(r, t).predicted; };
    for (const auto& c : a.candidates) {
      const bool est = bpw.count(c.type) && c.type != GGMLType::Q2_K && c.type != GGMLType::Q3_K && c.type != GGMLType::Q6_K;
      if (!est || ratio(GGMLType::Q3_K) == 1.0) {
        EXPECT_EQ(c.predicted, at(e, c.type).predicted) << a.name << " " << ggml_type_name(c.type);
        continue;
      }
      const GGMLType lo = c.type == GGMLType::Q8_0 ? GGMLType::Q6_K : GGMLType::Q3_K;
      const GGMLType hi = GGMLType::Q6_K;
      const double f = lo == hi ? 0.0 : (bpw.at(c.type) - bpw.at(lo)) / (bpw.at(hi) - bpw.at(lo));
      const double want = at(r, c.type).predicted * std::pow(ratio(lo), 1 - f) * std::pow(ratio(hi), f);
      EXPECT_NEAR(c.predicted, want, 1e-12 * want) << a.name << " " << ggml_type_name(c.type);  // a few roundings apart
      ++estimated;
    }
  }
  EXPECT_EQ(estimated, 5 * 15);  // 5 estimated types x (2 layers x 7 weights and the output with moments)

  // A checkpoint of one is not taken up by the other.
  opt.method = "gptq";
  MeasureOptions every_type = opt;
  opt.gptq_every_type = false;
  const auto [resumed_at, again] = killed_then_resumed(model, tmp / "stats", tmp / "m.partial", opt, every_type);
  EXPECT_EQ(again.to_json(), every.to_json());
  EXPECT_EQ(resumed_at, 0u);
}

// A weight measured on a sample of its rows (measured_rows, sample_scale): when every row is
// alike, the rows' errors are alike, and the sample's predictions times the sample's share of
// the Fisher-weighted energy are the whole weight's, however unevenly the output weights `out`
// spread over the rows (the sample's plain sum scaled by the row count would not be): for the
// rounding proxy and for GPTQ.
TEST(Plan, RowSampleScaledByItsShareOfTheEnergy) {
  const int64_t rows = 300, n = 256, tokens = 1024;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.05f, 3.0f);
  std::vector<float> row(n), w(size_t(rows * n)), x(size_t(tokens * n)), h(size_t(n * n), 0.0f), in(n), out(rows);
  for (auto& v : row) v = normal(rng);
  for (int64_t r = 0; r < rows; ++r) std::copy(row.begin(), row.end(), w.begin() + r * n);
  for (int64_t t = 0; t < tokens; ++t) {  // correlated inputs: x_j = z_j + z_{j-1}
    float prev = normal(rng);
    for (int64_t j = 0; j < n; ++j) {
      const float z = normal(rng);
      x[size_t(t * n + j)] = z + prev, prev = z;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t t = 0; t < tokens; ++t) sum += double(x[size_t(t * n + i)]) * x[size_t(t * n + j)];
      h[size_t(i * n + j)] = float(sum / tokens);
    }
  for (int64_t j = 0; j < n; ++j) in[size_t(j)] = h[size_t(j * n + j)];
  for (auto& v : out) v = uniform(rng);

  const std::vector<int64_t> picked = measured_rows(rows, 37);
  ASSERT_EQ(picked.size(), 37u);
  EXPECT_EQ(picked.front(), 4);    // the middle of the first of 37 spans of 300/37 rows
  EXPECT_EQ(picked.back(), 295);
  EXPECT_TRUE(std::is_sorted(picked.begin(), picked.end()));
  EXPECT_EQ(measured_rows(rows, 0).size(), size_t(rows));
  EXPECT_EQ(measured_rows(rows, rows + 1).size(), size_t(rows));
  std::vector<float> ws, outs;
  for (int64_t r : picked) ws.insert(ws.end(), row.begin(), row.end()), outs.push_back(out[size_t(r)]);
  const double scale = sample_scale(w.data(), rows, n, in, out.data(), picked);
  double out_all = 0, out_some = 0;
  for (float v : out) out_all += v;
  for (float v : outs) out_some += v;
  EXPECT_NEAR(scale, out_all / out_some, 1e-12 * scale);  // equal rows: the share of the output weights

  const quant::GptqFactor factor = quant::gptq_factor(h.data(), n);
  const int64_t m = int64_t(picked.size());
  // Equal rows give equal errors up to the float rounding of GPTQ's updates (n of them per
  // weight, 2^-24 each, relative).
  const double tol = double(n) * 0x1p-24;
  for (GGMLType t : {GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q6_K}) {
    SCOPED_TRACE(ggml_type_name(t));
    const Candidate proxy = rounding_candidate(t, w.data(), rows, n, in, out.data(), nullptr);
    const Candidate proxy_s = rounding_candidate(t, ws.data(), m, n, in, outs.data(), nullptr);
    EXPECT_NEAR(proxy_s.predicted * scale, proxy.predicted, tol * proxy.predicted);
    EXPECT_NEAR(proxy_s.rel_error, proxy.rel_error, tol * proxy.rel_error);
    const Candidate whole = gptq_candidate(t, w.data(), rows, n, factor, out.data(), nullptr);
    const Candidate some = gptq_candidate(t, ws.data(), m, n, factor, outs.data(), nullptr);
    EXPECT_GT(whole.predicted, 0);
    EXPECT_LT(whole.predicted, proxy.predicted);  // GPTQ's point
    EXPECT_NEAR(some.predicted * scale, whole.predicted, tol * whole.predicted);
    EXPECT_NEAR(some.rel_error, whole.rel_error, tol * whole.rel_error);
    // The plain row-count scaling misses the uneven output weights.
    EXPECT_GT(std::abs(some.predicted * double(rows) / double(m) - whole.predicted), 100 * tol * whole.predicted);
  }
}

// measure() with a row sample: weights of at most gptq_rows rows are measured to the bit as
// without it, larger ones differ, the measurements record the sample (and read back with it),
// and a checkpoint taken without the sample is not taken up with it.
TEST(Plan, GptqRowSampleInMeasurements) {
  test::TempDir tmp;
  const std::string model = tmp / "model";
  ASSERT_NO_FATAL_FAILURE(write_and_score_test_model(tmp.path().string(), true));
  MeasureOptions opt;
  opt.method = "gptq";
  opt.gptq_rows = 0;
  const Measurements whole = measure(model, tmp / "stats", opt);
  opt.gptq_rows = 200;  // q, o, down (256 rows), gate, up and output (512) sampled; k, v (128) not
  const Measurements sampled = measure(model, tmp / "stats", opt);
  EXPECT_EQ(whole.gptq_rows, 0);
  EXPECT_EQ(sampled.gptq_rows, 200);
  EXPECT_EQ(Measurements::from_json(sampled.to_json(), "test").to_json(), sampled.to_json());
  EXPECT_NE(sampled.to_json()["predictor"].get<std::string>().find("200 rows"), std::string::npos);
  ASSERT_EQ(whole.tensors.size(), sampled.tensors.size());
  int same = 0, differ = 0;
  for (size_t i = 0; i < whole.tensors.size(); ++i) {
    const auto &a = whole.tensors[i], &b = sampled.tensors[i];
    const bool small = a.ne[1] <= 200 || a.name == "token_embd.weight";  // the embedding has no GPTQ
    ASSERT_EQ(a.candidates.size(), b.candidates.size());
    bool all_equal = true;
    for (size_t c = 0; c < a.candidates.size(); ++c) {
      all_equal &= a.candidates[c].predicted == b.candidates[c].predicted;
      EXPECT_EQ(a.candidates[c].bytes, b.candidates[c].bytes);
    }
    if (small) {
      EXPECT_TRUE(all_equal) << a.name;
      ++same;
    } else {
      EXPECT_FALSE(all_equal) << a.name;
      ++differ;
    }
  }
  EXPECT_EQ(same, 1 + 2 * 2);      // the embedding; k and v of 2 layers
  EXPECT_EQ(differ, 1 + 2 * 5);    // the output; q, o, gate, up, down of 2 layers

  MeasureOptions every_row = opt;
  every_row.gptq_rows = 0;
  const auto [resumed_at, again] = killed_then_resumed(model, tmp / "stats", tmp / "m.partial", every_row, opt);
  EXPECT_EQ(again.to_json(), sampled.to_json());
  EXPECT_EQ(resumed_at, 0u);
}

// Device budgets keep the engine's F16 KV cache of the context free.
TEST(Plan, DeviceBudgetCountsTheKvCache) {
  const auto base = recipe::resolve(recipe::CompressionRecipe::from_preset("F32"), test::source_dir() + "/models/stories260K");
  std::string why;
  Target t;
  t.device = "macbook-air-16gb";
  t.ctx = 1000;
  // stories260K: 5 layers x 4 KV heads x head_dim 8, K and V in f16, 1000 positions padded to the
  // engine's 1008 (blocks of 16).
  EXPECT_EQ(budget_bytes(t, base, &why), uint64_t(11e9) - 2ull * 5 * 4 * 8 * 1008 * 2);
  EXPECT_EQ(2ull * 5 * 4 * 8 * 1008 * 2, base.output_arch.kv_cache_bytes(1000, 2));
  EXPECT_NE(why.find("KV cache"), std::string::npos);
  t.device = "toaster";
  try {
    budget_bytes(t, base, &why);
    FAIL() << "accepted an unknown device";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Usage);
    for (const auto& d : device_presets()) EXPECT_NE(std::string(e.what()).find(d.name), std::string::npos) << e.what();
  }
  // Every preset is a budget.
  for (const auto& d : device_presets()) {
    t.device = d.name;
    EXPECT_EQ(budget_bytes(t, base, &why), uint64_t(d.usable_gb * 1e9) - base.output_arch.kv_cache_bytes(1000, 2)) << d.name;
  }
  Target both;
  both.size = 1000;
  both.bpw = 3;
  EXPECT_THROW(budget_bytes(both, base, &why), Error);
}

// pipelines/squish.yaml: score -> plan -> compress -> verify as one graph, in four waves. The
// file is within the budget, verified, the same bytes on a second run (which reuses the stored
// scores and measurements), and the same bytes as the stages run one by one from its artifacts.
// An infeasible budget fails naming the smallest file, and writes none.
TEST(SquishPipeline, OneGraphFromTextToVerifiedFile) {
  test::TempDir tmp;
  const std::string model = tmp / "model";
  write_test_model(model);
  const auto q2 = recipe::resolve(recipe::CompressionRecipe::from_json({{"tensors", {{{"match", "*"}, {"type", "Q2_K"}}}}}, "all Q2_K"), model);
  const auto q8 = recipe::resolve(recipe::CompressionRecipe::from_preset("Q8_0"), model);
  const uint64_t size = (q2.file_bytes + q8.file_bytes) / 2;
  const std::string text = test::source_dir() + "/models/stories260K/LICENSE";
  auto run = [&](const std::string& out, uint64_t budget, const std::string& artifacts) {
    return test::squish_run(fmt::format("{}/pipelines/squish.yaml --no-progress --events-file {}.events --set model={} --set text={} "
                                        "--set calib_ctx=64 --set size={} --set output={} --set artifacts={}",
                                        test::source_dir(), out, model, text, budget, out, artifacts));
  };
  const std::string a = tmp / "a.gguf";
  auto r = run(a, size, a + ".squish");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LE(std::filesystem::file_size(a), size);
  for (const char* f : {"scores.json", "imatrix.dat", "fisher.dat", "moments/index.json", "measurements.json", "recipe.json", "recipe.svg", "verify.json"})
    EXPECT_TRUE(std::filesystem::exists(a + ".squish/" + f)) << f;
  EXPECT_FALSE(std::filesystem::exists(a + ".squish/measurements.json.partial"));  // the checkpoint goes once the whole is stored
  EXPECT_TRUE(nlohmann::json::parse(test::read_file(a + ".squish/verify.json"))["ok"].get<bool>());
  std::vector<nlohmann::json> waves;
  for (auto& e : read_events(a + ".events"))
    if (e["event"] == "wave_finish") waves.push_back(e["nodes"]);
  EXPECT_EQ(waves, (std::vector<nlohmann::json>{{"score"}, {"measure", "plan"}, {"read", "prune", "quantize", "write"}, {"verify"}}));

  // Again, into the same artifacts: stored scores, the same file.
  const std::string again = tmp / "again.gguf";
  r = run(again, size, a + ".squish");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_file(again), test::read_file(a));
  bool stored = false;
  for (auto& e : read_events(again + ".events"))
    stored |= e["event"] == "node_progress" && e["node"] == "score" && e["unit"] == "tokens (stored scores)";
  EXPECT_TRUE(stored);

  // The stages one by one from the artifacts: the same file.
  const std::string split = tmp / "split.gguf";
  EXPECT_EQ(nlohmann::json::parse(test::read_file(a + ".squish/recipe.json"))["method"], "gptq");
  r = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={}.squish/recipe.json "
                                   "--set stats={}.squish --set output={}",
                                   test::source_dir(), model, a, a, split));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_file(split), test::read_file(a));

  // A budget that holds every weight at F16 measures F16 only and stores no measurements; its
  // recipe is the one the full measurements plan for that budget.
  const uint64_t roomy = recipe::resolve(recipe::CompressionRecipe::from_preset("F16"), model).file_bytes + 16384;
  const std::string f16 = tmp / "f16.gguf";
  r = run(f16, roomy, f16 + ".squish");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("F16 measured only"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(f16 + ".squish/measurements.json"));
  r = test::squish_run(fmt::format("{}/pipelines/plan.yaml --no-progress --set model={} --set stats={}.squish --set size={} --set output={}",
                                   test::source_dir(), model, a, roomy, tmp / "full.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto shortcut = nlohmann::json::parse(test::read_file(f16 + ".squish/recipe.json"))["tensors"];
  const auto full = nlohmann::json::parse(test::read_file(tmp / "full.json"))["tensors"];
  ASSERT_EQ(shortcut.size(), full.size());
  for (size_t i = 0; i < full.size(); ++i) {  // the same types and predictions; the reason says why
    EXPECT_EQ(shortcut[i]["match"], full[i]["match"]);
    EXPECT_EQ(shortcut[i]["type"], full[i]["type"]);
    const std::string why = shortcut[i]["reason"], prediction = full[i]["reason"].get<std::string>().substr(0, why.find(" (F16 only"));
    EXPECT_EQ(why.substr(0, why.find(" (F16 only")), prediction.substr(0, prediction.find(" vs "))) << why;
    EXPECT_NE(why.find("the budget holds every weight at F16"), std::string::npos) << why;
  }

  // Just above the F16 preset's size, the plan's own header does not fit beside all-F16
  // weights: everything is measured and stored, and the plan takes a smaller type somewhere.
  const std::string tight = tmp / "tight.gguf";
  r = run(tight, roomy - 16384 + 100, f16 + ".squish");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("F16 measured only"), std::string::npos) << r.err;
  EXPECT_TRUE(std::filesystem::exists(f16 + ".squish/measurements.json"));

  // Infeasible: exit 3 naming the smallest file; no output, no temporary file left.
  const std::string none = tmp / "none.gguf";
  r = run(none, q2.file_bytes / 2, a + ".squish");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("the smallest reachable file is"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(none));
  for (const auto& e : std::filesystem::recursive_directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}
