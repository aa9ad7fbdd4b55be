#include "core/io/spill_store.hpp"

#include "core/runtime/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace squish {

SpillStore::SpillStore(size_t block_floats, size_t n_blocks, uint64_t memory_budget, std::string scratch_dir)
    : block_floats_(block_floats), dir_(std::move(scratch_dir)), where_(n_blocks) {
  if (block_floats == 0) fail(ExitCode::Runtime, "spill store: empty blocks");
  max_ram_slots_ = static_cast<size_t>(std::min<uint64_t>(memory_budget / block_bytes(), n_blocks));
}

SpillStore::~SpillStore() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t SpillStore::file_slot() {
  if (!free_file_.empty()) {
    const int64_t s = free_file_.back();
    free_file_.pop_back();
    return s;
  }
  if (fd_ < 0) {
    const std::string dir = dir_.empty() ? "." : dir_;
#ifdef O_TMPFILE
    fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (fd_ < 0) {  // no O_TMPFILE here: a named file, unlinked before anything is written to it
      std::string name = dir + "/.squish-scratch.XXXXXX";
      fd_ = ::mkostemp(name.data(), O_CLOEXEC);
      if (fd_ >= 0) ::unlink(name.c_str());
    }
    if (fd_ < 0)
      fail(ExitCode::Runtime, "{}: cannot create a scratch file for activation checkpoints: {}", dir, std::strerror(errno));
  }
  return file_slots_++;
}

void SpillStore::put(size_t id, const float* data) {
  if (id >= where_.size()) fail(ExitCode::Runtime, "spill store: block {} of {}", id, where_.size());
  Where& w = where_[id];
  if (w.ram < 0 && w.file < 0) {
    if (!free_ram_.empty()) {
      w.ram = free_ram_.back();
      free_ram_.pop_back();
    } else if (ram_.size() < max_ram_slots_) {
      w.ram = static_cast<int64_t>(ram_.size());
      ram_.emplace_back(block_floats_);
    } else {
      w.file = file_slot();
    }
  }
  if (w.ram >= 0) {
    std::copy_n(data, block_floats_, ram_[w.ram].data());
    return;
  }
  const auto* p = reinterpret_cast<const char*>(data);
  const uint64_t off = uint64_t(w.file) * block_bytes();
  for (uint64_t done = 0; done < block_bytes();) {
    const ssize_t n = ::pwrite(fd_, p + done, block_bytes() - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail(ExitCode::Runtime, "{}: cannot write activation checkpoints to the scratch file: {}", dir_.empty() ? "." : dir_,
           n < 0 ? std::strerror(errno) : "no space");
    done += uint64_t(n);
  }
  written_ += block_bytes();
  scratch_peak_ = std::max(scratch_peak_, uint64_t(file_slots_) * block_bytes());
}

void SpillStore::get(size_t id, float* out) const {
  if (id >= where_.size() || (where_[id].ram < 0 && where_[id].file < 0))
    fail(ExitCode::Runtime, "spill store: block {} was never stored", id);
  const Where& w = where_[id];
  if (w.ram >= 0) {
    std::copy_n(ram_[w.ram].data(), block_floats_, out);
    return;
  }
  auto* p = reinterpret_cast<char*>(out);
  const uint64_t off = uint64_t(w.file) * block_bytes();
  for (uint64_t done = 0; done < block_bytes();) {
    const ssize_t n = ::pread(fd_, p + done, block_bytes() - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail(ExitCode::Runtime, "{}: cannot read activation checkpoints back from the scratch file: {}", dir_.empty() ? "." : dir_,
           n < 0 ? std::strerror(errno) : "short file");
    done += uint64_t(n);
  }
  read_ += block_bytes();
}

void SpillStore::drop(size_t id) {
  if (id >= where_.size()) return;
  Where& w = where_[id];
  if (w.ram >= 0) free_ram_.push_back(w.ram);
  if (w.file >= 0) free_file_.push_back(w.file);
  w = {};
}

}  // namespace squish
