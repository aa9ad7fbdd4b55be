#pragma once
// Memory needs checked up front: a run that cannot fit says so before it allocates, instead of
// being killed by the OOM killer (or swapping) halfway.
#include <cstdint>
#include <optional>
#include <string_view>

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

}  // namespace squish
