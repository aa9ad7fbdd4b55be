#include "core/io/staged_dir.hpp"

#include "core/base/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <filesystem>
#include <unistd.h>

namespace squish {

namespace fs = std::filesystem;

namespace {

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Staging folders named "<prefix><pid>-<n>" whose process is gone: left by a kill.
void remove_stale(const fs::path& parent, const std::string& prefix) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(e.path(), ec);
  }
}

}  // namespace

StagedDir::StagedDir(std::string dest) : dest_(std::move(dest)) {
  std::error_code ec;
  const fs::path d(dest_);
  if (fs::exists(d, ec) && !fs::is_directory(d, ec))
    fail(ExitCode::Runtime, "{}: cannot create output folder: a file of that name exists", dest_);
  into_existing_ = fs::is_directory(d, ec);
  const fs::path parent = into_existing_ ? d : (d.parent_path().empty() ? fs::path(".") : d.parent_path());
  const std::string prefix = into_existing_ ? std::string(".staging-") : fmt::format(".{}.staging-", d.filename().string());
  if (!into_existing_) {
    fs::create_directories(parent, ec);
    if (!fs::is_directory(parent)) fail(ExitCode::Runtime, "{}: cannot create output folder: {}", dest_, ec.message());
  }
  remove_stale(parent, prefix);
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    const fs::path s = parent / (prefix + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    if (::mkdir(s.c_str(), 0755) == 0) {
      staging_ = s.string();
      return;
    }
    if (errno != EEXIST) fail(ExitCode::Runtime, "{}: cannot create output folder: {}", dest_, std::strerror(errno));
  }
  fail(ExitCode::Runtime, "{}: cannot create output folder: no free staging name", dest_);
}

StagedDir::~StagedDir() {
  if (committed_ || staging_.empty()) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedDir::commit(const std::vector<std::string>& markers) {
  if (committed_) fail(ExitCode::Runtime, "{}: committed twice", dest_);
  const fs::path d(dest_), s(staging_);
  const auto rename_or_fail = [&](const fs::path& from, const fs::path& to) {
    if (::rename(from.c_str(), to.c_str()) != 0)
      fail(ExitCode::Runtime, "{}: cannot move {} into place: {}", dest_, to.filename().string(), std::strerror(errno));
  };
  if (!into_existing_) {
    rename_or_fail(s, d);  // the whole set at once
    committed_ = true;
    fsync_dir(d.parent_path().empty() ? fs::path(".") : d.parent_path());
    return;
  }
  std::error_code ec;
  for (const auto& m : markers) fs::remove(d / m, ec);  // no marker may describe a half-moved set
  fsync_dir(d);
  const fs::path replaced = s / ".replaced";
  fs::create_directory(replaced, ec);
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(s)) {
    const std::string name = e.path().filename().string();
    if (name == ".replaced" || std::find(markers.begin(), markers.end(), name) != markers.end()) continue;
    entries.push_back(e.path());
  }
  const auto move_in = [&](const fs::path& from) {
    const fs::path to = d / from.filename();
    // rename() replaces a file but not a non-empty folder: move the old folder aside first.
    if (fs::is_directory(fs::symlink_status(to, ec))) rename_or_fail(to, replaced / from.filename());
    rename_or_fail(from, to);
  };
  for (const auto& e : entries) move_in(e);
  fsync_dir(d);
  for (const auto& m : markers)
    if (fs::exists(s / m, ec)) move_in(s / m);
  fsync_dir(d);
  committed_ = true;
  fs::remove_all(s, ec);
}

}  // namespace squish
