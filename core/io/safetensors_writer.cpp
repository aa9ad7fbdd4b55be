#include "core/io/safetensors_writer.hpp"
#include "core/io/text_file.hpp"

#include "core/base/error.hpp"

#include <nlohmann/json.hpp>

namespace squish {

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Decl> tensors, std::map<std::string, std::string> metadata)
    : file_(path) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<std::pair<std::string, uint64_t>> rel;
  for (const auto& d : tensors) {
    uint64_t n = dtype_size(d.dtype);
    for (auto s : d.shape) n *= static_cast<uint64_t>(s);
    header[d.name] = {{"dtype", dtype_name(d.dtype)}, {"shape", d.shape}, {"data_offsets", {offset, offset + n}}};
    rel.emplace_back(d.name, offset);
    where_[d.name] = {offset, n};
    written_[d.name] = false;
    offset += n;
  }
  std::string h = json_text(header);
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  const uint64_t hl = h.size();
  file_.write(&hl, 8);
  file_.write(h);
  for (auto& [name, w] : where_) w.first += 8 + hl;
  file_.truncate(8 + hl + offset);
}

void SafetensorsWriter::write(const std::string& name, std::span<const std::byte> data) {
  auto it = where_.find(name);
  if (it == where_.end()) fail(ExitCode::Runtime, "{}: tensor '{}' was not declared", file_.path(), name);
  if (data.size() != it->second.second)
    fail(ExitCode::Runtime, "{}: tensor '{}' has {} bytes, declared {}", file_.path(), name, data.size(), it->second.second);
  file_.pwrite(data.data(), data.size(), it->second.first);
  std::lock_guard lock(mu_);
  written_[name] = true;
}

void SafetensorsWriter::commit() {
  for (const auto& [name, done] : written_)
    if (!done) fail(ExitCode::Runtime, "{}: tensor '{}' was never written", file_.path(), name);
  file_.commit();
}

}  // namespace squish
