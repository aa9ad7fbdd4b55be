#pragma once
// Fixed-size float blocks kept in memory up to a byte budget, the rest in an unnamed scratch
// file: how the layer-major score pass holds every chunk's per-layer checkpoints when they do
// not fit (stages/score). The scratch file is an O_TMPFILE inode (or a temporary unlinked the
// moment it is created), so nothing is left behind, even after SIGKILL.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace squish {

class SpillStore {
 public:
  // n_blocks blocks of block_floats floats; at most memory_budget bytes of them in memory.
  // The scratch file is created in scratch_dir the first time a block does not fit.
  SpillStore(size_t block_floats, size_t n_blocks, uint64_t memory_budget, std::string scratch_dir);
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  void put(size_t id, const float* data);  // copies block_floats floats in (replaces a stored block)
  void get(size_t id, float* out) const;   // copies the block out; Error(Runtime) if never put
  void drop(size_t id);                    // frees the block's slot for later puts

  size_t block_floats() const { return block_floats_; }
  uint64_t memory_bytes() const { return uint64_t(ram_.size()) * block_bytes(); }  // allocated in memory
  uint64_t scratch_bytes_peak() const { return scratch_peak_; }   // largest scratch file size
  uint64_t scratch_bytes_written() const { return written_; }     // I/O volume, both directions
  uint64_t scratch_bytes_read() const { return read_; }

 private:
  uint64_t block_bytes() const { return uint64_t(block_floats_) * sizeof(float); }
  int64_t file_slot();
  struct Where {
    int64_t ram = -1, file = -1;  // slot index in memory or in the scratch file
  };
  size_t block_floats_;
  size_t max_ram_slots_;
  std::string dir_;
  std::vector<Where> where_;
  std::vector<std::vector<float>> ram_;
  std::vector<int64_t> free_ram_, free_file_;
  int fd_ = -1;
  int64_t file_slots_ = 0;
  uint64_t scratch_peak_ = 0, written_ = 0;
  mutable uint64_t read_ = 0;
};

}  // namespace squish
