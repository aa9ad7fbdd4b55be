// Structured pruning: the recovery math against sampled data, the pruned model against a
// masked dense one, recovery on a real model's statistics, and deterministic selection.
#include "core/gguf/gguf.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/io/safetensors.hpp"
#include "core/model/engine.hpp"
#include "core/model/transformer.hpp"
#include "core/prune/recovery.hpp"
#include "core/base/error.hpp"
#include "core/recipe/recipe.hpp"
#include "core/io/text_file.hpp"
#include "stages/plan/prune_select.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

using namespace squish;
namespace fs = std::filesystem;

namespace {

// Samples x = A z + m with correlated, non-centred features; their exact moments.
struct Sampled {
  int n, T;
  std::vector<double> x;  // T x n
  prune::InputStats stats;
};

Sampled sample(int n, int T, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> N(0, 1);
  std::vector<double> A(size_t(n) * n), m(static_cast<size_t>(n));
  for (auto& v : A) v = N(rng) * 0.4;
  for (int i = 0; i < n; ++i) A[size_t(i) * n + i] += 1.0, m[size_t(i)] = 0.7 * N(rng);
  Sampled s{n, T, std::vector<double>(size_t(T) * n), {}};
  for (int t = 0; t < T; ++t) {
    std::vector<double> z(static_cast<size_t>(n));
    for (auto& v : z) v = N(rng);
    for (int i = 0; i < n; ++i) {
      double v = m[size_t(i)];
      for (int j = 0; j < n; ++j) v += A[size_t(i) * n + j] * z[size_t(j)];
      s.x[size_t(t) * n + i] = v;
    }
  }
  s.stats.n = n;
  std::vector<double> h(size_t(n) * n, 0.0), mu(size_t(n), 0.0);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < n; ++i) {
      mu[size_t(i)] += s.x[size_t(t) * n + i] / T;
      for (int j = 0; j < n; ++j) h[size_t(i) * n + j] += s.x[size_t(t) * n + i] * s.x[size_t(t) * n + j] / T;
    }
  s.stats.h.assign(h.begin(), h.end());
  s.stats.mean.assign(mu.begin(), mu.end());
  return s;
}

std::vector<float> random_weights(int64_t rows, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> N(0, 1);
  std::vector<float> w(size_t(rows) * n);
  for (auto& v : w) v = N(rng);
  return w;
}

// The per-row mean squared error of the repaired projection over the samples themselves.
std::vector<double> empirical_error(const Sampled& s, const std::vector<float>& w, int64_t rows, const std::vector<int64_t>& keep,
                                    const prune::Repair& r) {
  std::vector<double> e(static_cast<size_t>(rows), 0.0);
  for (int t = 0; t < s.T; ++t) {
    const double* x = s.x.data() + size_t(t) * s.n;
    for (int64_t i = 0; i < rows; ++i) {
      double y = 0, yp = r.bias[size_t(i)];
      for (int j = 0; j < s.n; ++j) y += double(w[size_t(i) * s.n + j]) * x[j];
      for (size_t c = 0; c < keep.size(); ++c) yp += double(r.weight[size_t(i) * keep.size() + c]) * x[keep[c]];
      e[size_t(i)] += (y - yp) * (y - yp) / s.T;
    }
  }
  return e;
}

double sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }

}  // namespace

TEST(Recovery, RefitBeatsBiasBeatsNoneAndTheErrorFormulaMatchesTheSamples) {
  const int n = 24, rows = 10;
  const Sampled s = sample(n, 3000, 7);
  const auto w = random_weights(rows, n, 11);
  std::vector<int64_t> keep;
  for (int j = 0; j < n; ++j)
    if (j != 3 && j != 4 && j != 5 && j != 10 && j != 17) keep.push_back(j);
  std::map<prune::Recovery, std::vector<double>> err;
  for (auto mode : {prune::Recovery::None, prune::Recovery::Bias, prune::Recovery::Refit}) {
    SCOPED_TRACE(prune::recovery_name(mode));
    const auto r = prune::repair(w.data(), rows, n, keep, s.stats, mode, 1e-9);
    err[mode] = prune::reconstruction_error(w.data(), rows, n, keep, r, s.stats);
    const auto emp = empirical_error(s, w, rows, keep, r);
    for (int i = 0; i < rows; ++i) EXPECT_NEAR(err[mode][size_t(i)], emp[size_t(i)], 1e-3 * emp[size_t(i)] + 1e-6) << "row " << i;
  }
  for (int i = 0; i < rows; ++i) {
    // Refit is the least-squares optimum over every W' and b; bias compensation is one of them.
    EXPECT_LE(err[prune::Recovery::Refit][size_t(i)], err[prune::Recovery::Bias][size_t(i)] * (1 + 1e-6)) << "row " << i;
    // Bias compensation removes the mean's part of the error: E|w(x-μ)|² <= E|w x|².
    EXPECT_LE(err[prune::Recovery::Bias][size_t(i)], err[prune::Recovery::None][size_t(i)] * (1 + 1e-6)) << "row " << i;
  }
  EXPECT_LT(sum(err[prune::Recovery::Refit]), 0.5 * sum(err[prune::Recovery::Bias]));
  EXPECT_LT(sum(err[prune::Recovery::Bias]), sum(err[prune::Recovery::None]));
}

TEST(Recovery, NothingRemovedChangesNothing) {
  const int n = 12, rows = 5;
  const Sampled s = sample(n, 500, 3);
  const auto w = random_weights(rows, n, 5);
  std::vector<int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  for (auto mode : {prune::Recovery::None, prune::Recovery::Bias, prune::Recovery::Refit}) {
    const auto r = prune::repair(w.data(), rows, n, all, s.stats, mode, 0.01);
    EXPECT_EQ(r.weight, w);
    EXPECT_EQ(r.bias, std::vector<float>(rows, 0.0f));
  }
}

// The selection's predicted cost of a removal is the loss-weighted error of the repair compress
// will do (Optimal Brain Surgeon's group formula for the refit).
TEST(Recovery, RemovalCostIsTheWeightedErrorOfTheRepair) {
  const int n = 20, rows = 8;
  const Sampled s = sample(n, 2000, 21);
  const auto w = random_weights(rows, n, 23);
  std::vector<float> g(rows);
  for (int i = 0; i < rows; ++i) g[size_t(i)] = 0.5f + 0.25f * i;
  const std::vector<int64_t> removed = {2, 3, 9, 15};
  std::vector<int64_t> keep;
  for (int j = 0; j < n; ++j)
    if (std::find(removed.begin(), removed.end(), j) == removed.end()) keep.push_back(j);
  for (auto mode : {prune::Recovery::None, prune::Recovery::Bias, prune::Recovery::Refit}) {
    SCOPED_TRACE(prune::recovery_name(mode));
    const double damp = 1e-9;
    const prune::RemovalCost cost(w.data(), rows, n, s.stats, g, mode, damp);
    const auto err = prune::reconstruction_error(w.data(), rows, n, keep, prune::repair(w.data(), rows, n, keep, s.stats, mode, damp), s.stats);
    double want = 0;
    for (int i = 0; i < rows; ++i) want += 0.5 * g[size_t(i)] * err[size_t(i)];
    EXPECT_NEAR(cost(removed), want, 1e-4 * want);
    EXPECT_NEAR(cost.single(9), cost(std::vector<int64_t>{9}), 1e-6 * cost.single(9));
  }
}

namespace {

// Score stats of the bundled stories260K (its calibration text), once per test binary.
const std::string& stories_stats() {
  static test::TempDir dir;
  static std::string path;
  if (path.empty()) {
    const std::string model = test::source_dir() + "/models/stories260K";
    auto r = test::squish_run(fmt::format("{}/pipelines/score.yaml --no-progress --set model={} --set text={}/calibration.txt --set output={} "
                                          "--set ctx=128 --set moments=true",
                                          test::source_dir(), model, model, dir / "stats"));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    path = dir / "stats";
  }
  return path;
}

std::string stories() { return test::source_dir() + "/models/stories260K"; }

}  // namespace

// A pruned file (no recovery) computes exactly what the dense float model computes with the
// removed KV groups and FFN channels masked to zero.
TEST(Pruning, PrunedModelEqualsTheMaskedDenseModel) {
  test::TempDir tmp;
  nlohmann::json rec{{"preset", "F32"},
                     {"attention", {{"1", {{"kv_groups", {0, 2, 3}}}}, {"3", {{"kv_groups", {1}}}}}},
                     {"ffn_channels", nlohmann::json::object()}};
  std::vector<int> ch;
  for (int c = 0; c < 172; ++c)
    if (c % 3 != 1) ch.push_back(c);
  rec["ffn_channels"]["2"] = ch;
  test::write_file(tmp / "r.json", rec.dump());
  auto r = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set output={}", test::source_dir(),
                                        stories(), tmp / "r.json", tmp / "p.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;

  auto dense = SafetensorsWeights::open(stories());
  Transformer ref(dense);
  MaskSet masks = MaskSet::ones(dense->arch());
  masks.kv[1][1] = 0;
  for (int g : {0, 2, 3}) masks.kv[3][size_t(g)] = 0;
  for (int c = 0; c < 172; ++c)
    if (c % 3 == 1) masks.ffn[2][size_t(c)] = 0;
  std::vector<int32_t> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back((i * 37 + 5) % 512);
  const auto want = ref.logits(tokens, &masks);
  const auto unmasked = ref.logits(tokens);

  auto model = infer::Model::load(tmp / "p.gguf");
  infer::Session session(model, 64, 1, infer::KVType::F32);  // compared with float math
  std::vector<float> got;
  session.eval(tokens, 0, got);
  ASSERT_EQ(got.size(), want.size());
  double max_diff = 0, masking_effect = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(got[i] - want[i])));
    masking_effect = std::max(masking_effect, double(std::fabs(unmasked[i] - want[i])));
  }
  // Summation order only (F32 cache, F32 weights): logits within 1e-4 of their magnitude, as the
  // unpruned comparisons in model_families_test; measured at most 1% of that on every kernel.
  double scale = 0;
  for (float x : want) scale = std::max(scale, double(std::fabs(x)));
  EXPECT_LT(max_diff, 1e-4 * scale);
  EXPECT_GT(masking_effect, 50 * max_diff);  // the comparison can tell pruned from unpruned
}

// On the statistics the score stage collects from a real model, every repaired projection
// reconstructs its unpruned output better than the bare slice does.
TEST(Pruning, RecoveryLowersEachLayersCalibrationError) {
  const std::string stats = stories_stats();
  const auto moments = Moments::open(stats);
  ASSERT_TRUE(moments);
  const Imatrix fisher = read_imatrix(stats + "/fisher.dat");
  const auto st = SafetensorsModel::open(stories());
  for (int l = 0; l < 5; ++l)
    for (const auto& [hf, gg, keep_every] : {std::tuple<std::string, std::string, int>{"self_attn.o_proj.weight", "attn_output.weight", 4},
                                            {"mlp.down_proj.weight", "ffn_down.weight", 5}}) {
      SCOPED_TRACE(fmt::format("layer {} {}", l, gg));
      const std::string key = fmt::format("blk.{}.{}", l, gg);
      const auto t = st.load(fmt::format("model.layers.{}.{}", l, hf));
      const auto w = t.to_f32();
      const int64_t rows = t.shape[0];
      const int n = static_cast<int>(t.shape[1]);
      prune::InputStats s;
      s.n = n;
      s.h = moments->load(key);
      s.mean = fisher.at(key + ":mean");
      std::vector<int64_t> keep;  // o_proj: drop KV group 1 (q heads 2, 3); down: every 5th channel
      for (int j = 0; j < n; ++j)
        if (keep_every == 4 ? (j / 8 != 2 && j / 8 != 3) : j % 5 != 0) keep.push_back(j);
      std::map<prune::Recovery, double> e;
      for (auto mode : {prune::Recovery::None, prune::Recovery::Bias, prune::Recovery::Refit})
        e[mode] = sum(prune::reconstruction_error(w.data(), rows, n, keep, prune::repair(w.data(), rows, n, keep, s, mode, 0.01), s));
      EXPECT_LT(e[prune::Recovery::Bias], e[prune::Recovery::None]);
      EXPECT_LT(e[prune::Recovery::Refit], e[prune::Recovery::Bias]);
    }
}

TEST(Pruning, SelectionIsDeterministicAndKeepsEveryLayerAlive) {
  const std::string stats = stories_stats();
  for (const char* by : {"predicted", "taylor"}) {
    SCOPED_TRACE(by);
    plan::PruneTarget t;
    t.kv = 0.5;  // 10 of 20 groups
    t.recovery = "refit";
    t.by = by;
    if (std::string(by) == "predicted") t.ffn = 0.2, t.ffn_align = 4;
    auto a = recipe::CompressionRecipe::from_preset("F32"), b = a;
    plan::select_pruning(stories(), stats, t, a);
    plan::select_pruning(stories(), stats, t, b);
    EXPECT_EQ(a.to_json().dump(), b.to_json().dump());
    int removed = 0;
    for (int l = 0; l < 5; ++l) {
      auto it = a.attention.find(l);
      const int kept = it == a.attention.end() ? 4 : static_cast<int>(it->second.kv_groups.size());
      EXPECT_GE(kept, 1);
      removed += 4 - kept;
    }
    EXPECT_EQ(removed, 10);
    int kv_records = 0;
    for (const auto& x : a.removals) {
      EXPECT_FALSE(x.value("reason", "").empty());
      EXPECT_TRUE(x.contains("score"));
      kv_records += x.value("kind", "") == "kv_group";
    }
    EXPECT_EQ(kv_records, 10);
    if (t.ffn > 0) {
      int ffn_removed = 0;
      for (const auto& [l, ch] : a.ffn_channels) {
        EXPECT_EQ((172 - ch.size()) % 4, 0u);
        ffn_removed += 172 - static_cast<int>(ch.size());
      }
      EXPECT_EQ(ffn_removed, 43 * 4);  // round(0.2 * 5 * 172 / 4) = 43 blocks of 4
    }
    // The recipe resolves: compress accepts what selection chose.
    EXPECT_NO_THROW(recipe::resolve(a, stories()));
  }
}

// q heads within groups: the same number kept in every kept group, at least one, and what the
// recipe keeps resolves to those widths.
TEST(Pruning, QHeadSelectionKeepsEqualHeadsPerGroup) {
  const std::string stats = stories_stats();
  plan::PruneTarget t;
  t.kv = 0.25;
  t.q = 0.5;  // 20 of 40 q heads, the 10 heads of the 5 removed groups among them
  t.recovery = "refit";
  auto r = recipe::CompressionRecipe::from_preset("F32");
  plan::select_pruning(stories(), stats, t, r);
  int kept_heads = 0;
  for (int l = 0; l < 5; ++l) {
    SCOPED_TRACE(l);
    auto it = r.attention.find(l);
    if (it == r.attention.end()) {  // a layer selection left whole
      kept_heads += 8;
      continue;
    }
    std::map<int, int> per_group;
    for (int h : it->second.q_heads) per_group[h / 2]++;
    EXPECT_EQ(per_group.size(), it->second.kv_groups.size());
    for (const auto& [g, n] : per_group) EXPECT_EQ(n, per_group.begin()->second);
    kept_heads += static_cast<int>(it->second.q_heads.size());
  }
  EXPECT_LE(std::abs((40 - kept_heads) - 20), 2);
  const auto plan = recipe::resolve(r, stories());
  int planned = 0;
  for (const auto& l : plan.layers) planned += l.n_head;
  EXPECT_EQ(planned, kept_heads);
}

// End to end: squish.yaml prunes, repairs and writes biases; the repaired file scores the
// calibration text better than the unrepaired one.
TEST(Pruning, MainJobRecoveryBeatsNoRecoveryOnTheCalibrationText) {
  test::TempDir tmp;
  std::map<std::string, double> ppl;
  for (const char* rec : {"none", "refit"}) {
    SCOPED_TRACE(rec);
    const std::string out = tmp / (std::string(rec) + ".gguf");
    auto r = test::squish_run(fmt::format("{}/pipelines/squish.yaml --no-progress --set model={} --set text={}/calibration.txt --set calib_ctx=128 "
                                          "--set bpw=32 --set prune_kv=0.25 --set prune_ffn=0.1 --set recovery={} --set output={} --set artifacts={}",
                                          test::source_dir(), stories(), stories(), rec, out, tmp / "stats"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto g = gguf::Reader::open(out);
    EXPECT_EQ(g.find("blk.0.attn_output.bias") != nullptr, std::string(rec) == "refit");
    r = test::squish_run(fmt::format("{}/pipelines/perplexity.yaml --no-progress --set model={} --set text={}/calibration.txt --set ctx=128 "
                                     "--set report={}",
                                     test::source_dir(), out, stories(), tmp / (std::string(rec) + ".json")));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ppl[rec] = read_json_file(tmp / (std::string(rec) + ".json"), "report").at("ppl").get<double>();
  }
  EXPECT_LT(ppl["refit"], ppl["none"]);
}

// The plan may choose the pruning itself: every structure on its ladder is planned for the same
// memory budget (pruned KV caches leave more for the weights) and the least predicted total wins.
TEST(Pruning, PruneSearchPicksTheLeastPredictedTotal) {
  test::TempDir tmp;
  const std::string out = tmp / "s.gguf";
  auto r = test::squish_run(fmt::format("{}/pipelines/squish.yaml --no-progress --set model={} --set text={}/calibration.txt --set calib_ctx=128 "
                                        "--set memory=0.0012 --set ctx=512 --set prune_search=true --set output={} --set artifacts={}",
                                        test::source_dir(), stories(), stories(), out, tmp / "stats"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto tried = read_json_file(tmp / "stats/recipe.prune_search.json", "search");
  ASSERT_EQ(tried.size(), 20u);
  double best = 1e300, best_kv = -1, best_ffn = -1;
  for (const auto& x : tried)
    if (x.contains("total") && x["total"].get<double>() < best)
      best = x["total"].get<double>(), best_kv = x["prune_kv"].get<double>(), best_ffn = x["prune_ffn"].get<double>();
  ASSERT_GT(best_kv, -1);
  const auto rec = read_json_file(tmp / "stats/recipe.json", "recipe");
  const auto pr = rec.at("source").value("pruning", nlohmann::json::object());  // absent: nothing pruned
  EXPECT_EQ(pr.value("prune_kv", 0.0), best_kv);
  EXPECT_EQ(pr.value("prune_ffn", 0.0), best_ffn);
  EXPECT_LE(std::filesystem::file_size(out), 1200000u);
}

// Bad requests fail before anything is written, with one line naming the problem.
TEST(Pruning, BadTargetsAndMissingStatisticsAreRefused) {
  const std::string stats = stories_stats();
  auto r = recipe::CompressionRecipe::from_preset("F32");
  plan::PruneTarget t;
  t.kv = 0.9;  // more than every layer can lose while keeping one group
  try {
    plan::select_pruning(stories(), stats, t, r);
    FAIL() << "accepted prune_kv 0.9";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Usage);
    EXPECT_NE(std::string(e.what()).find("every layer keeps one"), std::string::npos) << e.what();
  }
  t.kv = 0.25;
  t.recovery = "magic";
  EXPECT_THROW(plan::select_pruning(stories(), stats, t, r), Error);

  test::TempDir tmp;
  nlohmann::json rec{{"preset", "F32"}, {"attention", {{"1", {{"kv_groups", {0, 2, 3}}}}}}, {"recovery", "refit"}};
  test::write_file(tmp / "r.json", rec.dump());
  // A recipe that repairs needs the score stage's statistics: refused, and no file is left.
  auto run = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set output={}",
                                          test::source_dir(), stories(), tmp / "r.json", tmp / "o.gguf"));
  EXPECT_EQ(run.exit_code, static_cast<int>(ExitCode::Usage)) << run.err;
  EXPECT_NE(run.err.find("needs 'stats'"), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(tmp / "o.gguf"));
  // Statistics without moments cannot refit.
  fs::create_directories(tmp / "nomoments");
  fs::copy_file(stats + "/fisher.dat", tmp / "nomoments/fisher.dat");
  run = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set output={} --set stats={}",
                                     test::source_dir(), stories(), tmp / "r.json", tmp / "o.gguf", tmp / "nomoments"));
  EXPECT_EQ(run.exit_code, static_cast<int>(ExitCode::InputData)) << run.err;
  EXPECT_NE(run.err.find("moments"), std::string::npos) << run.err;
  EXPECT_FALSE(fs::exists(tmp / "o.gguf"));
  nlohmann::json bad = rec;
  bad["recovery"] = "sometimes";
  test::write_file(tmp / "b.json", bad.dump());
  run = test::squish_run(fmt::format("{}/pipelines/compress.yaml --no-progress --set model={} --set recipe={} --set output={}", test::source_dir(),
                                     stories(), tmp / "b.json", tmp / "o.gguf"));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("recovery must be"), std::string::npos) << run.err;
}
