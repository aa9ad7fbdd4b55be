// The verify stage against seeded faults: every fault is caught by the check that owns it, the
// pipeline exits with 3 naming that check, and the JSON report is written anyway; clean files
// (Squish's and stock llama.cpp's) pass every check, including perplexity against llama.cpp's
// reference figure for stories260K.
#include "core/gguf/gguf.hpp"
#include "stages/verify/verify.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

using namespace squish;
namespace fs = std::filesystem;

namespace {

const char* kStoriesPpl = "5.4278";  // REFERENCE.md: llama.cpp F32, ctx 256, TinyStories-valid.sample

std::string stories() { return test::shared("models/stories260K"); }

// Files compressed once for the whole suite (stories260K compresses in well under a second).
struct Files {
  test::TempDir dir;
  std::string q8, f32;
};
Files* g_files = nullptr;

class Verify : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::have_shared() || g_files) return;
    g_files = new Files;
    for (auto [preset, out] : {std::pair{"Q8_0", &g_files->q8}, std::pair{"F32", &g_files->f32}}) {
      *out = g_files->dir / fmt::format("stories-{}.gguf", preset);
      auto r = test::squish_run(fmt::format("--set model={} --set preset={} --set output={} {}/pipelines/compress.yaml", stories(),
                                            preset, *out, test::source_dir()));
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }
  static void TearDownTestSuite() {
    delete g_files;
    g_files = nullptr;
  }

  test::TempDir tmp;
  std::string report = tmp / "report.json";

  test::RunResult verify(const std::string& model, const std::string& extra = "") {
    return test::squish_run(fmt::format("--set model={} --set report={} {} {}/pipelines/verify.yaml", model, report, extra, test::source_dir()));
  }
  nlohmann::json read_report() { return nlohmann::json::parse(test::read_file(report)); }
  static const nlohmann::json& check(const nlohmann::json& rep, const std::string& name) {
    for (const auto& c : rep["checks"])
      if (c["name"] == name) return c;
    static const nlohmann::json none;
    ADD_FAILURE() << "no check " << name;
    return none;
  }
  std::string copy(const std::string& from, const std::string& name) {
    const std::string to = tmp / name;
    fs::copy_file(from, to);
    return to;
  }
};

// Overwrites bytes at an absolute file offset.
void poke(const std::string& path, uint64_t offset, const void* bytes, size_t n) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(n));
  ASSERT_TRUE(f.good());
}

uint64_t tensor_offset(const std::string& path, const std::string& name) {
  auto r = gguf::Reader::open(path);
  return r.data_offset() + r.at(name).offset;
}

}  // namespace

TEST_F(Verify, CleanFilePassesEveryCheck) {
  SQUISH_REQUIRE_SHARED();
  auto r = verify(g_files->q8, fmt::format("--set source={} --set text={} --set ctx=256 --set ppl_reference={} --set ppl_tolerance=0.01 "
                                           "--set 'prompt=Once upon a time' --set n=48",
                                           stories(), test::shared("data/TinyStories-valid.sample.txt"), kStoriesPpl));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("OK"), std::string::npos) << r.out;
  auto rep = read_report();
  EXPECT_TRUE(rep["ok"].get<bool>());
  EXPECT_TRUE(rep["failed"].empty());
  EXPECT_EQ(rep["file_bytes"].get<uint64_t>(), fs::file_size(g_files->q8));
  // Every check ran (none skipped) and passed.
  for (const char* name : {"gguf_valid", "tokenizer", "recipe", "shapes", "finite", "budget", "perplexity", "generation"}) {
    const auto& c = check(rep, name);
    EXPECT_EQ(c["status"], "pass") << name << ": " << c.dump();
  }
  EXPECT_EQ(check(rep, "shapes")["plan_tensors"].get<int>(), 47);
  EXPECT_EQ(check(rep, "budget")["vs_plan_bytes"].get<int64_t>(), 0);  // the plan predicts the size exactly
  EXPECT_NEAR(check(rep, "perplexity")["ppl"].get<double>(), 5.4278, 0.05);
  EXPECT_EQ(check(rep, "generation")["tokens"].size(), 48u);
}

TEST_F(Verify, LlamaCppReferenceFilesPass) {
  SQUISH_REQUIRE_SHARED();
  // No recipe, no source: the architecture check alone (tied and untied output, qwen2 biases).
  for (const char* f : {"reference/stories260K/stories260K-f32.gguf", "reference/stories260K/stories260K-q8_0-ffndown_f16.gguf",
                        "reference/coder-28m-Q4_K_M.gguf"}) {
    auto r = verify(test::shared(f));
    EXPECT_EQ(r.exit_code, 0) << f << ": " << r.err << r.out;
    auto rep = read_report();
    EXPECT_EQ(check(rep, "shapes")["status"], "pass") << f;
    EXPECT_EQ(check(rep, "recipe")["status"], "skip") << f;
    EXPECT_GT(check(rep, "finite")["values_checked"].get<uint64_t>(), 0u);
  }
}

TEST_F(Verify, NaNInF32Weight) {
  SQUISH_REQUIRE_SHARED();
  const std::string bad = copy(g_files->f32, "nan.gguf");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  poke(bad, tensor_offset(bad, "blk.3.attn_q.weight") + 5 * sizeof(float), &nan, sizeof nan);
  auto r = verify(bad);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: finite (blk.3.attn_q.weight: 1 NaN)"), std::string::npos) << r.err;
  auto rep = read_report();
  EXPECT_EQ(rep["failed"], nlohmann::json::array({"finite"}));
  EXPECT_EQ(check(rep, "finite")["non_finite"]["blk.3.attn_q.weight"]["nan"], 1);
  EXPECT_EQ(check(rep, "finite")["non_finite"].size(), 1u);
}

TEST_F(Verify, NaNInQ8_0BlockScale) {
  SQUISH_REQUIRE_SHARED();
  const std::string bad = copy(g_files->q8, "nan-scale.gguf");
  auto rd = gguf::Reader::open(bad);
  ASSERT_EQ(rd.at("blk.1.ffn_up.weight").type, GGMLType::Q8_0);
  // The third block's fp16 scale (blocks are 2 + 32 bytes): every value of the block becomes NaN.
  const uint16_t half_nan = 0x7E00;
  poke(bad, tensor_offset(bad, "blk.1.ffn_up.weight") + 2 * 34, &half_nan, sizeof half_nan);
  auto r = verify(bad, fmt::format("--set source={}", stories()));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("finite (blk.1.ffn_up.weight: 32 NaN)"), std::string::npos) << r.err;
  auto rep = read_report();
  EXPECT_EQ(rep["failed"], nlohmann::json::array({"finite"}));  // shapes, plan and budget still agree
  EXPECT_EQ(check(rep, "finite")["non_finite"]["blk.1.ffn_up.weight"]["nan"], 32);
}

TEST_F(Verify, TruncatedFile) {
  SQUISH_REQUIRE_SHARED();
  const std::string bad = copy(g_files->q8, "truncated.gguf");
  fs::resize_file(bad, fs::file_size(bad) - 1000);
  auto r = verify(bad);
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: gguf_valid ("), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("invalid GGUF"), std::string::npos) << r.err;  // the reader's own message
  auto rep = read_report();
  EXPECT_EQ(rep["failed"], nlohmann::json::array({"gguf_valid"}));
  EXPECT_EQ(check(rep, "finite")["status"], "skip");

  // A file that is not there at all: same check, and the report is still written.
  fs::remove(report);
  r = verify(tmp / "absent.gguf");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: gguf_valid ("), std::string::npos) << r.err;
  EXPECT_EQ(read_report()["failed"], nlohmann::json::array({"gguf_valid"}));
}

TEST_F(Verify, ShapeDisagreesWithRecipe) {
  SQUISH_REQUIRE_SHARED();
  // The file was compressed without pruning; this recipe removes KV group 3 of layer 2.
  const std::string recipe = tmp / "prune.json";
  test::write_file(recipe, R"({"preset": "Q8_0", "attention": {"2": {"kv_groups": [0, 1, 2]}}})");
  auto r = verify(g_files->q8, fmt::format("--set recipe={} --set source={}", recipe, stories()));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: shapes ("), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("blk.2.attn_q.weight"), std::string::npos) << r.err;
  auto rep = read_report();
  EXPECT_EQ(rep["failed"], nlohmann::json::array({"shapes"}));
  // ne of q, k, v and output of layer 2 disagree with the plan, and so does output's type
  // (48 columns do not fit Q8_0 blocks: the plan falls back to F16); the metadata agrees with the file.
  EXPECT_EQ(check(rep, "shapes")["plan_mismatches"].get<int>(), 5);
  EXPECT_NE(check(rep, "shapes")["problems"].dump().find("blk.2.attn_output.weight: type Q8_0 but the plan says F16"), std::string::npos);

  // The file that recipe does produce passes, with per-layer head counts in its metadata.
  const std::string pruned = tmp / "pruned.gguf";
  auto c = test::squish_run(fmt::format("--set model={} --set recipe={} --set output={} {}/pipelines/compress.yaml", stories(), recipe,
                                        pruned, test::source_dir()));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  ASSERT_TRUE(gguf::Reader::open(pruned).at_key("deci.attention.head_count_kv").is_array());  // per-layer counts: deci
  auto ok = verify(pruned, fmt::format("--set source={}", stories()));
  EXPECT_EQ(ok.exit_code, 0) << ok.err << ok.out;
  EXPECT_EQ(check(read_report(), "shapes")["status"], "pass");
  // ... and the unpruned recipe rejects it in turn.
  const std::string plain = tmp / "plain.json";
  test::write_file(plain, R"({"preset": "Q8_0"})");
  auto bad = verify(pruned, fmt::format("--set recipe={} --set source={}", plain, stories()));
  EXPECT_EQ(bad.exit_code, 3) << bad.err;
  EXPECT_NE(bad.err.find("blk.2.attn_k.weight: ne [64, 24] but the plan says [64, 32]"), std::string::npos) << bad.err;
}

TEST_F(Verify, OverBudget) {
  SQUISH_REQUIRE_SHARED();
  const uint64_t size = fs::file_size(g_files->q8);
  const std::string recipe = tmp / "small.json";
  test::write_file(recipe, fmt::format(R"({{"preset": "Q8_0", "memory_budget_bytes": {}}})", size - 1));
  auto r = verify(g_files->q8, fmt::format("--set recipe={} --set source={}", recipe, stories()));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find(fmt::format("failed checks: budget ({} bytes exceeds the budget of {} bytes by 1", size, size - 1)), std::string::npos)
      << r.err;
  auto rep = read_report();
  EXPECT_EQ(rep["failed"], nlohmann::json::array({"budget"}));
  // The plan predicts the file this recipe would write: the file's own bytes plus the budget
  // key in its squish.recipe copy (,"memory_budget_bytes":N is 29 bytes; 32 after alignment).
  EXPECT_EQ(check(rep, "budget")["planned_file_bytes"].get<uint64_t>(), size + 32);

  // The override: one byte short fails, the exact size passes.
  r = verify(g_files->q8, fmt::format("--set budget_bytes={}", size - 1));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(read_report()["failed"], nlohmann::json::array({"budget"}));
  r = verify(g_files->q8, fmt::format("--set budget_bytes={}", size));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(check(read_report(), "budget")["status"], "pass");
}

TEST_F(Verify, PerplexityOutsideTolerance) {
  SQUISH_REQUIRE_SHARED();
  auto r = verify(g_files->q8, fmt::format("--set text={} --set ctx=256 --set ppl_reference=5.0 --set ppl_tolerance=0.05",
                                           test::shared("data/TinyStories-valid.sample.txt")));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: perplexity (PPL 5.4"), std::string::npos) << r.err;
  EXPECT_EQ(read_report()["failed"], nlohmann::json::array({"perplexity"}));
}

TEST_F(Verify, DegenerateGeneration) {
  SQUISH_REQUIRE_SHARED();
  // A zeroed output matrix gives equal logits for every token: greedy decoding can only repeat
  // one token (or stop at once).
  const std::string bad = copy(test::shared("reference/stories260K/stories260K-f32.gguf"), "flat.gguf");
  auto rd = gguf::Reader::open(bad);
  const auto& out = rd.at("output.weight");
  std::vector<char> zeros(out.nbytes, 0);
  poke(bad, rd.data_offset() + out.offset, zeros.data(), zeros.size());
  auto r = verify(bad, "--set 'prompt=Once upon a time' --set n=16");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("failed checks: generation ("), std::string::npos) << r.err;
  EXPECT_EQ(read_report()["failed"], nlohmann::json::array({"generation"}));
}

// ---- the checks as functions -----------------------------------------------------------------

TEST(VerifyChecks, GenerationDegeneracyRules) {
  using verify::check_generation_tokens;
  EXPECT_FALSE(check_generation_tokens({}, "").ok());
  EXPECT_FALSE(check_generation_tokens({7, 7, 7, 7, 7, 7}, "").ok());
  EXPECT_FALSE(check_generation_tokens({1, 2, 1, 2, 1, 2, 1, 2, 1, 2}, "").ok());
  // 1 of 20 tokens outside a period-1 loop: 95% coverage -> degenerate.
  std::vector<int32_t> mostly(20, 5);
  mostly[0] = 9;
  EXPECT_FALSE(check_generation_tokens(mostly, "").ok());
  // 3 of 20 outside: 85% -> accepted.
  mostly[1] = 10, mostly[2] = 11;
  EXPECT_TRUE(check_generation_tokens(mostly, "").ok());
  EXPECT_TRUE(check_generation_tokens({3, 8, 1, 9, 4, 4, 12, 5}, "").ok());
  EXPECT_TRUE(check_generation_tokens({42}, "x").ok());  // one token (EOS right after) is not a loop
}

TEST(VerifyChecks, ShapesAgainstMetadataNameTheTensors) {
  SQUISH_REQUIRE_SHARED();
  test::TempDir tmp;
  auto ref = gguf::Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  EXPECT_TRUE(verify::check_shapes(ref, nullptr).ok());

  // Same tensors, but metadata claiming 2 KV heads and no blk.4.ffn_down.weight.
  std::vector<gguf::KeyValue> kv = ref.metadata();
  for (auto& [k, v] : kv)
    if (k == "llama.attention.head_count_kv") v = gguf::Value(uint32_t{2});
  std::vector<gguf::TensorDecl> decls;
  for (const auto& t : ref.tensors())
    if (t.name != "blk.4.ffn_down.weight") decls.push_back({t.name, t.ne, t.type});
  const std::string path = tmp / "bad-meta.gguf";
  {
    gguf::Writer w(path, kv, decls);
    for (const auto& d : decls) w.write_tensor(d.name, ref.at(d.name).data);
    w.commit();
  }
  auto bad = gguf::Reader::open(path);
  auto c = verify::check_shapes(bad, nullptr);
  EXPECT_FALSE(c.ok());
  const auto problems = c.data["problems"].dump();
  for (int l = 0; l < 5; ++l) {
    EXPECT_NE(problems.find(fmt::format("blk.{}.attn_k.weight: ne [64, 32] but the metadata implies [64, 16]", l)), std::string::npos) << problems;
    EXPECT_NE(problems.find(fmt::format("blk.{}.attn_v.weight", l)), std::string::npos);
  }
  EXPECT_EQ(c.data["missing"], nlohmann::json::array({"blk.4.ffn_down.weight"}));
  EXPECT_NE(c.detail.find("(+"), std::string::npos) << c.detail;  // one line, the rest counted
}
