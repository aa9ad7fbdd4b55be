// The score stage end to end: pipeline artifacts agree with the model library's own
// accumulation, the imatrix round-trips in llama.cpp's format, and an imatrix from the score
// stage makes the compress stage's quantization better where it counts.
#include "core/gguf/gguf.hpp"
#include "core/convert/hf_to_gguf.hpp"
#include "core/io/imatrix.hpp"
#include "core/io/moments.hpp"
#include "core/quant/gptq.hpp"
#include "core/io/safetensors.hpp"
#include "core/model/transformer.hpp"
#include "core/quant/quantize.hpp"
#include "core/tokenizer/tokenizer.hpp"
#include "stages/score/scorer.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

using namespace squish;

namespace {
std::string score_cmd(const std::string& model, const std::string& text, const std::string& out, const std::string& extra) {
  return fmt::format("--set model={} --set text={} --set output={} {} {}/pipelines/score.yaml", model, text, out, extra,
                     test::source_dir());
}
}  // namespace

TEST(Score, PipelineArtifactsMatchModelLibrary) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string model = test::shared("models/stories260K");
  const std::string text = test::shared("data/TinyStories-valid.sample.txt");
  auto r = test::squish_run(score_cmd(model, text, tmp / "out", "--set ctx=128 --set max_tokens=1024 --events-file " + tmp / "ev.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto scores = nlohmann::json::parse(test::read_file(tmp / "out/scores.json"));
  EXPECT_EQ(scores["format"], "squish.scores/1");
  EXPECT_EQ(scores["calibration"]["chunks"], 8);
  EXPECT_EQ(scores["calibration"]["tokens_used"], 1024);
  ASSERT_EQ(scores["layers"].size(), 5u);

  // Independent path: the model library's own chunk accumulation on the same tokens.
  auto weights = SafetensorsWeights::open(model);
  Transformer m(weights, {});
  Tokenizer tok(Vocab::from_tokenizer_json(model + "/tokenizer.json", weights->config().vocab_size));
  auto ids = tok.encode(test::read_file(text), true);
  ids.resize(1024);
  MaskImportance imp(m.arch());
  ActivationStats stats;
  accumulate_mask_importance(m, ids, 128, imp, &stats);
  const MaskSet taylor = imp.taylor(), fisher = imp.fisher();
  // The stage and this process run the same arithmetic (the model's products are split by shape,
  // not by thread count): the same doubles, written with round-trip precision.
  for (int l = 0; l < 5; ++l) {
    const auto& L = scores["layers"][l];
    for (int h = 0; h < 8; ++h) {
      EXPECT_EQ(L["heads"]["taylor"][h].get<double>(), taylor.head[l][h]);
      EXPECT_EQ(L["heads"]["fisher"][h].get<double>(), fisher.head[l][h]);
    }
    for (int g = 0; g < 4; ++g) EXPECT_EQ(L["kv_groups"]["taylor"][g].get<double>(), taylor.kv[l][g]);
    EXPECT_EQ(L["mlp"]["taylor"].get<double>(), taylor.mlp[l]);
  }
  auto ch = ScoreFolder(tmp / "out").channels(std::vector<int>(5, 172));
  for (int l = 0; l < 5; ++l)
    for (int c = 0; c < 172; ++c) EXPECT_FLOAT_EQ(ch[l].taylor[c], static_cast<float>(taylor.ffn[l][c]));

  // imatrix: llama.cpp format, GGUF names, per-column means.
  auto im = read_imatrix(tmp / "out/imatrix.dat");
  EXPECT_EQ(im.size(), 5u * 7u);  // q k v o gate up down per layer; no output projection
  const auto& q = im.at("blk.2.attn_q.weight");
  const auto mean = stats.entries.at("model.layers.2.self_attn.q_proj.weight").mean();
  ASSERT_EQ(q.size(), 64u);
  // llama.cpp's format stores mean x ncall as float and the reader divides again: two more
  // float roundings of the same mean, within 2 ulps.
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(q[i], mean[i], 0x1p-22f * mean[i]);
  EXPECT_EQ(im.at("blk.2.attn_q.weight"), im.at("blk.2.attn_k.weight"));  // shared input
  EXPECT_EQ(im.at("blk.4.ffn_down.weight").size(), 172u);

  const auto ev = test::read_file(tmp / "ev.jsonl");
  const bool progress = ev.find("\"unit\":\"tokens\"") != std::string::npos;
  EXPECT_TRUE(progress) << "tokens processed / total progress events";
}

// An imatrix from the score stage lowers the importance-weighted quantization error of every
// K-quant tensor (what llama.cpp's imatrix is for), and changes no unquantized tensor.
TEST(Score, ImatrixFromScoreImprovesWeightedError) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string model = test::shared("models/coder-28m");
  auto r = test::squish_run(score_cmd(model, test::shared("data/calib-code.txt"), tmp / "s", "--set max_tokens=2048"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* f : {"plain", "weighted"}) {
    std::string cmd = fmt::format("--set model={} --set preset=Q3_K_S --set output={} {} {}/pipelines/compress.yaml", model,
                                  tmp / (std::string(f) + ".gguf"), std::string(f) == "weighted" ? "--set imatrix=" + tmp / "s/imatrix.dat" : "",
                                  test::source_dir());
    auto c = test::squish_run(cmd);
    ASSERT_EQ(c.exit_code, 0) << c.err;
  }
  auto plain = gguf::Reader::open(tmp / "plain.gguf");
  auto weighted = gguf::Reader::open(tmp / "weighted.gguf");
  auto im = read_imatrix(tmp / "s/imatrix.dat");
  auto st = SafetensorsModel::open(model);
  int better = 0, compared = 0;
  for (const auto& t : plain.tensors()) {
    auto it = im.find(t.name);
    if (it == im.end() || !ggml_type_traits(t.type)->quantized) continue;
    const auto& w = it->second;
    auto src = st.load(*gguf::gguf_to_hf_name(t.name)).to_f32();
    auto err = [&](const gguf::TensorInfo& q) {
      std::vector<float> deq(src.size());
      dequantize_row(q.type, q.data.data(), deq.data(), static_cast<int64_t>(deq.size()));
      double e = 0;
      for (size_t i = 0; i < deq.size(); ++i) e += w[i % w.size()] * double(deq[i] - src[i]) * double(deq[i] - src[i]);
      return e;
    };
    const double ep = err(t), ew = err(weighted.at(t.name));
    ++compared;
    better += ew < ep;
  }
  EXPECT_EQ(compared, 56);  // every Q3_K weight except the tied output (no imatrix entry)
  EXPECT_EQ(better, compared);
}

// Second moments (moments/) agree with the imatrix on their diagonal, and GPTQ from them gives
// every per-layer weight of coder-28m a lower output error tr(dW H dWᵀ) than ggml's
// importance-weighted rounding of the same type; the same bytes on a second run.
TEST(Score, MomentsFeedGptqWhichLowersOutputError) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  const std::string model = test::shared("models/coder-28m");
  auto r = test::squish_run(score_cmd(model, test::shared("data/calib-code.txt"), tmp / "s", "--set max_tokens=2048 --set moments=true"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto moments = Moments::open(tmp / "s");
  ASSERT_TRUE(moments);
  EXPECT_EQ(moments->tokens(), 2048);
  const auto im = read_imatrix(tmp / "s/imatrix.dat");
  for (const char* name : {"blk.2.attn_k.weight", "blk.5.ffn_up.weight", "blk.7.ffn_down.weight", "blk.0.attn_output.weight"}) {
    int n = 0;
    const auto h = moments->load(name, &n);
    const auto& d = im.at(name);
    ASSERT_EQ(size_t(n), d.size()) << name;
    for (int i = 0; i < n; ++i) {
      // H's diagonal is a float sum of squares (sgemm over each 512-token chunk, accumulated over
      // 4 chunks, divided by the count), the imatrix the same squares summed in double: all terms
      // are non-negative, so they differ by at most γ(512 + 4 + 2) of the sum, plus the imatrix's
      // 3 float roundings.
      EXPECT_NEAR(h[size_t(i) * n + i], d[i], (518 + 3) * 0x1p-24f / (1 - 518 * 0x1p-24f) * d[i]) << name << " column " << i;
      EXPECT_EQ(h[size_t(i) * n + (n - 1 - i)], h[size_t(n - 1 - i) * n + i]);  // symmetric
    }
  }
  auto compress = [&](const std::string& out, const std::string& method) {
    return test::squish_run(fmt::format("--set model={} --set preset=Q3_K_S --set stats={} --set method={} --set output={} {}/pipelines/compress.yaml",
                                        model, tmp / "s", method, out, test::source_dir()));
  };
  ASSERT_EQ(compress(tmp / "rtn.gguf", "rtn").exit_code, 0);
  r = compress(tmp / "gptq.gguf", "gptq");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(compress(tmp / "again.gguf", "gptq").exit_code, 0);
  EXPECT_EQ(test::read_file(tmp / "again.gguf"), test::read_file(tmp / "gptq.gguf"));
  auto rtn = gguf::Reader::open(tmp / "rtn.gguf");
  auto gptq = gguf::Reader::open(tmp / "gptq.gguf");
  auto st = SafetensorsModel::open(model);
  int better = 0, compared = 0;
  for (const auto& t : rtn.tensors()) {
    if (t.name.rfind("blk.", 0) != 0 || !moments->has(t.name)) continue;
    const auto& g = gptq.at(t.name);
    ASSERT_EQ(g.type, t.type) << t.name;
    const auto w = st.load(*gguf::gguf_to_hf_name(t.name)).to_f32();
    const int64_t cols = t.ne[0], rows = t.ne[1];
    const auto h = moments->load(t.name);
    const double e_rtn = quant::output_error(t.type, w.data(), t.data.data(), rows, cols, h.data());
    const double e_gptq = quant::output_error(g.type, w.data(), g.data.data(), rows, cols, h.data());
    ++compared;
    better += e_gptq < e_rtn;
  }
  EXPECT_EQ(compared, 56);
  EXPECT_EQ(better, compared);

  // gptq without moments: a clear input error, no output.
  std::filesystem::remove_all(tmp / "s/moments");
  r = compress(tmp / "none.gguf", "gptq");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("no moments/"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "none.gguf"));
}

TEST(Score, MissingCalibrationTextIsInputError) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto r = test::squish_run(score_cmd(test::shared("models/stories260K"), tmp / "nope.txt", tmp / "out", ""));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("nope.txt: cannot open calibration text"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out/scores.json"));
}
