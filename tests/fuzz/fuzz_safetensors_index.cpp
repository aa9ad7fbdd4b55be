// Fuzz target: a sharded checkpoint's model.safetensors.index.json (SafetensorsModel::open on a
// folder), input = the index JSON. The folder also holds two small valid shards written at start-up,
// so an index that names them consistently opens.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/io/safetensors.hpp"

#include <cstring>

using namespace squish;

namespace {

// A safetensors file with F32 tensors of the given shapes (data zero).
std::string shard(const std::vector<std::pair<std::string, std::vector<int>>>& tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  size_t off = 0;
  for (const auto& [name, shape] : tensors) {
    size_t n = 4;
    std::string s;
    for (int d : shape) {
      n *= static_cast<size_t>(d);
      if (!s.empty()) s += ',';
      s += std::to_string(d);
    }
    header += ",\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + s + "],\"data_offsets\":[" + std::to_string(off) + "," +
              std::to_string(off + n) + "]}";
    off += n;
  }
  header += "}";
  while ((8 + header.size()) % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t len = header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + std::string(off, '\0');
}

const std::string& folder() {
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_dir("safetensors_index");
    fuzz::write_bytes(d + "/model-00001-of-00002.safetensors",
                      shard({{"model.embed_tokens.weight", {8, 4}}, {"model.norm.weight", {4}}}));
    fuzz::write_bytes(d + "/model-00002-of-00002.safetensors",
                      shard({{"model.layers.0.mlp.down_proj.weight", {4, 6}}, {"lm_head.weight", {8, 4}}}));
    return d;
  }();
  return dir;
}

}  // namespace

SQUISH_FUZZ_TARGET(safetensors_index) {
  const std::string& dir = folder();
  fuzz::write_bytes(dir + "/model.safetensors.index.json", data, size);
  const SafetensorsModel m = SafetensorsModel::open(dir);
  // Every entry is findable by name and lies inside its shard's mapping.
  for (const auto& e : m.entries()) {
    SQUISH_FUZZ_CHECK(m.find(e.name) == &e, e.name);
    SQUISH_FUZZ_CHECK(e.file < m.files().size(), e.name);
    const auto& map = m.files()[e.file].mapping();
    SQUISH_FUZZ_CHECK(e.offset <= map->size() && e.nbytes <= map->size() - e.offset, e.name);
    const Tensor t = m.load(e);
    (void)t;
  }
  (void)m.total_bytes();
  return 0;
}
