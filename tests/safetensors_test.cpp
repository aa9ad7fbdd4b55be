#include "core/arch/hf_config.hpp"
#include "core/io/safetensors.hpp"
#include "core/base/error.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>

using namespace squish;

TEST(Safetensors, ReadsShardedCoder) {
  SQUISH_REQUIRE_SHARED();
  auto m = SafetensorsModel::open(test::shared("models/coder-28m"));
  EXPECT_EQ(m.files().size(), 4u);
  auto& e = m.at("model.embed_tokens.weight");
  EXPECT_EQ(e.dtype, DType::BF16);
  EXPECT_EQ(e.shape, (std::vector<int64_t>{8192, 512}));
}
