// GGUF writer: byte-exact rewrites of llama.cpp's files, concurrent out-of-order writes, atomic
// commit (nothing partial left behind), I/O errors reported with the path.
#include "core/gguf/gguf.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <sys/resource.h>
#include <thread>

using namespace squish;
using namespace squish::gguf;
namespace fs = std::filesystem;

namespace {

std::vector<TensorDecl> decls_of(const std::vector<TensorInfo>& ts) {
  std::vector<TensorDecl> d;
  for (const auto& t : ts) d.push_back({t.name, t.ne, t.type});
  return d;
}

// Files in `dir` (to check that no temporary is left behind).
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(uint8_t(i * 7 + seed * 13 + (i >> 8)));
  return v;
}

}  // namespace

// Reads every reference GGUF and rewrites it (same metadata in the same order, same tensors,
// written in reverse order) — the result must be byte-identical to llama.cpp's file.
TEST(GgufWriter, RewritesReferenceFilesByteExact) {
  SQUISH_REQUIRE_SHARED();
  std::vector<std::string> refs;
  for (const auto& dir : {test::shared("reference"), test::shared("reference/stories260K")})
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".gguf") refs.push_back(e.path().string());
  std::sort(refs.begin(), refs.end());
  ASSERT_GE(refs.size(), 6u);
  test::TempDir dir;
  for (const auto& ref : refs) {
    SCOPED_TRACE(ref);
    auto r = Reader::open(ref);
    std::string out = dir / fs::path(ref).filename().string();
    {
      Writer w(out, r.metadata(), decls_of(r.tensors()));
      EXPECT_EQ(w.data_offset(), r.data_offset());
      EXPECT_EQ(w.file_size(), r.file_size());
      for (size_t i = w.tensors().size(); i-- > 0;) {
        EXPECT_EQ(w.tensors()[i].offset, r.tensors()[i].offset);
        w.write_tensor(r.tensors()[i].name, r.tensors()[i].data);
      }
      w.commit();
    }
    auto a = r.mapping()->bytes();
    auto b = MappedFile::open(out);
    ASSERT_EQ(b->size(), a.size());
    auto mismatch = std::mismatch(a.begin(), a.end(), b->bytes().begin());
    EXPECT_TRUE(mismatch.first == a.end()) << "first differing byte at " << (mismatch.first - a.begin());
    fs::remove(out);
  }
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(GgufWriter, ConcurrentOutOfOrderWritesAndParts) {
  test::TempDir dir;
  std::vector<TensorDecl> decls;
  for (int i = 0; i < 24; ++i)
    decls.push_back({fmt::format("t{}", i), {int64_t(32 * (1 + i % 5)), int64_t(1 + i % 3)},
                     i % 3 == 0 ? GGMLType::Q8_0 : i % 3 == 1 ? GGMLType::F16 : GGMLType::Q4_K});
  decls.back().ne = {256, 3};  // Q4_K needs 256-element rows
  for (auto& d : decls)
    if (d.type == GGMLType::Q4_K) d.ne[0] = 256;
  std::vector<KeyValue> kv = {{"general.architecture", "test"}, {"general.alignment", uint32_t{64}}};
  std::string path = dir / "out.gguf";
  Writer w(path, kv, decls);
  EXPECT_EQ(w.alignment(), 64u);
  EXPECT_FALSE(fs::exists(path));  // nothing at the destination before commit
  // 4 threads, each taking every 4th tensor from the end; odd tensors written in 3 parts.
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th)
    threads.emplace_back([&, th] {
      for (int i = int(decls.size()) - 1 - th; i >= 0; i -= 4) {
        auto data = pattern(w.tensors()[i].nbytes, i);
        if (i % 2 == 0) {
          w.write_tensor(i, data);
        } else {
          size_t n = data.size(), a = n / 3, b = 2 * n / 3;
          w.write_tensor_part(i, b, std::span(data).subspan(b));
          w.write_tensor_part(i, 0, std::span(data).subspan(0, a));
          EXPECT_FALSE(w.tensor_complete(i));
          w.write_tensor_part(i, a, std::span(data).subspan(a, b - a));
        }
        EXPECT_TRUE(w.tensor_complete(i));
      }
    });
  for (auto& t : threads) t.join();
  w.commit();
  EXPECT_TRUE(w.committed());

  auto r = Reader::open(path);
  EXPECT_EQ(r.alignment(), 64u);
  EXPECT_EQ(r.file_size(), w.file_size());
  ASSERT_EQ(r.tensors().size(), decls.size());
  for (size_t i = 0; i < decls.size(); ++i) {
    const auto& t = r.tensors()[i];
    EXPECT_EQ(t.name, decls[i].name);
    EXPECT_EQ(t.ne, decls[i].ne);
    EXPECT_EQ(t.offset % 64, 0u);
    auto expect = pattern(t.nbytes, int(i));
    EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), expect.begin())) << t.name;
    // Padding after each tensor is zeros.
    size_t end = r.data_offset() + t.offset + t.nbytes;
    size_t next = r.data_offset() + (i + 1 < decls.size() ? r.tensors()[i + 1].offset : r.file_size() - r.data_offset());
    for (size_t p = end; p < next; ++p) ASSERT_EQ(r.mapping()->bytes()[p], std::byte{0});
  }
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"out.gguf"});
}

TEST(GgufWriter, AbandonedWriterLeavesNothing) {
  test::TempDir dir;
  std::string path = dir / "model.gguf";
  test::write_file(path, "previous contents");
  {
    Writer w(path, {{"general.architecture", "x"}}, {{"a", {32}, GGMLType::F32}, {"b", {32}, GGMLType::F32}});
    // An O_TMPFILE inode has no name until commit; a named temporary sits beside the target.
    EXPECT_EQ(listing(dir.path()).size(), w.temp_path().empty() ? 1u : 2u);
    if (!w.temp_path().empty()) {
      EXPECT_EQ(fs::path(w.temp_path()).parent_path(), dir.path());
    }
    w.write_tensor(0, pattern(128, 0));
    // commit() refuses while a tensor is missing, naming it.
    try {
      w.commit();
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::Runtime);
      EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"model.gguf"});
  EXPECT_EQ(test::read_file(path), "previous contents");  // the old file is untouched
}

TEST(GgufWriter, RejectsMisuse) {
  test::TempDir dir;
  std::string path = dir / "m.gguf";
  // Bad declarations fail before anything touches the disk.
  EXPECT_THROW(Writer(path, {}, {{"a", {30}, GGMLType::Q8_0}}), Error);
  EXPECT_THROW(Writer(path, {}, {{"a", {32}, GGMLType::F32}, {"a", {32}, GGMLType::F32}}), Error);
  EXPECT_THROW(Writer(path, {{"k", 1}, {"k", 2}}, {}), Error);
  EXPECT_THROW(Writer(path, {{"general.alignment", uint32_t{24}}}, {}), Error);
  EXPECT_TRUE(listing(dir.path()).empty());

  Writer w(path, {}, {{"a", {32, 2}, GGMLType::F32}});
  EXPECT_THROW(w.write_tensor(0, pattern(100, 0)), Error);            // wrong size
  EXPECT_THROW(w.write_tensor("nope", pattern(256, 0)), Error);       // undeclared
  EXPECT_THROW(w.write_tensor_part(0, 200, pattern(100, 0)), Error);  // overrun
  w.write_tensor(0, pattern(256, 0));
  EXPECT_THROW(w.write_tensor(0, pattern(256, 0)), Error);  // twice
}

TEST(GgufWriter, EmptyFileIsValid) {
  test::TempDir dir;
  std::string path = dir / "e.gguf";
  Writer w(path, {{"general.architecture", "none"}}, {});
  w.commit();
  auto r = Reader::open(path);
  EXPECT_TRUE(r.tensors().empty());
  EXPECT_EQ(r.metadata().size(), 1u);
}

TEST(GgufWriter, IoErrorsNameThePath) {
  test::TempDir dir;
  std::string missing = dir / "no/such/dir/m.gguf";
  try {
    Writer w(missing, {}, {{"a", {32}, GGMLType::F32}});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Runtime);
    EXPECT_EQ(std::string(e.what()), missing + ": cannot create output: directory " + (dir / "no/such/dir") + " does not exist");
  }

  // A file-size limit stands in for a full disk: reserving the space fails with EFBIG.
  struct rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string path = dir / "big.gguf";
  std::string msg;
  try {
    Writer w(path, {}, {{"a", {1024, 64}, GGMLType::F32}});
    w.write_tensor(0, pattern(1024 * 64 * 4, 1));
    w.commit();
  } catch (const Error& e) {
    msg = e.what();
    EXPECT_EQ(e.code(), ExitCode::Runtime);
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  // "<path>: cannot reserve <file size> bytes: File too large": the space is claimed up front.
  EXPECT_EQ(msg.rfind(path + ": cannot reserve ", 0), 0u) << msg;
  EXPECT_TRUE(msg.ends_with(std::string(" bytes: ") + std::strerror(EFBIG))) << msg;
  EXPECT_TRUE(listing(dir.path()).empty());
}
