#pragma once
// Read-only memory mapping of a whole file. Shared so tensor views can keep it alive.
#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace squish {

class MappedFile {
 public:
  // Throws Error(InputData) naming the file when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tell the kernel we are done with a range (streaming: keeps page cache from growing RSS).
  void release(size_t offset, size_t length) const;

 private:
  MappedFile() = default;
  std::string path_;
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace squish
