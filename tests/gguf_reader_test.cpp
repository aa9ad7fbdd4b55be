// GGUF reader: reads llama.cpp's reference files, and rejects malformed files with one-line
// errors naming the file and the problem. Malformed files are made by writing a valid small GGUF
// and corrupting bytes at known places.
#include "core/gguf/gguf.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>

using namespace squish;
using namespace squish::gguf;

namespace {

// A small valid file: three tensors of different types; sizes chosen so the last tensor ends
// exactly at the end of the file (no trailing padding) and any truncation cuts real data.
struct Small {
  std::string path;
  std::string bytes;
};

Small make_small(const test::TempDir& dir, std::vector<KeyValue> extra_kv = {}) {
  std::vector<KeyValue> kv = {{"general.architecture", "llama"},
                              {"general.name", "small"},
                              {"llama.block_count", uint32_t{1}},
                              {"tokenizer.ggml.tokens", Value::strings({"a", "b", "c"})},
                              {"some.bools", Value::array(ValueType::BOOL, {true, false})},
                              {"some.f64", 0.25}};
  for (auto& e : extra_kv) kv.push_back(e);
  std::vector<TensorDecl> decls = {{"a.weight", {32, 3}, GGMLType::F32},
                                   {"b.weight", {64, 2}, GGMLType::Q8_0},   // 2 x 68 = 136 bytes, padded
                                   {"c.weight", {8, 4}, GGMLType::F16}};    // 64 bytes: ends the file
  std::string path = dir / "small.gguf";
  Writer w(path, kv, decls);
  for (size_t i = 0; i < w.tensors().size(); ++i) {
    std::vector<std::byte> data(w.tensors()[i].nbytes);
    for (size_t j = 0; j < data.size(); ++j) data[j] = std::byte(uint8_t(i * 31 + j));
    w.write_tensor(i, data);
  }
  w.commit();
  return {path, test::read_file(path)};
}

// Byte position of the tensor info for `name` (its u64 name length).
size_t info_pos(const std::string& bytes, const std::string& name) {
  std::string needle(8, '\0');
  uint64_t n = name.size();
  std::memcpy(needle.data(), &n, 8);
  needle += name;
  size_t p = bytes.rfind(needle);  // rfind: tensor infos come after metadata
  EXPECT_NE(p, std::string::npos);
  return p;
}
// Fields of a tensor info, given its dims count.
size_t type_pos(const std::string& b, const std::string& name, int n_dims) { return info_pos(b, name) + 8 + name.size() + 4 + 8 * n_dims; }
size_t offset_pos(const std::string& b, const std::string& name, int n_dims) { return type_pos(b, name, n_dims) + 4; }

template <typename T>
void poke(std::string& b, size_t pos, T v) {
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

// Expects opening `bytes` to fail with one line "<path>: invalid GGUF: ...<what>...".
void expect_invalid(const test::TempDir& dir, const std::string& bytes, const std::string& what) {
  std::string path = dir / "bad.gguf";
  test::write_file(path, bytes);
  try {
    Reader::open(path);
    ADD_FAILURE() << "accepted a file that should fail with '" << what << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(e.code(), ExitCode::InputData) << msg;
    EXPECT_EQ(msg.rfind(path + ": invalid GGUF: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "message '" << msg << "' lacks '" << what << "'";
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

}  // namespace

TEST(GgufReader, ReadsReferenceCoder) {
  SQUISH_REQUIRE_SHARED();
  auto r = Reader::open(test::shared("reference/coder-28m-Q4_K_M.gguf"));
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_EQ(r.data_offset() % 32, 0u);
  EXPECT_EQ(r.get_string("general.architecture", ""), "qwen2");
  EXPECT_EQ(r.get_int("qwen2.block_count", 0), 8);
  EXPECT_EQ(r.get_int("qwen2.attention.head_count_kv", 0), 4);
  EXPECT_EQ(r.get_int("general.file_type", 0), 15);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
  EXPECT_FLOAT_EQ(float(r.get_float("qwen2.attention.layer_norm_rms_epsilon", 0)), 1e-6f);
  const Value* toks = r.get("tokenizer.ggml.tokens");
  ASSERT_NE(toks, nullptr);
  EXPECT_EQ(toks->elem_type(), ValueType::STRING);
  EXPECT_EQ(toks->size(), 8192u);
  EXPECT_EQ((*toks)[0].as_string(), "<|endoftext|>");
  EXPECT_EQ(r.get("no.such.key"), nullptr);

  // 8 layers x 12 tensors + token_embd + output_norm (tied embeddings: no output.weight).
  EXPECT_EQ(r.tensors().size(), 98u);
  const TensorInfo* emb = r.find("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->ne, (std::vector<int64_t>{512, 8192}));
  EXPECT_EQ(emb->type, GGMLType::Q6_K);
  EXPECT_EQ(emb->nbytes, 8192u * 2 * 210);
  EXPECT_EQ(emb->data.data(), r.mapping()->bytes().data() + r.data_offset() + emb->offset);  // a view, not a copy
  EXPECT_EQ(r.find("output.weight"), nullptr);
  // The data section is exactly the tensors, each padded to 32 bytes.
  uint64_t end = 0;
  for (const auto& t : r.tensors()) end = std::max<uint64_t>(end, t.offset + (t.nbytes + 31) / 32 * 32);
  EXPECT_EQ(r.data_offset() + end, r.file_size());
}

TEST(GgufReader, ReadsReferenceStories) {
  SQUISH_REQUIRE_SHARED();
  auto r = Reader::open(test::shared("reference/stories260K/stories260K-f32.gguf"));
  EXPECT_EQ(r.get_string("tokenizer.ggml.model", ""), "llama");
  EXPECT_EQ(r.at_key("tokenizer.ggml.scores").elem_type(), ValueType::FLOAT32);
  EXPECT_EQ(r.at_key("tokenizer.ggml.padding_token_id").as_int(), 4294967295LL);
  EXPECT_EQ(r.tensors().size(), 48u);
  const auto& ffn_down = r.at("blk.0.ffn_down.weight");
  EXPECT_EQ(ffn_down.ne, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(ffn_down.type, GGMLType::F32);
  EXPECT_THROW(r.at("blk.9.ffn_down.weight"), Error);
  EXPECT_THROW(r.at_key("llama.nope"), Error);
  // Typed getter on the wrong kind names file and key.
  try {
    r.get_int("general.architecture", 0);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("general.architecture"), std::string::npos);
  }

  auto q8 = Reader::open(test::shared("reference/stories260K/stories260K-q8_0-ffndown_f16.gguf"));
  EXPECT_EQ(q8.at("blk.0.attn_q.weight").type, GGMLType::Q8_0);
  EXPECT_EQ(q8.at("blk.0.ffn_down.weight").type, GGMLType::F16);  // 172 is not a multiple of 32
}

TEST(GgufReader, ValidSmallFileRoundTrips) {
  test::TempDir dir;
  auto s = make_small(dir);
  auto r = Reader::open(s.path);
  ASSERT_EQ(r.metadata().size(), 6u);
  EXPECT_EQ(r.metadata()[0].first, "general.architecture");
  EXPECT_EQ(r.metadata()[5].second, Value(0.25));
  EXPECT_EQ(r.at_key("some.bools"), Value::array(ValueType::BOOL, {true, false}));
  EXPECT_EQ(r.at_key("llama.block_count").type(), ValueType::UINT32);
  ASSERT_EQ(r.tensors().size(), 3u);
  EXPECT_EQ(r.tensors()[1].offset, 384u);        // 32*3*4 = 384 bytes, already aligned
  EXPECT_EQ(r.tensors()[2].offset, 384u + 160);  // 136 padded to 160
  for (size_t i = 0; i < 3; ++i) {
    const auto& t = r.tensors()[i];
    for (size_t j = 0; j < t.nbytes; ++j) ASSERT_EQ(t.data[j], std::byte(uint8_t(i * 31 + j)));
  }
  EXPECT_EQ(r.data_offset() + 384 + 160 + 64, r.file_size());
}

TEST(GgufReader, RejectsTruncatedFiles) {
  test::TempDir dir;
  auto s = make_small(dir);
  // Every cut inside the header and a few inside the data must fail.
  auto r = Reader::open(s.path);
  for (size_t len = 0; len < r.data_offset(); len += (len < 64 ? 1 : 7))
    expect_invalid(dir, s.bytes.substr(0, len), "truncated");
  for (size_t len : {r.data_offset() + 10, s.bytes.size() - 1})
    expect_invalid(dir, s.bytes.substr(0, len), "outside");
}

TEST(GgufReader, RejectsBadMagicAndVersion) {
  test::TempDir dir;
  auto s = make_small(dir);
  std::string b = s.bytes;
  b[0] = 'X';
  expect_invalid(dir, b, "bad magic 'XGUF'");
  b = s.bytes;
  poke<uint32_t>(b, 4, 1);
  expect_invalid(dir, b, "version 1");
  poke<uint32_t>(b, 4, 7);
  expect_invalid(dir, b, "unsupported version 7");
  poke<uint32_t>(b, 4, 0x03000000);
  expect_invalid(dir, b, "big-endian");
  // Version 2 has the same layout and is accepted.
  poke<uint32_t>(b, 4, 2);
  std::string p = dir / "v2.gguf";
  test::write_file(p, b);
  EXPECT_EQ(Reader::open(p).version(), 2u);
}

TEST(GgufReader, RejectsImpossibleCounts) {
  test::TempDir dir;
  auto s = make_small(dir);
  std::string b = s.bytes;
  poke<uint64_t>(b, 8, uint64_t{1} << 40);
  expect_invalid(dir, b, "tensor count");
  b = s.bytes;
  poke<uint64_t>(b, 16, uint64_t{1} << 40);
  expect_invalid(dir, b, "metadata count");
}

TEST(GgufReader, RejectsBadStringsAndValueTypes) {
  test::TempDir dir;
  auto s = make_small(dir);
  // First key length -> beyond the file.
  std::string b = s.bytes;
  poke<uint64_t>(b, 24, uint64_t{1} << 50);
  expect_invalid(dir, b, "metadata key");
  // First value type (after the 20-byte key "general.architecture") -> unknown.
  b = s.bytes;
  poke<uint32_t>(b, 24 + 8 + 20, 13);
  expect_invalid(dir, b, "unknown value type 13");
  // Array element type of tokenizer.ggml.tokens -> unknown; then a huge length.
  size_t key = s.bytes.find("tokenizer.ggml.tokens");
  b = s.bytes;
  poke<uint32_t>(b, key + 21 + 4, 77);
  expect_invalid(dir, b, "unknown array element type 77");
  b = s.bytes;
  poke<uint64_t>(b, key + 21 + 8, uint64_t{1} << 40);
  expect_invalid(dir, b, "does not fit");
  // A bool that is neither 0 nor 1.
  size_t bools = s.bytes.find("some.bools");
  b = s.bytes;
  b[bools + 10 + 4 + 4 + 8] = char(2);
  expect_invalid(dir, b, "bool value 2");
}

TEST(GgufReader, RejectsBadAlignment) {
  test::TempDir dir;
  auto s = make_small(dir, {{"general.alignment", uint32_t{64}}});
  EXPECT_EQ(Reader::open(s.path).alignment(), 64u);
  size_t key = s.bytes.find("general.alignment");
  std::string b = s.bytes;
  poke<uint32_t>(b, key + 17 + 4, 48);
  expect_invalid(dir, b, "general.alignment 48 is not a power of 2");
  poke<uint32_t>(b, key + 17 + 4, 0);
  expect_invalid(dir, b, "general.alignment 0");
}

TEST(GgufReader, RejectsBadTensorInfos) {
  test::TempDir dir;
  auto s = make_small(dir);
  std::string b = s.bytes;
  poke<uint32_t>(b, type_pos(s.bytes, "b.weight", 2), 99);
  expect_invalid(dir, b, "tensor 'b.weight': unknown ggml type 99");

  b = s.bytes;
  poke<uint64_t>(b, offset_pos(s.bytes, "c.weight", 2), uint64_t{1} << 40);
  expect_invalid(dir, b, "tensor 'c.weight': data [");

  b = s.bytes;
  poke<uint64_t>(b, offset_pos(s.bytes, "c.weight", 2), 384 + 160 + 1);
  expect_invalid(dir, b, "tensor 'c.weight': offset 545 is not a multiple of the alignment 32");

  b = s.bytes;
  poke<uint64_t>(b, offset_pos(s.bytes, "b.weight", 2), 352);  // inside a.weight
  expect_invalid(dir, b, "tensors 'a.weight' and 'b.weight' overlap");

  b = s.bytes;  // Q8_0 row of 48 elements: not a multiple of 32
  poke<int64_t>(b, info_pos(s.bytes, "b.weight") + 8 + 8 + 4, 48);
  expect_invalid(dir, b, "tensor 'b.weight': row length 48 is not a multiple of Q8_0's block size 32");

  b = s.bytes;  // a zero dimension
  poke<int64_t>(b, info_pos(s.bytes, "a.weight") + 8 + 8 + 4 + 8, 0);
  expect_invalid(dir, b, "tensor 'a.weight': dimension 1 is 0");

  b = s.bytes;  // too many dimensions
  poke<uint32_t>(b, info_pos(s.bytes, "a.weight") + 8 + 8, 5);
  expect_invalid(dir, b, "tensor 'a.weight': 5 dimensions");

  b = s.bytes;  // duplicate names
  b[info_pos(s.bytes, "b.weight") + 8] = 'a';
  expect_invalid(dir, b, "duplicate tensor 'a.weight'");
}

TEST(GgufValue, ConversionsAndEquality) {
  Value u(uint32_t{7}), i(int32_t{-3}), f(1.5f), s("x"), big(uint64_t{1} << 63);
  EXPECT_EQ(u.type(), ValueType::UINT32);
  EXPECT_EQ(u.as_int(), 7);
  EXPECT_EQ(i.as_int(), -3);
  EXPECT_THROW(i.as_uint(), Error);
  EXPECT_THROW(big.as_int(), Error);
  EXPECT_EQ(big.as_uint(), uint64_t{1} << 63);
  EXPECT_DOUBLE_EQ(f.as_float(), 1.5);
  EXPECT_DOUBLE_EQ(u.as_float(), 7.0);
  EXPECT_THROW(s.as_int(), Error);
  EXPECT_THROW(u.as_string(), Error);
  EXPECT_THROW(u.size(), Error);
  // Same number, different GGUF type: not equal (a rewrite must keep types).
  EXPECT_FALSE(Value(uint32_t{7}) == Value(int32_t{7}));
  EXPECT_FALSE(Value(0.0f) == Value(-0.0f));
  auto a = Value::int32s({1, 2, 3});
  EXPECT_EQ(a.elem_type(), ValueType::INT32);
  EXPECT_EQ(a.as_ints(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(a.to_json(), nlohmann::json::parse("[1,2,3]"));
  EXPECT_EQ(Value::strings({"a", "b"}).to_json(), nlohmann::json::parse(R"(["a","b"])"));
  EXPECT_THROW(Value::array(ValueType::INT32, {Value(1.0f)}), Error);
}
