#pragma once
// llama.cpp's importance-matrix file (the legacy `imatrix.dat` of llama-imatrix / llama-quantize):
//   i32 n_entries; per entry: i32 name length, name (GGUF tensor name), i32 ncall, i32 nval,
//   f32 values[nval] = mean over tokens of x^2 per input column, times ncall;
//   then i32 last_call, i32 length, dataset name.
// Squish's score stage writes it; the compress stage (and llama-quantize) read it.
#include <map>
#include <string>
#include <vector>

namespace squish {

// name -> per-column mean of x^2.
using Imatrix = std::map<std::string, std::vector<float>>;

void write_imatrix(const std::string& path, const Imatrix& means, int ncall, const std::string& dataset);
// Returns the per-column means (values / ncall, as llama-quantize does). Throws Error(InputData).
Imatrix read_imatrix(const std::string& path);

}  // namespace squish
