// The score folder's one owner (core/io/score_folder.hpp): what the writer writes the reader reads
// back; the key convention of fisher.dat; strict reads with one-line errors naming the file.
#include "core/io/score_folder.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

#include <filesystem>

namespace fs = std::filesystem;
using namespace squish;

namespace {

// The error a call throws: its code and text (one line).
template <class F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ExitCode::Ok, "");
}

void expect_one_line_naming(const Error& e, ExitCode code, std::initializer_list<std::string> parts) {
  EXPECT_EQ(e.code(), code) << e.what();
  const std::string m = e.what();
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
}

ScoresSummary summary() {
  ScoresSummary s;
  s.model = {"/models/m", "llama", "c0ffee", 2, 8};
  s.calibration.path = "/texts/t.txt";
  s.calibration.sha256 = "beef";
  s.calibration.chunks = 3;
  s.calibration.ctx = 128;
  s.calibration.max_tokens = 384;
  s.calibration.moments = true;
  s.method = {{"name", "mask-gradient"}};
  s.run = {{"ranks", 1}};
  for (int l = 0; l < 2; ++l)
    s.layers.push_back({4, 2, 3, {{1.0 + l, 2, 3, 4}, {5, 6, 7, 8}}, {{0.5, 0.25 + l}, {9, 10}}, {0.125, 1}, {0.0625 * (l + 1), 2}});
  return s;
}

}  // namespace

TEST(ScoreFolder, FisherKeyConvention) {
  EXPECT_EQ(fisher_key("blk.3.attn_q.weight", FisherFactor::In), "blk.3.attn_q.weight:in");
  EXPECT_EQ(fisher_key("blk.3.attn_q.weight", FisherFactor::Out), "blk.3.attn_q.weight:out");
  EXPECT_EQ(fisher_key("blk.3.attn_output.weight", FisherFactor::Mean), "blk.3.attn_output.weight:mean");
  EXPECT_EQ(score_measure_from_name("taylor"), ScoreMeasure::Taylor);
  EXPECT_EQ(score_measure_from_name("fisher"), ScoreMeasure::Fisher);
  EXPECT_FALSE(score_measure_from_name("predicted"));
}

TEST(ScoreFolder, WrittenAsOneSetAndReadBack) {
  test::TempDir tmp;
  const std::string dir = tmp / "stats";
  FisherFactors f;
  f.set("blk.0.attn_q.weight", FisherFactor::In, {1, 2, 3});
  f.set("blk.0.attn_q.weight", FisherFactor::Out, {4, 5});
  f.set("blk.0.attn_output.weight", FisherFactor::Mean, {-1, 0.5f});
  const Imatrix im = {{"blk.0.attn_q.weight", {0.25f, 0.5f, 1}}};
  const std::vector<ChannelScores> ch = {{{1, 2, 3}, {4, 5, 6}}, {{7, 8, 9}, {10, 11, 12}}};
  const ScoresSummary s = summary();
  {
    ScoreFolderWriter w(dir);
    w.write_channels(ch);
    w.write_imatrix(im, 3, "/texts/t.txt");
    w.write_fisher(f, 3, "/texts/t.txt");
    EXPECT_FALSE(ScoreFolder(dir).complete());  // staged, not in place
    // destroyed uncommitted: nothing appears
  }
  EXPECT_FALSE(fs::exists(dir));
  {
    ScoreFolderWriter w(dir);
    w.write_channels(ch);
    w.write_imatrix(im, 3, "/texts/t.txt");
    w.write_fisher(f, 3, "/texts/t.txt");
    w.commit(s.to_json());
  }
  const ScoreFolder folder(dir);
  EXPECT_TRUE(folder.complete());
  EXPECT_FALSE(folder.has_moments());
  for (const char* name : {ScoreFolder::kScoresFile, ScoreFolder::kImatrixFile, ScoreFolder::kFisherFile, ScoreFolder::kChannelsFile})
    EXPECT_TRUE(fs::is_regular_file(fs::path(dir) / name)) << name;
  EXPECT_EQ(folder.fisher_path(), (fs::path(dir) / ScoreFolder::kFisherFile).string());

  const auto got = folder.channels({3, 3});
  ASSERT_EQ(got.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(got[l].taylor, ch[l].taylor);
    EXPECT_EQ(got[l].fisher, ch[l].fisher);
  }
  EXPECT_EQ(folder.imatrix(), im);
  EXPECT_EQ(folder.imatrix_if_present(), im);
  const FisherFactors back = folder.fisher();
  EXPECT_EQ(back.entries(), f.entries());
  EXPECT_EQ(back.at("blk.0.attn_q.weight", FisherFactor::Out, 2), (std::vector<float>{4, 5}));
  EXPECT_TRUE(back.has("blk.0.attn_output.weight", FisherFactor::Mean));
  EXPECT_FALSE(back.has("blk.0.attn_output.weight", FisherFactor::In));

  const ScoresFile sf = folder.scores();
  EXPECT_EQ(sf.json()["format"], ScoreFolder::kScoresFormat);
  EXPECT_EQ(sf.unit_scores(1, ScoreUnits::Heads, ScoreMeasure::Taylor, 4), (std::vector<double>{2, 2, 3, 4}));
  EXPECT_EQ(sf.unit_scores(0, ScoreUnits::KvGroups, ScoreMeasure::Fisher, 2), (std::vector<double>{9, 10}));
  EXPECT_EQ(sf.branch_taylor(1, ScoreBranch::Mlp), 0.125);
  EXPECT_EQ(sf.branch_taylor(0, ScoreBranch::Attn), 0.125);
  EXPECT_EQ(sf.json()["imatrix"]["ncall"], 3);
  EXPECT_EQ(sf.json()["channels"]["n_ff"], nlohmann::json({3, 3}));
  EXPECT_TRUE(sf.taken_from("/models/m", "c0ffee", "beef", 128, 384, true));
  EXPECT_FALSE(sf.taken_from("/models/other", "c0ffee", "beef", 128, 384, true));
  EXPECT_FALSE(sf.taken_from("/models/m", "c0ffee", "beef", 256, 384, false));
  EXPECT_FALSE(sf.taken_from("/models/m", "c0ffee", "other text", 128, 384, false));
}

TEST(ScoreFolder, BadOrMissingFilesAreOneLineErrorsNamingTheFile) {
  test::TempDir tmp;
  const std::string dir = tmp / "stats";
  const ScoreFolder folder(dir);
  EXPECT_FALSE(folder.complete());
  EXPECT_FALSE(folder.imatrix_if_present());
  expect_one_line_naming(error_of([&] { folder.fisher(); }), ExitCode::InputData, {folder.fisher_path()});
  expect_one_line_naming(error_of([&] { folder.scores(); }), ExitCode::InputData, {folder.scores_path()});
  expect_one_line_naming(error_of([&] { folder.require_moments("second moments for gptq"); }), ExitCode::InputData,
                         {dir, "no moments/", "second moments for gptq", "--set moments=true"});

  {
    ScoreFolderWriter w(dir);
    FisherFactors f;
    f.set("blk.0.ffn_down.weight", FisherFactor::In, {1, 2, 3});
    w.write_fisher(f, 1, "t");
    w.write_channels({{{1, 2}, {3, 4}}});
    nlohmann::json j = summary().to_json();
    j["layers"][0]["heads"].erase("taylor");
    w.commit(j);
  }
  const FisherFactors f = folder.fisher();
  expect_one_line_naming(error_of([&] { f.at("blk.0.ffn_down.weight", FisherFactor::Out, 3); }), ExitCode::InputData,
                         {folder.fisher_path(), "blk.0.ffn_down.weight:out", "re-run the score stage"});
  expect_one_line_naming(error_of([&] { f.at("blk.0.ffn_down.weight", FisherFactor::In, 4); }), ExitCode::InputData,
                         {folder.fisher_path(), "blk.0.ffn_down.weight:in", "3 values"});
  expect_one_line_naming(error_of([&] { folder.channels({3}); }), ExitCode::InputData, {folder.channels_path()});
  const ScoresFile sf = folder.scores();
  expect_one_line_naming(error_of([&] { sf.unit_scores(0, ScoreUnits::Heads, ScoreMeasure::Taylor, 4); }), ExitCode::InputData,
                         {folder.scores_path(), "layers[0].heads.taylor"});
  expect_one_line_naming(error_of([&] { sf.unit_scores(0, ScoreUnits::Heads, ScoreMeasure::Fisher, 5); }), ExitCode::InputData,
                         {folder.scores_path(), "layers[0].heads.fisher"});
  expect_one_line_naming(error_of([&] { sf.branch_taylor(7, ScoreBranch::Attn); }), ExitCode::InputData,
                         {folder.scores_path(), "layers[7].attn.taylor"});

  test::write_file(folder.scores_path(), R"({"format": "something/else"})");
  expect_one_line_naming(error_of([&] { folder.scores(); }), ExitCode::InputData, {folder.scores_path(), "squish.scores/1"});
  test::write_file(folder.channels_path(), "not zstd");
  expect_one_line_naming(error_of([&] { folder.channels({2}); }), ExitCode::InputData, {folder.channels_path()});
}
