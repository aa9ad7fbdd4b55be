#include "core/io/atomic_file.hpp"

#include "core/base/error.hpp"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <mutex>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace squish {

namespace {

// Named temporaries still open, for the signal handler: fixed slots written before the file
// exists and cleared after it is renamed or removed, so the handler needs no locks or allocation.
constexpr int kSlots = 64;
struct Slot {
  std::atomic<bool> used{false};
  char path[4096];
};
std::array<Slot, kSlots> g_slots;

int claim_slot(const std::string& path) {
  if (path.size() >= sizeof(Slot::path)) return -1;
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (g_slots[i].used.load() || !g_slots[i].used.compare_exchange_strong(expected, true)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    return i;
  }
  return -1;  // more than 64 outputs at once: a signal may leave this one behind
}

void release_slot(int i) {
  if (i >= 0) g_slots[i].used.store(false);
}

}  // namespace

void remove_named_temporaries() noexcept {
  for (auto& s : g_slots)
    if (s.used.load()) ::unlink(s.path);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  fs::path p(path_);
  fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(ExitCode::Runtime, "{}: cannot create output: directory {} does not exist", path_, dir.string());
  if (fs::is_directory(p, ec)) fail(ExitCode::Runtime, "{}: cannot create output: it is a directory", path_);
#ifdef O_TMPFILE
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ >= 0) {
    dir_ = dir.string();
    return;
  }
#endif
  // Filesystems without O_TMPFILE: a named temporary, removed on failure and on SIGINT, SIGTERM
  // and SIGHUP; after SIGKILL it stays as .<name>.tmp.XXXXXX (docs: stale temporaries).
  std::string tmpl = (dir / fmt::format(".{}.tmp.XXXXXX", p.filename().string())).string();
  slot_ = claim_slot(tmpl);  // before the file exists: a signal in between finds no file, harmlessly
  fd_ = ::mkstemp(tmpl.data());
  if (fd_ < 0) {
    release_slot(slot_);
    fail(ExitCode::Runtime, "{}: cannot create output: {}", path_, std::strerror(errno));
  }
  if (slot_ >= 0) std::memcpy(g_slots[slot_].path, tmpl.c_str(), tmpl.size() + 1);
  tmp_ = tmpl;
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
  release_slot(slot_);
}

void AtomicFile::pwrite(const void* data, size_t n, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(ExitCode::Runtime, "{}: write failed: {}", path_, std::strerror(errno));
    }
    if (w == 0) fail(ExitCode::Runtime, "{}: write failed: no progress", path_);
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

void AtomicFile::write(const void* data, size_t n) {
  pwrite(data, n, end_);
  end_ += n;
}

void AtomicFile::truncate(uint64_t size) {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
    fail(ExitCode::Runtime, "{}: cannot size output to {} bytes: {}", path_, size, std::strerror(errno));
}

void AtomicFile::reserve(uint64_t size) {
  const int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(size));
  if (rc == EOPNOTSUPP || rc == EINVAL) return truncate(size);  // no fallocate here: a sparse file
  if (rc != 0) fail(ExitCode::Runtime, "{}: cannot reserve {} bytes: {}", path_, size, std::strerror(rc));
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail(ExitCode::Runtime, "{}: fsync failed: {}", path_, std::strerror(errno));
  if (!dir_.empty()) {
    // Give the anonymous inode a name beside the target, then rename it over the target
    // (linkat cannot replace an existing file). The name lives only between the two calls.
    std::string tmpl = (fs::path(dir_) / fmt::format(".{}.tmp.XXXXXX", fs::path(path_).filename().string())).string();
    for (int attempt = 0;; ++attempt) {
      std::string name = tmpl;
      const int probe = ::mkstemp(name.data());  // a unique name; removed, then linked to
      if (probe < 0) fail(ExitCode::Runtime, "{}: cannot name output: {}", path_, std::strerror(errno));
      ::close(probe);
      ::unlink(name.c_str());
      slot_ = claim_slot(name);
      const std::string proc = "/proc/self/fd/" + std::to_string(fd_);
      if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
        tmp_ = name;
        break;
      }
      const int err = errno;
      release_slot(slot_);
      slot_ = -1;
      if (err != EEXIST || attempt > 8) fail(ExitCode::Runtime, "{}: cannot name output: {}", path_, std::strerror(err));
    }
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(ExitCode::Runtime, "{}: close failed: {}", path_, std::strerror(errno));
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(ExitCode::Runtime, "{}: cannot rename into place: {}", path_, std::strerror(errno));
  committed_ = true;
  release_slot(slot_);
  slot_ = -1;
  // Make the rename itself durable.
  fs::path dir = fs::path(path_).parent_path();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace squish
