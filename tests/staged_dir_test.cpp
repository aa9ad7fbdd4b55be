// StagedDir: a set of outputs appears together or not at all.
#include "core/io/staged_dir.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

#include <map>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace squish;

namespace {
std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out[fs::relative(e.path(), dir).string()] = e.is_directory() ? "<dir>" : test::read_file(e.path().string());
  return out;
}
void write_set(const std::string& dir, const std::string& tag) {
  fs::create_directories(dir + "/moments");
  test::write_file(dir + "/imatrix.dat", "imatrix " + tag);
  test::write_file(dir + "/moments/a.zst", "moments " + tag);
  test::write_file(dir + "/scores.json", "scores " + tag);
}
}  // namespace

TEST(StagedDir, NewFolderAppearsWholeOrNotAtAll) {
  test::TempDir tmp;
  const std::string dest = tmp / "scores";
  {
    StagedDir s(dest);
    write_set(s.path(), "new");
    // failure before commit: the destructor removes everything
  }
  EXPECT_TRUE(tree(tmp.path()).empty());
  {
    StagedDir s(dest);
    write_set(s.path(), "new");
    EXPECT_FALSE(fs::exists(dest));
    s.commit({"scores.json"});
  }
  const std::map<std::string, std::string> want = {
      {"scores", "<dir>"}, {"scores/imatrix.dat", "imatrix new"}, {"scores/moments", "<dir>"},
      {"scores/moments/a.zst", "moments new"}, {"scores/scores.json", "scores new"}};
  EXPECT_EQ(tree(tmp.path()), want);
}

TEST(StagedDir, ExistingFolderKeepsOtherFilesAndReplacesTheSet) {
  test::TempDir tmp;
  const std::string dest = tmp / "art";
  write_set(dest, "old");
  test::write_file(dest + "/measurements.json", "plan's");
  test::write_file(dest + "/moments/stale.zst", "only in the old set");
  const auto before = tree(dest);
  {
    StagedDir s(dest);
    write_set(s.path(), "new");
  }
  EXPECT_EQ(tree(dest), before);  // an abandoned set changes nothing
  {
    StagedDir s(dest);
    write_set(s.path(), "new");
    s.commit({"scores.json"});
  }
  const std::map<std::string, std::string> want = {
      {"imatrix.dat", "imatrix new"}, {"measurements.json", "plan's"}, {"moments", "<dir>"},
      {"moments/a.zst", "moments new"}, {"scores.json", "scores new"}};
  EXPECT_EQ(tree(dest), want);  // the old moments folder went with its stale file
}

TEST(StagedDir, StagingLeftByAKilledProcessIsRemoved) {
  test::TempDir tmp;
  const std::string dest = tmp / "art";
  // A child creates a staging folder and dies without cleaning up (as under SIGKILL).
  const pid_t child = fork();
  if (child == 0) {
    StagedDir* s = new StagedDir(dest);
    write_set(s->path(), "dead");
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_EQ(tree(tmp.path()).size(), 5u);  // the orphaned staging folder and its 4 entries
  StagedDir s(dest);
  write_set(s.path(), "live");
  s.commit();
  EXPECT_EQ(tree(tmp.path()).size(), 5u);  // art/ and its 4 entries: the orphan is gone
  EXPECT_EQ(test::read_file(dest + "/scores.json"), "scores live");
}

TEST(StagedDir, AFileInTheWayIsAnError) {
  test::TempDir tmp;
  test::write_file(tmp / "f", "x");
  try {
    StagedDir s(tmp / "f");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::Runtime);
    EXPECT_NE(std::string(e.what()).find(tmp / "f"), std::string::npos);
  }
  EXPECT_EQ(test::read_file(tmp / "f"), "x");
}
