#include "core/io/imatrix.hpp"

#include "core/io/atomic_file.hpp"
#include "core/base/error.hpp"

#include <cstring>
#include <fstream>
#include <sstream>

namespace squish {

void write_imatrix(const std::string& path, const Imatrix& means, int ncall, const std::string& dataset) {
  std::string out;
  auto i32 = [&](int32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  i32(static_cast<int32_t>(means.size()));
  for (const auto& [name, mean] : means) {
    i32(static_cast<int32_t>(name.size()));
    out += name;
    i32(ncall);
    i32(static_cast<int32_t>(mean.size()));
    for (float m : mean) {
      const float v = m * static_cast<float>(ncall);  // llama.cpp stores the sum over calls
      out.append(reinterpret_cast<const char*>(&v), 4);
    }
  }
  i32(ncall);
  i32(static_cast<int32_t>(dataset.size()));
  out += dataset;
  write_file_atomic(path, out);
}

Imatrix read_imatrix(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ExitCode::InputData, "{}: cannot open imatrix", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string b = ss.str();
  size_t o = 0;
  auto i32 = [&]() {
    if (o + 4 > b.size()) fail(ExitCode::InputData, "{}: truncated imatrix file", path);
    int32_t v;
    std::memcpy(&v, b.data() + o, 4);
    o += 4;
    return v;
  };
  Imatrix m;
  const int32_t n = i32();
  if (n < 0 || n > 1000000) fail(ExitCode::InputData, "{}: bad imatrix entry count {}", path, n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t len = i32();
    if (len <= 0 || o + size_t(len) > b.size()) fail(ExitCode::InputData, "{}: bad imatrix name length {}", path, len);
    std::string name = b.substr(o, size_t(len));
    o += size_t(len);
    const int32_t ncall = i32();
    const int32_t nval = i32();
    if (nval <= 0 || o + size_t(nval) * 4 > b.size()) fail(ExitCode::InputData, "{}: bad imatrix entry '{}'", path, name);
    std::vector<float> v(static_cast<size_t>(nval));
    std::memcpy(v.data(), b.data() + o, size_t(nval) * 4);
    o += size_t(nval) * 4;
    if (ncall > 0)
      for (auto& x : v) x /= static_cast<float>(ncall);
    m[name] = std::move(v);
  }
  return m;
}

}  // namespace squish
