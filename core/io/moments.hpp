#pragma once
// Second moments of every linear layer's input, H = E[x xᵀ] over the calibration tokens (what
// GPTQ needs), as the score stage writes them into its output folder:
//   moments/index.json   {"format": "squish.moments/1", "tokens": N,
//                         "inputs": {"<key>": {"file": "<key>.f32.zst", "n": n}},
//                         "weights": {"<GGUF weight name>": "<key>"}}
//   moments/<key>.f32.zst  zstd of the upper triangle of H (i <= j, row by row), float32 LE,
//                          n (n + 1) / 2 values: the mean over tokens
// Keys are the GGUF name of the first weight reading the input (blk.N.attn_q.weight for q/k/v,
// blk.N.ffn_gate.weight for gate/up); "weights" maps every weight to its input's key. One
// matrix is read at a time, so a compress run holds one H (n² floats) per tensor in flight.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace squish {

// The folder's name inside a score output folder.
inline constexpr const char* kMomentsFolder = "moments";

struct MomentSum {
  int n = 0;
  const float* sum = nullptr;  // n x n row-major, upper triangle used: Σ x xᵀ over `tokens`
};

// One input's file in <dir>/moments/ (atomically): H = sum / tokens.
struct MomentFile {
  std::string file;  // name inside moments/
  int n = 0;
};
MomentFile write_moment_file(const std::string& dir, const std::string& key, MomentSum m, int64_t tokens);
// <dir>/moments/index.json over files already written: `weights` maps each weight to its input.
void write_moment_index(const std::string& dir, const std::map<std::string, MomentFile>& inputs,
                        const std::map<std::string, std::string>& weights, int64_t tokens);

class Moments {
 public:
  // The moments in a score output folder; nullopt when it has none. Throws Error(InputData) for a
  // malformed index.
  static std::optional<Moments> open(const std::string& stats_dir);
  // Whether a score output folder has moments (its index), without reading them.
  static bool present(const std::string& stats_dir);
  bool has(const std::string& gguf_weight) const { return weights_.count(gguf_weight) != 0; }
  // The key of the weight's input (shared by the weights that read it), if it has moments.
  std::optional<std::string> input_of(const std::string& gguf_weight) const {
    auto it = weights_.find(gguf_weight);
    return it == weights_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  // H of the weight's input: n x n, full symmetric, the mean over tokens. Throws Error(InputData)
  // for a missing or damaged file.
  std::vector<float> load(const std::string& gguf_weight, int* n = nullptr) const;
  int64_t tokens() const { return tokens_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t tokens_ = 0;
  std::map<std::string, std::pair<std::string, int>> inputs_;  // key -> file, n
  std::map<std::string, std::string> weights_;
};

}  // namespace squish
