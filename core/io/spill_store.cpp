#include "core/io/spill_store.hpp"

#include "core/base/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace squish {

namespace {
// An unnamed file in `dir`: O_TMPFILE, or a named one unlinked before anything is written to it.
int open_scratch(const std::string& dir) {
  int fd = -1;
#ifdef O_TMPFILE
  fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
  if (fd < 0) {
    std::string name = dir + "/.squish-scratch.XXXXXX";
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(name.c_str());
  }
  if (fd < 0) fail(ExitCode::Runtime, "{}: cannot create a scratch file for activation checkpoints: {}", dir, std::strerror(errno));
  return fd;
}
// All n bytes at `offset` through pread or pwrite (they may move fewer), retrying EINTR.
template <class Io, class Ptr>
void whole(Io io, int fd, Ptr p, uint64_t n, uint64_t offset, const std::string& dir, const char* what, const char* short_why) {
  for (uint64_t done = 0; done < n;) {
    const ssize_t k = io(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) fail(ExitCode::Runtime, "{}: cannot {} the scratch file: {}", dir, what, k < 0 ? std::strerror(errno) : short_why);
    done += uint64_t(k);
  }
}
}  // namespace

SpillStore::SpillStore(size_t block_bytes, size_t n_blocks, uint64_t memory_budget, std::string scratch_dir)
    : block_bytes_(block_bytes), dir_(scratch_dir.empty() ? "." : std::move(scratch_dir)), where_(n_blocks) {
  if (block_bytes == 0) fail(ExitCode::Runtime, "spill store: empty blocks");
  max_ram_slots_ = static_cast<size_t>(std::min<uint64_t>(memory_budget / block_bytes, n_blocks));
}

void SpillStore::check_folder(const std::string& dir) { ::close(open_scratch(dir.empty() ? "." : dir)); }

SpillStore::~SpillStore() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t SpillStore::file_slot() {
  if (!free_file_.empty()) {
    const int64_t s = free_file_.back();
    free_file_.pop_back();
    return s;
  }
  if (fd_ < 0) fd_ = open_scratch(dir_);
  return file_slots_++;
}

void SpillStore::put(size_t id, const void* data) {
  if (id >= where_.size()) fail(ExitCode::Runtime, "spill store: block {} of {}", id, where_.size());
  Where& w = where_[id];
  if (w.ram < 0 && w.file < 0) {
    if (!free_ram_.empty()) {
      w.ram = free_ram_.back();
      free_ram_.pop_back();
    } else if (ram_.size() < max_ram_slots_) {
      w.ram = static_cast<int64_t>(ram_.size());
      ram_.push_back(std::make_unique_for_overwrite<std::byte[]>(block_bytes_));
    } else {
      w.file = file_slot();
    }
  }
  if (w.ram >= 0) {
    std::memcpy(ram_[w.ram].get(), data, block_bytes_);
    return;
  }
  whole(::pwrite, fd_, static_cast<const char*>(data), block_bytes_, uint64_t(w.file) * block_bytes_, dir_,
        "write activation checkpoints to", "no space");
  written_ += block_bytes_;
  scratch_peak_ = std::max(scratch_peak_, uint64_t(file_slots_) * block_bytes_);
}

void SpillStore::get(size_t id, void* out) const {
  if (id >= where_.size() || (where_[id].ram < 0 && where_[id].file < 0))
    fail(ExitCode::Runtime, "spill store: block {} was never stored", id);
  const Where& w = where_[id];
  if (w.ram >= 0) {
    std::memcpy(out, ram_[w.ram].get(), block_bytes_);
    return;
  }
  whole(::pread, fd_, static_cast<char*>(out), block_bytes_, uint64_t(w.file) * block_bytes_, dir_,
        "read activation checkpoints back from", "short file");
  read_ += block_bytes_;
}

void SpillStore::drop(size_t id) {
  if (id >= where_.size()) return;
  Where& w = where_[id];
  if (w.ram >= 0) free_ram_.push_back(w.ram);
  if (w.file >= 0) free_file_.push_back(w.file);
  w = {};
}

}  // namespace squish
