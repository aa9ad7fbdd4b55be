#pragma once
// Streaming safetensors writer: declare every tensor up front (the header comes first in the
// format), then write each tensor's bytes at its final offset, in any order, from any thread.
#include "core/io/atomic_file.hpp"
#include "core/base/tensor.hpp"

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace squish {

class SafetensorsWriter {
 public:
  struct Decl {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(const std::string& path, std::vector<Decl> tensors, std::map<std::string, std::string> metadata = {});
  // Thread-safe; data size must equal the declared shape x dtype size.
  void write(const std::string& name, std::span<const std::byte> data);
  void commit();  // every tensor must have been written

 private:
  AtomicFile file_;
  std::map<std::string, std::pair<uint64_t, uint64_t>> where_;  // name -> (absolute offset, bytes)
  std::map<std::string, bool> written_;
  std::mutex mu_;
};

}  // namespace squish
