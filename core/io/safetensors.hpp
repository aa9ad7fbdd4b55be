#pragma once
// Safetensors reader: mmap, strict validation, single files and sharded checkpoints
// (model.safetensors.index.json). Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#include "core/io/mapped_file.hpp"
#include "core/base/tensor.hpp"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace squish {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t offset = 0;  // absolute byte offset in the file
  size_t nbytes = 0;
  size_t file = 0;    // index into SafetensorsModel::files()
};

class SafetensorsFile {
 public:
  // Validates the whole header; throws Error(InputData) "<path>: <problem>" on any defect.
  static SafetensorsFile open(const std::string& path);
  const std::string& path() const { return map_->path(); }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::shared_ptr<const MappedFile>& mapping() const { return map_; }

 private:
  std::shared_ptr<const MappedFile> map_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: one safetensors file, or shards listed by an index. Accepts a directory
// (model.safetensors or model.safetensors.index.json inside), a .safetensors file or an index.
class SafetensorsModel {
 public:
  static SafetensorsModel open(const std::string& path);
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // shard by shard, data order
  const SafetensorsEntry* find(const std::string& name) const;
  const SafetensorsEntry& at(const std::string& name) const;  // throws InputData if missing
  // Zero-copy tensor view of an entry (keeps the mapping alive).
  Tensor load(const SafetensorsEntry& e) const;
  Tensor load(const std::string& name) const { return load(at(name)); }
  // Drop the entry's pages from this process (after streaming it).
  void release(const SafetensorsEntry& e) const;
  size_t total_bytes() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  std::vector<SafetensorsFile> files_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> by_name_;
};

}  // namespace squish
