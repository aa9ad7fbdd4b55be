#include "core/io/atomic_file.hpp"

#include "core/runtime/error.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <filesystem>
#include <unistd.h>

namespace fs = std::filesystem;

namespace squish {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  fs::path p(path_);
  fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(ExitCode::Runtime, "{}: cannot create output: directory {} does not exist", path_, dir.string());
  std::string tmpl = (dir / ("." + p.filename().string() + ".tmp.XXXXXX")).string();
  fd_ = ::mkstemp(tmpl.data());
  if (fd_ < 0) fail(ExitCode::Runtime, "{}: cannot create output: {}", path_, std::strerror(errno));
  tmp_ = tmpl;
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
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

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail(ExitCode::Runtime, "{}: fsync failed: {}", path_, std::strerror(errno));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(ExitCode::Runtime, "{}: close failed: {}", path_, std::strerror(errno));
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(ExitCode::Runtime, "{}: cannot rename into place: {}", path_, std::strerror(errno));
  committed_ = true;
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
