// Fuzz target: one safetensors file (SafetensorsFile::open), input = the whole file.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/io/safetensors.hpp"

#include <limits>

using namespace squish;

SQUISH_FUZZ_TARGET(safetensors) {
  const std::string path = fuzz::scratch_dir("safetensors") + "/input.safetensors";
  fuzz::write_bytes(path, data, size);
  const SafetensorsFile f = SafetensorsFile::open(path);
  const size_t file_size = f.mapping()->size();
  size_t prev_end = 0;
  for (const auto& e : f.entries()) {
    // What open() promises: every entry inside the file, in data order, no overlap, and its byte
    // size that of its shape and dtype (computed here without overflow).
    SQUISH_FUZZ_CHECK(e.offset <= file_size && e.nbytes <= file_size - e.offset, e.name);
    SQUISH_FUZZ_CHECK(e.offset >= prev_end, e.name);
    prev_end = e.offset + e.nbytes;
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t d : e.shape) {
      SQUISH_FUZZ_CHECK(d >= 0, e.name + ": negative dimension " + std::to_string(d));
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    uint64_t bytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &bytes);
    SQUISH_FUZZ_CHECK(!overflow && bytes == e.nbytes,
                      e.name + ": nbytes " + std::to_string(e.nbytes) + " does not match its shape and dtype");
    // Touch the data the entry points at (ASan: it must be inside the mapping).
    if (e.nbytes) {
      volatile std::byte b = f.mapping()->bytes()[e.offset + e.nbytes - 1];
      (void)b;
    }
  }
  for (const auto& [k, v] : f.metadata()) (void)k.size(), (void)v.size();
  return 0;
}
