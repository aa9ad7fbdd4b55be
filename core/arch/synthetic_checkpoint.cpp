#include "core/arch/synthetic_checkpoint.hpp"
#include "core/io/text_file.hpp"

#include "core/arch/architecture.hpp"
#include "core/io/atomic_file.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/safetensors_writer.hpp"
#include "core/base/error.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

namespace squish {

namespace fs = std::filesystem;

void write_synthetic_checkpoint(const std::string& dir, const nlohmann::json& config, const SyntheticOptions& opt) {
  const ModelConfig cfg = ModelConfig::from_json(config, dir + "/config.json");
  const arch::ModelArch a = arch::ModelArch::from_config(cfg);
  if (fs::exists(dir) && !fs::is_empty(dir)) fail(ExitCode::Usage, "{}: exists and is not empty", dir);
  fs::create_directories(dir);
  write_file_atomic(dir + "/config.json", json_text(config, 2) + "\n");
  if (!opt.tokenizer_from.empty())
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      if (fs::exists(fs::path(opt.tokenizer_from) / f))
        fs::copy_file(fs::path(opt.tokenizer_from) / f, fs::path(dir) / f, fs::copy_options::overwrite_existing);

  // Checkpoint tensors (the architecture's, minus the generated ones), cut into shards.
  std::vector<arch::TensorDesc> tensors;
  for (auto& d : arch::tensors_of(a))
    if (!d.hf_name.empty()) tensors.push_back(std::move(d));
  const DType dt = opt.bf16 ? DType::BF16 : DType::F32;
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t bytes = dtype_size(dt);
    for (int64_t n : tensors[i].shape) bytes *= uint64_t(n);
    if (opt.shard_bytes && in_shard > 0 && in_shard + bytes > opt.shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(i);
    in_shard += bytes;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    std::vector<SafetensorsWriter::Decl> decls;
    for (size_t i : shards[s]) decls.push_back({tensors[i].hf_name, dt, tensors[i].shape}), weight_map[tensors[i].hf_name] = file;
    SafetensorsWriter w(dir + "/" + file, decls);
    for (size_t i : shards[s]) {
      const auto& d = tensors[i];
      // One generator per tensor, seeded by its name: the values do not depend on sharding.
      std::seed_seq seq{opt.seed, std::hash<std::string>{}(d.hf_name)};
      std::mt19937_64 rng(seq);
      std::normal_distribution<float> normal(0.f, 1.f);
      size_t n = 1;
      for (int64_t x : d.shape) n *= size_t(x);
      const bool norm = d.kind->role == arch::Role::AttnNorm || d.kind->role == arch::Role::FfnNorm ||
                        d.kind->role == arch::Role::OutputNorm;
      const bool embedding = d.kind->role == arch::Role::TokenEmbd;
      const float scale = norm || !d.kind->weight_matrix() ? 0.1f : embedding ? 1.f : 1.f / std::sqrt(float(d.shape[1]));
      std::vector<std::byte> bytes(n * dtype_size(dt));
      for (size_t k = 0; k < n; ++k) {
        const float v = (norm ? 1.f : 0.f) + scale * normal(rng);
        if (opt.bf16) {
          const uint16_t h = f32_to_bf16(v);
          std::memcpy(bytes.data() + 2 * k, &h, 2);
        } else {
          std::memcpy(bytes.data() + 4 * k, &v, 4);
        }
      }
      w.write(d.hf_name, bytes);
    }
    w.commit();
  }
  if (shards.size() > 1)
    write_file_atomic(dir + "/model.safetensors.index.json", json_text(nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}, 2) + "\n");
}

}  // namespace squish
