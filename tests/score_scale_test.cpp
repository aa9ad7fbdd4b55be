// Scoring at scale: the layer-major pass under a memory bound gives the in-memory path's
// scores and statistics; its spill store; memory settings; and scoring spread over MPI ranks
// (mpirun -np 2 on localhost) gives one process's artifacts, while a failing rank ends the run
// with a clear error and nothing written.
#include "core/io/imatrix.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/spill_store.hpp"
#include "core/arch/synthetic_checkpoint.hpp"
#include "core/model/transformer.hpp"
#include "core/base/error.hpp"
#include "core/base/memory.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "core/arch/architecture.hpp"
#include "stages/score/scorer.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zstd.h>

#include <cmath>
#include <filesystem>
#include <numeric>

using namespace squish;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> entries_of(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  return v;
}

std::vector<float> block(size_t n, float seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = seed + 0.25f * float(i);
  return v;
}

}  // namespace

TEST(SpillStore, KeepsBlocksInMemoryUpToTheBudgetThenInAnUnnamedScratchFile) {
  test::TempDir tmp;
  constexpr size_t n = 1000;
  SpillStore s(n * sizeof(float), 5, 2 * n * sizeof(float), tmp.path().string());
  for (size_t id = 0; id < 5; ++id) s.put(id, block(n, float(id)).data());
  EXPECT_EQ(s.memory_bytes(), 2 * n * sizeof(float));
  EXPECT_EQ(s.scratch_bytes_peak(), 3 * n * sizeof(float));
  EXPECT_TRUE(entries_of(tmp.path().string()).empty()) << "the scratch file has no name";
  std::vector<float> out(n);
  for (size_t id = 0; id < 5; ++id) {
    s.get(id, out.data());
    EXPECT_EQ(out, block(n, float(id))) << id;
  }
  // Replacing a block keeps its slot; a dropped slot is reused before the file grows.
  s.put(4, block(n, 40.f).data());
  s.drop(3);
  s.drop(0);
  std::vector<float> again(n);
  s.get(4, again.data());
  EXPECT_EQ(again, block(n, 40.f));
  s.put(3, block(n, 30.f).data());
  s.put(0, block(n, 7.f).data());
  EXPECT_EQ(s.scratch_bytes_peak(), 3 * n * sizeof(float));
  s.get(3, out.data());
  EXPECT_EQ(out, block(n, 30.f));
  s.get(0, out.data());
  EXPECT_EQ(out, block(n, 7.f));
  EXPECT_THROW(s.get(99, out.data()), Error);
}

TEST(SpillStore, NoBudgetSpillsEverythingAndAMissingFolderIsAClearError) {
  test::TempDir tmp;
  SpillStore s(64 * sizeof(float), 3, 0, tmp.path().string());
  for (size_t id = 0; id < 3; ++id) s.put(id, block(64, float(id)).data());
  EXPECT_EQ(s.memory_bytes(), 0u);
  EXPECT_EQ(s.scratch_bytes_written(), 3 * 64 * sizeof(float));
  std::vector<float> out(64);
  s.get(1, out.data());
  EXPECT_EQ(out, block(64, 1.f));
  EXPECT_EQ(s.scratch_bytes_read(), 64 * sizeof(float));

  SpillStore bad(64 * sizeof(float), 2, 0, tmp / "no/such/folder");
  for (int probe = 0; probe < 2; ++probe) {
    try {
      if (probe) SpillStore::check_folder(tmp / "no/such/folder");
      else bad.put(0, out.data());
      FAIL() << "a scratch file in a missing folder";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::Runtime);
      EXPECT_NE(std::string(e.what()).find("no/such/folder: cannot create a scratch file"), std::string::npos) << e.what();
    }
  }
  SpillStore::check_folder(tmp.path().string());
  EXPECT_TRUE(entries_of(tmp.path().string()).empty()) << "the probe leaves nothing";
}

TEST(ByteSize, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(parse_byte_size("0"), 0u);
  EXPECT_EQ(parse_byte_size("4096"), 4096u);
  EXPECT_EQ(parse_byte_size("8G"), 8ull << 30);
  EXPECT_EQ(parse_byte_size("8g"), 8ull << 30);
  EXPECT_EQ(parse_byte_size("8GiB"), 8ull << 30);
  EXPECT_EQ(parse_byte_size("8GB"), 8000000000ull);
  EXPECT_EQ(parse_byte_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_byte_size("2T"), 2ull << 40);
  EXPECT_EQ(parse_byte_size("100B"), 100u);
  for (const char* bad : {"", "G", "abc", "8X", "1.2.3", "-5", "8 G", "8GiBs", "8Bi", "1e30", "99999999999T"})
    EXPECT_FALSE(parse_byte_size(bad).has_value()) << bad;
}

// Library level, where every statistic can be compared: an untied qwen2 (biases, the lookup's
// own Fisher factors) with second moments, its checkpoints all but spilled.
TEST(ScoreStreaming, LayerMajorEqualsChunkByChunkExactly) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string dir = tmp / "m";
  SyntheticOptions so;
  so.tokenizer_from = test::shared("models/stories260K");
  so.seed = 5;
  write_synthetic_checkpoint(dir, {{"model_type", "qwen2"}, {"hidden_size", 64}, {"intermediate_size", 96},
                                   {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                   {"vocab_size", 512}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-6},
                                   {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}},
                             so);
  auto in_memory = SafetensorsWeights::open(dir, true);
  Tokenizer tok(Vocab::from_tokenizer_json(dir + "/tokenizer.json", 512));
  auto ids = tok.encode(test::read_file(test::shared("data/TinyStories-valid.sample.txt")), true);
  ids.resize(6 * 64);

  Transformer a(in_memory, {});
  MaskImportance ia(a.arch());
  ActivationStats sa;
  sa.second_moments = true;
  const LossResult la = accumulate_mask_importance(a, ids, 64, ia, &sa);

  Transformer b(SafetensorsWeights::open(dir, /*keep_layers=*/false), {});
  MaskImportance ib(b.arch());
  ActivationStats sb;
  sb.second_moments = true;
  LayerMajorOptions o;
  o.activation_memory = 3 * 64 * 64 * sizeof(float);  // 3 of the 6 x 5 blocks: most spill
  o.scratch_dir = tmp.path().string();
  uint64_t steps = 0, total = 0;
  o.progress = [&](uint64_t d, uint64_t t) { steps = d, total = t; };
  LayerMajorReport rep;
  const LossResult lb = b.mask_importance_by_layer(ids, 64, 0, 6, ib, &sb, o, &rep);

  EXPECT_EQ(la.nll_sum, lb.nll_sum);
  EXPECT_EQ(la.count, lb.count);
  EXPECT_EQ(ia.chunks(), ib.chunks());
  EXPECT_EQ(ia.sums(), ib.sums());
  EXPECT_GT(rep.scratch_bytes_peak, 0u);
  EXPECT_LE(rep.activation_memory_bytes, o.activation_memory);
  EXPECT_EQ(steps, total);
  EXPECT_EQ(total, 6u * (2 * 3 + 1));
  const auto same = [](const auto& x, const auto& y, const char* what) {
    ASSERT_EQ(x.size(), y.size()) << what;
    for (const auto& [k, e] : x) {
      ASSERT_TRUE(y.count(k)) << what << " " << k;
      EXPECT_EQ(e.sum_sq, y.at(k).sum_sq) << what << " " << k;
      EXPECT_EQ(e.count, y.at(k).count) << what << " " << k;
    }
  };
  same(sa.entries, sb.entries, "inputs");
  same(sa.output_grads, sb.output_grads, "output gradients");
  same(sa.input_sums, sb.input_sums, "input sums");
  EXPECT_TRUE(sa.output_grads.count("model.embed_tokens.weight")) << "untied: the lookup's factors";
  ASSERT_EQ(sa.moments.size(), sb.moments.size());
  for (const auto& [k, m] : sa.moments) EXPECT_EQ(m.sum, sb.moments.at(k).sum) << k;

  EXPECT_EQ(rep.layers_not_recomputed, 0);

  // The top layers' forward activations kept for their backward (one layer's worth, then all
  // three) instead of recomputed: the same bits. Per layer: 6 chunks x 64 tokens x (2 norms' rstd,
  // q and o 64, k and v 32, three of width 64, three of the FFN's 96) floats.
  const uint64_t per_layer = 6ull * 64 * (2 + 2 * 64 + 2 * 32 + 3 * 64 + 3 * 96) * sizeof(float);
  for (int keep : {1, 3}) {
    LayerMajorOptions k = o;
    k.kept_memory = keep * per_layer + per_layer / 2;  // the half layer is not kept
    Transformer c(SafetensorsWeights::open(dir, /*keep_layers=*/false), {});
    MaskImportance ik(c.arch());
    ActivationStats sk;
    sk.second_moments = true;
    LayerMajorReport rk;
    const LossResult lk = c.mask_importance_by_layer(ids, 64, 0, 6, ik, &sk, k, &rk);
    EXPECT_EQ(rk.layers_not_recomputed, keep);
    EXPECT_EQ(rk.kept_activation_bytes, keep * per_layer);
    EXPECT_EQ(lk.nll_sum, la.nll_sum);
    EXPECT_EQ(ik.sums(), ia.sums());
    same(sa.entries, sk.entries, "inputs, kept activations");
    same(sa.output_grads, sk.output_grads, "output gradients, kept activations");
    for (const auto& [key, m] : sa.moments) EXPECT_EQ(m.sum, sk.moments.at(key).sum) << key;
  }

  // A share of the chunks (an MPI rank's) is the same arithmetic on just those chunks.
  MaskImportance ic(b.arch()), id(a.arch());
  const LossResult lc = b.mask_importance_by_layer(ids, 64, 2, 4, ic, nullptr, o);
  const LossResult ld = accumulate_mask_importance(a, std::span(ids).subspan(2 * 64, 2 * 64), 64, id);
  EXPECT_EQ(ic.chunks(), 2);
  EXPECT_EQ(ic.sums(), id.sums());
  EXPECT_EQ(lc.nll_sum, ld.nll_sum);
  EXPECT_THROW(b.mask_importance_by_layer(ids, 64, 5, 7, ic, nullptr, o), Error);
}

// The statistics do not depend on the thread count: every product is split by its shape, so
// one thread and two compute each element with the same sgemm calls (what makes one process
// and N single-threaded MPI ranks agree). Shapes large enough that every linear layer and the
// head are tiled; widths that are not multiples of the tile, so edge tiles are exercised.
TEST(ScoreStreaming, OneThreadAndTwoGiveTheSameBits) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string dir = tmp / "m";
  SyntheticOptions so;
  so.tokenizer_from = test::shared("models/stories260K");
  so.seed = 11;
  write_synthetic_checkpoint(dir, {{"model_type", "qwen2"}, {"hidden_size", 192}, {"intermediate_size", 720},
                                   {"num_hidden_layers", 2}, {"num_attention_heads", 6}, {"num_key_value_heads", 2},
                                   {"vocab_size", 512}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-6},
                                   {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}},
                             so);
  Tokenizer tok(Vocab::from_tokenizer_json(dir + "/tokenizer.json", 512));
  auto ids = tok.encode(test::read_file(test::shared("data/TinyStories-valid.sample.txt")), true);
  ids.resize(3 * 128);
  struct Run {
    LossResult loss;
    std::vector<double> sums;
    ActivationStats stats;
  };
  const auto run = [&](int threads) {
    TransformerOptions o;
    o.threads = threads;
    Transformer m(SafetensorsWeights::open(dir, true), o);
    MaskImportance imp(m.arch());
    Run r;
    r.stats.second_moments = true;
    r.loss = accumulate_mask_importance(m, ids, 128, imp, &r.stats);
    r.sums = imp.sums();
    return r;
  };
  const Run one = run(1), two = run(2);
  EXPECT_EQ(one.loss.nll_sum, two.loss.nll_sum);
  EXPECT_EQ(one.sums, two.sums);
  for (const auto& [k, e] : one.stats.entries) EXPECT_EQ(e.sum_sq, two.stats.entries.at(k).sum_sq) << k;
  for (const auto& [k, e] : one.stats.output_grads) EXPECT_EQ(e.sum_sq, two.stats.output_grads.at(k).sum_sq) << k;
  for (const auto& [k, m] : one.stats.moments) EXPECT_EQ(m.sum, two.stats.moments.at(k).sum) << k;
}

namespace {
std::string score_args(const std::string& out, const std::string& extra) {
  return fmt::format("--set model={} --set text={} --set output={} --set ctx=128 --set max_tokens=4096 --no-progress {} {}/pipelines/score.yaml",
                     test::shared("models/coder-28m"), test::shared("data/calib-code.txt"), out, extra, test::source_dir());
}

// Below coder-28m's float32 size (105 MB) in a normal build; a sanitizer's shadow memory makes the
// process itself ~70 MB larger, so there the bound is raised by as much (and only spilling and
// the artifacts are checked).
constexpr const char* kBound = test::kSanitized ? "160M" : "96M";

uint64_t float32_bytes(const std::string& model) {
  uint64_t params = 0;
  const SafetensorsModel st = SafetensorsModel::open(model);
  for (const auto& e : st.entries())
    params += std::accumulate(e.shape.begin(), e.shape.end(), uint64_t(1), [](uint64_t a, int64_t d) { return a * uint64_t(d); });
  return params * sizeof(float);
}
}  // namespace

// The score stage hands each layer's second moments on as soon as that layer has seen every
// chunk, and frees them: the moments/ folder is the same, file for file, as when every layer's
// moments are held to the end and written at once, and so is everything else in the folder.
TEST(ScoreStreaming, MomentsHandedOnLayerByLayerAreTheSameFiles) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  score::ScoreOptions opt;
  opt.ctx = 128;
  opt.max_tokens = 1024;
  opt.moments = true;
  const std::string model = test::shared("models/coder-28m"), text = test::shared("data/calib-code.txt");
  const score::ScoreResult held = score::score_model(model, text, opt);
  score::write_scores(held, tmp / "held");

  std::vector<int> layers;  // the layer of every input handed on, in order (the head: n_layer)
  std::optional<ScoreFolderWriter> out;
  out.emplace(tmp / "streamed");
  opt.moment_sink = [&](const std::string& key, MomentSum m, int64_t tokens) {
    const auto named = arch::parse_gguf_name(key);
    layers.push_back(named && named->layer >= 0 ? named->layer : held.scores["model"]["n_layer"].get<int>());
    out->write_moment(key, m, tokens);
  };
  const score::ScoreResult streamed = score::score_model(model, text, opt);
  score::write_scores(streamed, *out);
  for (const auto& [k, m] : streamed.stats.moments) EXPECT_TRUE(m.released && m.sum.empty()) << k << " was kept to the end";
  EXPECT_EQ(layers.size(), held.stats.moments.size());
  EXPECT_TRUE(std::is_sorted(layers.begin(), layers.end())) << "handed on layer after layer";
  EXPECT_TRUE(streamed.run["moments_streamed"].get<bool>());

  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(tmp / "held/moments")) files.push_back(e.path().filename().string());
  EXPECT_EQ(files.size(), held.stats.moments.size() + 1) << "one file per input and the index";
  for (const auto& f : files) EXPECT_EQ(test::read_file(tmp / "held/moments/" + f), test::read_file(tmp / "streamed/moments/" + f)) << f;
  EXPECT_EQ(entries_of(tmp / "held/moments").size(), entries_of(tmp / "streamed/moments").size());
  for (const char* f : {"imatrix.dat", "fisher.dat", "channels.bin.zst"})
    EXPECT_EQ(test::read_file(tmp / "held/" + f), test::read_file(tmp / "streamed/" + f)) << f;
}

// The acceptance case: coder-28m scored under a bound below its float32 size gives the same
// artifacts, byte for byte, as scoring it whole in memory, within the bound.
TEST(ScoreStreaming, CoderUnderAMemoryBoundBelowItsFloatSizeGivesTheSameArtifacts) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const uint64_t bound = *parse_byte_size(kBound);
  if (!test::kSanitized) {
    ASSERT_LT(bound, float32_bytes(test::shared("models/coder-28m")));
  }
  auto whole = test::squish_run(score_args(tmp / "whole", ""));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  auto streamed = test::squish_run(score_args(tmp / "streamed", std::string("--set memory=") + kBound));
  ASSERT_EQ(streamed.exit_code, 0) << streamed.err;
  for (const char* f : {"imatrix.dat", "fisher.dat", "channels.bin.zst"})
    EXPECT_EQ(test::read_file(tmp / "whole/" + f), test::read_file(tmp / "streamed/" + f)) << f;
  const auto w = nlohmann::json::parse(test::read_file(tmp / "whole/scores.json"));
  const auto s = nlohmann::json::parse(test::read_file(tmp / "streamed/scores.json"));
  EXPECT_EQ(w["layers"], s["layers"]);
  EXPECT_EQ(w["mean_loss"], s["mean_loss"]);
  EXPECT_EQ(w["run"]["mode"], "in-memory");
  const auto& run = s["run"];
  EXPECT_EQ(run["mode"], "layer-major");
  EXPECT_EQ(run["memory"].get<uint64_t>(), bound);
  EXPECT_GT(run["scratch_bytes_peak"][0].get<uint64_t>(), 0u) << "the bound forces checkpoints to the scratch file";
  EXPECT_TRUE(entries_of(tmp.path().string()).size() == 2) << "no scratch file or staging folder left beside the outputs";
  SQUISH_SKIP_UNDER_SANITIZERS("RSS is the sanitizer's");
  EXPECT_LE(run["peak_rss_bytes"][0].get<uint64_t>(), bound);
  EXPECT_GT(w["run"]["peak_rss_bytes"][0].get<uint64_t>(), bound) << "the whole model in memory does not fit the bound";
}

TEST(ScoreStreaming, MemorySettingsThatCannotWorkAreRefusedBeforeAnythingIsWritten) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto small = test::squish_run(score_args(tmp / "out", "--set memory=20M"));
  EXPECT_EQ(small.exit_code, 2) << small.err;
  EXPECT_NE(small.err.find("memory=20971520 is below the"), std::string::npos) << small.err;
  EXPECT_NE(small.err.find("coder-28m"), std::string::npos) << small.err;
  auto word = test::squish_run(score_args(tmp / "out", "--set memory=lots"));
  EXPECT_EQ(word.exit_code, 2) << word.err;
  EXPECT_NE(word.err.find("memory 'lots' is not a size"), std::string::npos) << word.err;
  auto scratch = test::squish_run(score_args(tmp / "out", std::string("--set memory=") + kBound + " --set scratch=" + tmp / "missing"));
  EXPECT_EQ(scratch.exit_code, 5) << scratch.err;
  EXPECT_NE(scratch.err.find("missing: cannot create a scratch file"), std::string::npos) << scratch.err;
  EXPECT_TRUE(entries_of(tmp.path().string()).empty()) << "nothing written";
}

// ---------------------------------------------------------------------------------------------
// MPI: mpirun -np 2 on this machine.

namespace {
using test::mpirun;

// ../shared and mpirun.
#define SQUISH_REQUIRE_SHARED_AND_MPIRUN() \
  SQUISH_REQUIRE_SHARED();                 \
  SQUISH_REQUIRE_MPIRUN()

std::string squish_run_bin() { return test::binary_dir() + "/bin/squish-run"; }

// How far one process and N ranks may be apart, derived rather than observed. Each chunk is
// computed identically in both (the model splits its GEMMs by shape, never by thread count, so
// a rank with one thread and a process with two run the same sgemm calls); the runs differ only
// in the order in which the per-chunk double sums are added: each rank adds its share, then MPI
// adds the ranks. A sum of n terms in any order is within (n-1)·u·Σ|terms| of the exact sum,
// u = 2^-53, so two orders are within 2(n-1)·u·Σ|terms|; dividing by the count adds u to each.
// Statistics stored as float32 add each side's rounding to float, 2^-24 of its magnitude.
double double_sums_rel(int chunks) { return 2.0 * chunks * std::ldexp(1.0, -53); }

// `abs_terms`: a bound on Σ|terms| / count, the statistic's own magnitude when no term is negative.
void expect_within(double a, double b, double abs_terms, double float_rounding, int chunks, const std::string& what) {
  const double bound = float_rounding * (std::fabs(a) + std::fabs(b)) + double_sums_rel(chunks) * abs_terms;
  EXPECT_LE(std::fabs(a - b), bound) << what << ": " << a << " vs " << b;
}

// Non-negative sums (squares, |m·g|, losses), as float32 or as doubles (JSON keeps 17 digits).
void expect_float_stat(double a, double b, int chunks, const std::string& what) {
  expect_within(a, b, std::max(a, b) * (1 + 1e-6), std::ldexp(1.0, -24), chunks, what);
}
void expect_double_stat(double a, double b, int chunks, const std::string& what) { expect_within(a, b, std::max(a, b), 0, chunks, what); }

void expect_json_close(const nlohmann::json& a, const nlohmann::json& b, int chunks, const std::string& at) {
  ASSERT_EQ(a.type(), b.type()) << at;
  if (a.is_number_float()) return expect_double_stat(a.get<double>(), b.get<double>(), chunks, at);
  if (a.is_array()) {
    ASSERT_EQ(a.size(), b.size()) << at;
    for (size_t i = 0; i < a.size(); ++i) expect_json_close(a[i], b[i], chunks, at + "/" + std::to_string(i));
  } else if (a.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) expect_json_close(it.value(), b.at(it.key()), chunks, at + "/" + it.key());
  } else {
    EXPECT_EQ(a, b) << at;
  }
}

// imatrix.dat and fisher.dat: means of squares (":in", ":out", imatrix rows) are non-negative
// sums. Column means (":mean") are signed; their terms are bounded by Cauchy-Schwarz through the
// same column's mean square: Σ_t |x_t| / T <= sqrt(Σ_t x_t² / T) = sqrt(":in").
void expect_imatrix_close(const std::string& a, const std::string& b, int chunks) {
  const Imatrix x = read_imatrix(a), y = read_imatrix(b);
  ASSERT_EQ(x.size(), y.size()) << a;
  constexpr std::string_view kMean = ":mean";
  for (const auto& [k, v] : x) {
    ASSERT_EQ(v.size(), y.at(k).size()) << k;
    const bool is_mean = k.size() > kMean.size() && k.ends_with(kMean);
    const std::vector<float>* sq = is_mean ? &x.at(k.substr(0, k.size() - kMean.size()) + ":in") : nullptr;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!is_mean) {
        expect_float_stat(v[i], y.at(k)[i], chunks, k);
      } else {
        ASSERT_EQ(sq->size(), v.size()) << k;
        expect_within(v[i], y.at(k)[i], std::sqrt((*sq)[i]) * (1 + 1e-6), std::ldexp(1.0, -24), chunks, k);
      }
    }
  }
}

std::vector<float> channels(const std::string& path) {
  const std::string z = test::read_file(path);
  std::vector<float> v(ZSTD_getFrameContentSize(z.data(), z.size()) / sizeof(float));
  ZSTD_decompress(v.data(), v.size() * sizeof(float), z.data(), z.size());
  return v;
}

void expect_same_artifacts(const std::string& one, const std::string& two) {
  const auto a = nlohmann::json::parse(test::read_file(one + "/scores.json"));
  const auto b = nlohmann::json::parse(test::read_file(two + "/scores.json"));
  EXPECT_EQ(a["calibration"], b["calibration"]);
  const int chunks = a["calibration"]["chunks"].get<int>();
  expect_json_close(a["layers"], b["layers"], chunks, "layers");
  expect_double_stat(a["mean_loss"].get<double>(), b["mean_loss"].get<double>(), chunks, "mean_loss");
  expect_imatrix_close(one + "/imatrix.dat", two + "/imatrix.dat", chunks);
  expect_imatrix_close(one + "/fisher.dat", two + "/fisher.dat", chunks);
  const auto ca = channels(one + "/channels.bin.zst"), cb = channels(two + "/channels.bin.zst");
  ASSERT_EQ(ca.size(), cb.size());
  for (size_t i = 0; i < ca.size(); ++i) expect_float_stat(ca[i], cb[i], chunks, "channel " + std::to_string(i));
}
}  // namespace

TEST(ScoreMpi, TwoRanksGiveOneProcesssArtifactsInMemoryAndLayerMajor) {
  SQUISH_REQUIRE_SHARED_AND_MPIRUN();
  test::TempDir tmp;
  auto one = test::squish_run(score_args(tmp / "one", ""));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  for (const char* extra : {"", "--set memory=96M"}) {
    SCOPED_TRACE(extra);
    const std::string out = tmp / (*extra ? "two-streamed" : "two");
    auto two = test::run(mpirun(2, squish_run_bin() + " " + score_args(out, std::string(extra) + " --events-file " + tmp / "ev.jsonl")));
    ASSERT_EQ(two.exit_code, 0) << two.err;
    expect_same_artifacts(tmp / "one", out);
    const auto run = nlohmann::json::parse(test::read_file(out + "/scores.json"))["run"];
    EXPECT_EQ(run["ranks"], 2);
    EXPECT_EQ(run["peak_rss_bytes"].size(), 2u);
    // Only rank 0 writes events: one pipeline_start in the file.
    const std::string ev = test::read_file(tmp / "ev.jsonl");
    size_t starts = 0;
    for (size_t p = ev.find("\"pipeline_start\""); p != std::string::npos; p = ev.find("\"pipeline_start\"", p + 1)) ++starts;
    EXPECT_EQ(starts, 1u) << ev;
  }
}

TEST(ScoreMpi, AFailingRankEndsTheRunWithItsErrorAndNothingWritten) {
  SQUISH_REQUIRE_SHARED_AND_MPIRUN();
  test::TempDir tmp;
  fs::create_directory(tmp / "work");
  const std::string other = tmp / "other.txt";
  test::write_file(other, test::read_file(test::shared("data/calib-code.txt")).substr(1000));
  // Rank 1 gets another text: a missing one (fails on its own), then a different one (caught
  // when the ranks compare what they score).
  struct Case {
    std::string text;
    std::string message;
  };
  for (const Case& c : {Case{tmp / "missing.txt", "rank 1 of 2: " + tmp / "missing.txt" + ": cannot open calibration text"},
                        Case{other, "differs from rank 0's"}}) {
    SCOPED_TRACE(c.text);
    const std::string script = tmp / "rank.sh";
    test::write_file(script, fmt::format("t={}\n[ \"$OMPI_COMM_WORLD_RANK\" = 1 ] && t={}\nexec {} {}\n",
                                         test::shared("data/calib-code.txt"), c.text, squish_run_bin(),
                                         fmt::format("--set model={} --set text=$t --set output={} --set ctx=128 --set max_tokens=4096 --no-progress {}/pipelines/score.yaml",
                                                     test::shared("models/coder-28m"), tmp / "work/out", test::source_dir())));
    auto r = test::run(mpirun(2, "sh " + script));
    EXPECT_EQ(r.exit_code, 3) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_TRUE(entries_of(tmp / "work").empty()) << "no artifacts, no staging folder";
  }
}
