#pragma once
// Memory needs checked up front: a run that cannot fit says so before it allocates, instead of
// being killed by the OOM killer (or swapping) halfway.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace squish {

// Bytes this process can still allocate: MemAvailable from /proc/meminfo, lowered by a cgroup v2
// memory.max and by RLIMIT_AS/RLIMIT_DATA when those are set. UINT64_MAX when nothing is known.
uint64_t available_memory_bytes();

// Throws Error(Runtime) "<what> needs X GiB of memory, Y GiB are available" when `bytes`
// exceeds what is available.
void require_memory(uint64_t bytes, std::string_view what);

// "8G", "8GiB", "512M", "1.5G" (powers of 1024), "8GB", "500MB" (powers of 1000), or plain bytes;
// nullopt when `s` is none of these or the value does not fit.
std::optional<uint64_t> parse_byte_size(std::string_view s);

// Asks the kernel to back [p, p + bytes) with transparent huge pages (THP in "madvise" mode, as
// Debian's default): first touch then costs one fault per 2 MiB instead of one per 4 KiB. A hint
// only; ignored where unsupported.
void advise_huge_pages(void* p, size_t bytes);

// A vector of `count` zeros, huge-page advised before its first touch: for the n x n factors and
// the quantized outputs (a quarter of GPTQ's time went to 4 KiB page faults).
template <class T>
std::vector<T> large_zeroed(size_t count) {
  std::vector<T> v;
  v.reserve(count);
  advise_huge_pages(v.data(), count * sizeof(T));
  v.resize(count);
  return v;
}

}  // namespace squish
