#pragma once
// Fixed-size blocks of bytes kept in memory up to a byte budget, the rest in an unnamed scratch
// file: how the layer-major score pass holds every chunk's per-layer checkpoints when they do
// not fit (stages/score). The scratch file is an O_TMPFILE inode (or a temporary unlinked the
// moment it is created), so nothing is left behind, even after SIGKILL.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace squish {

class SpillStore {
 public:
  // n_blocks blocks of block_bytes bytes; at most memory_budget bytes of them in memory.
  // The scratch file is created in scratch_dir the first time a block does not fit.
  SpillStore(size_t block_bytes, size_t n_blocks, uint64_t memory_budget, std::string scratch_dir);
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  void put(size_t id, const void* data);  // copies block_bytes in (replaces a stored block)
  void get(size_t id, void* out) const;   // copies the block out; Error(Runtime) if never put
  void drop(size_t id);                   // frees the block's slot for later puts

  // Throws the error a first spill into `dir` would (a folder that is missing or not writable),
  // so a run can find out before it has done any work.
  static void check_folder(const std::string& dir);

  size_t block_bytes() const { return block_bytes_; }
  uint64_t memory_bytes() const { return uint64_t(ram_.size()) * block_bytes_; }  // allocated in memory
  uint64_t scratch_bytes_peak() const { return scratch_peak_; }   // largest scratch file size
  uint64_t scratch_bytes_written() const { return written_; }     // I/O volume, both directions
  uint64_t scratch_bytes_read() const { return read_; }

 private:
  int64_t file_slot();
  struct Where {
    int64_t ram = -1, file = -1;  // slot index in memory or in the scratch file
  };
  size_t block_bytes_;
  size_t max_ram_slots_;
  std::string dir_;
  std::vector<Where> where_;
  std::vector<std::unique_ptr<std::byte[]>> ram_;
  std::vector<int64_t> free_ram_, free_file_;
  int fd_ = -1;
  int64_t file_slots_ = 0;
  uint64_t scratch_peak_ = 0, written_ = 0;
  mutable uint64_t read_ = 0;
};

}  // namespace squish
