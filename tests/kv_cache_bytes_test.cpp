// One KV-cache size: the planner's device budgets (arch::ModelArch::kv_cache_bytes) and the
// inference engine's allocation (infer::KVCache) count the same bytes, padding and element size
// included, for every context length and for pruned layers with their own KV head counts.
#include "core/arch/architecture.hpp"
#include "core/model/attention.hpp"

#include <gtest/gtest.h>

using namespace squish;

TEST(KvCacheBytes, ArchAndEngineAgree) {
  arch::ModelArch a;
  a.head_dim = 24;
  a.layers = {{8, 4, 64}, {6, 3, 64}, {0, 0, 64}, {8, 1, 0}};  // pruned: per-layer KV heads, a layer without attention
  for (int n : {1, 2, 15, 16, 17, 31, 32, 33, 1000, 4096, 4097, 32768}) {
    EXPECT_EQ(a.kv_cache_bytes(n, 2), infer::KVCache::bytes_needed(a, n, infer::KVType::F16)) << n;
    EXPECT_EQ(a.kv_cache_bytes(n, 4), infer::KVCache::bytes_needed(a, n, infer::KVType::F32)) << n;
    EXPECT_EQ(arch::kv_cache_positions(n) % arch::kKvCacheBlock, 0) << n;
    EXPECT_GE(arch::kv_cache_positions(n), n);
    EXPECT_LT(arch::kv_cache_positions(n), n + arch::kKvCacheBlock);
  }
  // 8 KV heads, K and V, 1000 positions padded to 1008, 24 dimensions, 2 bytes.
  EXPECT_EQ(a.kv_cache_bytes(1000, 2), 8ull * 2 * 1008 * 24 * 2);
}
