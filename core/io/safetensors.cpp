#include "core/io/safetensors.hpp"
#include "core/io/text_file.hpp"

#include "core/base/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>

namespace fs = std::filesystem;

namespace squish {

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw Error(ExitCode::InputData, fmt::format("{}: invalid safetensors: {}", path, what));
}
}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.map_ = MappedFile::open(path);
  const auto bytes = f.map_->bytes();
  if (bytes.size() < 8) bad(path, fmt::format("file is {} bytes, shorter than the 8-byte header length", bytes.size()));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // little-endian host (x86-64, aarch64)
  if (n > kMaxHeader) bad(path, fmt::format("header length {} exceeds the 100 MB limit", n));
  if (n > bytes.size() - 8) bad(path, fmt::format("header length {} runs past end of file ({} bytes)", n, bytes.size()));
  const char* hp = reinterpret_cast<const char*>(bytes.data() + 8);
  const nlohmann::json header = parse_json(std::string_view(hp, n), path, "header");
  if (!header.is_object()) bad(path, "header is not a JSON object");
  const size_t data_start = 8 + n;
  const size_t data_size = bytes.size() - data_start;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) bad(path, fmt::format("__metadata__.{} is not a string", m.key()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad(path, fmt::format("tensor '{}' lacks dtype/shape/data_offsets", name));
    SafetensorsEntry e;
    e.name = name;
    if (!v["dtype"].is_string() || !dtype_from_safetensors(v["dtype"].get<std::string>(), e.dtype))
      bad(path, fmt::format("tensor '{}' has unknown dtype {}", name, json_text(v["dtype"])));
    const auto& shape = v["shape"];
    if (!shape.is_array()) bad(path, fmt::format("tensor '{}' shape is not an array", name));
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) bad(path, fmt::format("tensor '{}' has a bad dimension {}", name, json_text(d)));
      const uint64_t dim = d.get<uint64_t>();
      // Bounded so numel * element size fits in 64 bits and every dimension in int64.
      if (dim > (uint64_t(1) << 48) || (dim != 0 && numel > (uint64_t(1) << 56) / dim))
        bad(path, fmt::format("tensor '{}' shape overflows", name));
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad(path, fmt::format("tensor '{}' data_offsets must be two unsigned integers", name));
    const uint64_t b = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (b > end) bad(path, fmt::format("tensor '{}' data_offsets [{}, {}] are reversed", name, b, end));
    if (end > data_size)
      bad(path, fmt::format("tensor '{}' data_offsets [{}, {}] run past the data section ({} bytes)", name, b, end, data_size));
    const uint64_t expect = numel * dtype_size(e.dtype);
    if (end - b != expect)
      bad(path, fmt::format("tensor '{}' has {} bytes but shape {} of {} needs {}", name, end - b, json_text(shape),
                            dtype_name(e.dtype), expect));
    e.offset = data_start + b;
    e.nbytes = end - b;
    f.entries_.push_back(std::move(e));
  }
  std::sort(f.entries_.begin(), f.entries_.end(),
            [](const auto& a, const auto& b) { return a.offset < b.offset || (a.offset == b.offset && a.nbytes < b.nbytes); });
  for (size_t i = 1; i < f.entries_.size(); ++i) {
    const auto& p = f.entries_[i - 1];
    const auto& c = f.entries_[i];
    if (c.offset < p.offset + p.nbytes)
      bad(path, fmt::format("tensors '{}' and '{}' overlap", p.name, c.name));
  }
  return f;
}

SafetensorsModel SafetensorsModel::open(const std::string& path) {
  SafetensorsModel m;
  std::vector<std::string> shard_paths;
  std::map<std::string, std::string> weight_map;  // from the index, checked against the shards
  fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) fail(ExitCode::InputData, "{}: no such file or directory", path);
  fs::path index;
  if (fs::is_directory(p)) {
    m.root_ = p.string();
    if (fs::exists(p / "model.safetensors.index.json")) index = p / "model.safetensors.index.json";
    else if (fs::exists(p / "model.safetensors")) shard_paths.push_back((p / "model.safetensors").string());
    else {
      for (auto& de : fs::directory_iterator(p))
        if (de.path().extension() == ".safetensors") shard_paths.push_back(de.path().string());
      std::sort(shard_paths.begin(), shard_paths.end());
      if (shard_paths.empty()) fail(ExitCode::InputData, "{}: no model.safetensors or model.safetensors.index.json", path);
    }
  } else if (p.string().ends_with(".index.json")) {
    index = p;
    m.root_ = p.parent_path().string();
  } else {
    m.root_ = p.parent_path().string();
    shard_paths.push_back(p.string());
  }
  if (!index.empty()) {
    const nlohmann::json j = read_json_file(index.string(), "index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(ExitCode::InputData, "{}: index has no weight_map object", index.string());
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) fail(ExitCode::InputData, "{}: weight_map.{} is not a file name", index.string(), it.key());
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "..")
        fail(ExitCode::InputData, "{}: weight_map.{} names a path outside the folder: {}", index.string(), it.key(), file);
      weight_map[it.key()] = file;
      const std::string sp = (index.parent_path() / file).string();
      if (std::find(shard_paths.begin(), shard_paths.end(), sp) == shard_paths.end()) shard_paths.push_back(sp);
    }
    std::sort(shard_paths.begin(), shard_paths.end());
  }
  for (const auto& sp : shard_paths) {
    m.files_.push_back(SafetensorsFile::open(sp));
    const size_t fi = m.files_.size() - 1;
    for (auto e : m.files_.back().entries()) {
      e.file = fi;
      if (m.by_name_.count(e.name)) fail(ExitCode::InputData, "{}: tensor '{}' appears in more than one shard", sp, e.name);
      if (!weight_map.empty()) {
        auto w = weight_map.find(e.name);
        if (w == weight_map.end())
          fail(ExitCode::InputData, "{}: tensor '{}' is not listed in the index", sp, e.name);
        if ((index.parent_path() / w->second).string() != sp)
          fail(ExitCode::InputData, "{}: tensor '{}' is listed in the index under {}", sp, e.name, w->second);
      }
      m.by_name_[e.name] = m.entries_.size();
      m.entries_.push_back(std::move(e));
    }
  }
  for (const auto& [name, file] : weight_map)
    if (!m.by_name_.count(name))
      fail(ExitCode::InputData, "{}: index lists tensor '{}' in {}, which does not contain it", index.string(), name, file);
  return m;
}

const SafetensorsEntry* SafetensorsModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

const SafetensorsEntry& SafetensorsModel::at(const std::string& name) const {
  const auto* e = find(name);
  if (!e) fail(ExitCode::InputData, "{}: checkpoint has no tensor '{}'", root_, name);
  return *e;
}

Tensor SafetensorsModel::load(const SafetensorsEntry& e) const {
  const auto& map = files_.at(e.file).mapping();
  Tensor t;
  t.name = e.name;
  t.dtype = e.dtype;
  t.shape = e.shape;
  t.data = Buffer::view(map->bytes().subspan(e.offset, e.nbytes), map);
  return t;
}

void SafetensorsModel::release(const SafetensorsEntry& e) const { files_.at(e.file).mapping()->release(e.offset, e.nbytes); }

size_t SafetensorsModel::total_bytes() const {
  size_t s = 0;
  for (const auto& e : entries_) s += e.nbytes;
  return s;
}

}  // namespace squish
