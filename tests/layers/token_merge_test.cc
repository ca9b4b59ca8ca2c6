// The spatial token budget (ToMe multi_layer_merge as released) against PyTorch
// (tests/reference/make_bvllm_fixtures.py), the budget formula, and gradients.
#include "layers/token_merge.h"

#include <gtest/gtest.h>

#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;
using testing::rel_error;

TEST(TokenMerge, MatchesPyTorch) {
  Fixture f("token_merge");
  for (int c = 0; f.has("case" + std::to_string(c) + ".tokens"); ++c) {
    const std::string k = "case" + std::to_string(c) + ".";
    SCOPED_TRACE(k);
    const int64_t budget = f[k + "budget"].to_vector<int64_t>().at(0);
    Tensor merged = merge_tokens(f[k + "tokens"], budget);
    ASSERT_EQ(merged.shape(), f[k + "merged"].shape());
    EXPECT_LT(rel_error(merged, f[k + "merged"]), 1e-5);
  }
}

TEST(TokenMerge, BudgetPerFrame) {
  // bvlm_arch.py: N = int(max(1, (576 // 32) / K' * 32)); nothing merges up to 18 frames.
  EXPECT_EQ(spatial_tokens_per_frame(16, 32, 576), 32);
  EXPECT_EQ(spatial_tokens_per_frame(18, 32, 576), 32);
  EXPECT_EQ(spatial_tokens_per_frame(19, 32, 576), 30);  // 18 / 19 * 32 = 30.3
  EXPECT_EQ(spatial_tokens_per_frame(32, 32, 576), 18);
  EXPECT_EQ(spatial_tokens_per_frame(1000, 32, 576), 1);  // never below one token
  EXPECT_EQ(spatial_tokens_per_frame(32, 32, 0), 32);     // no budget
}

TEST(TokenMerge, MergesAreDifferentiableInTheTokens) {
  Tensor tokens = testing::rand_f64({2, 9, 3}, 11);
  std::string failure =
      testing::gradcheck([](const std::vector<Tensor>& in) { return merge_tokens(in[0], 4); }, {tokens});
  EXPECT_EQ(failure, "");
}

TEST(TokenMerge, NoMergeWhenTheTargetCoversTheTokens) {
  Tensor tokens = testing::rand_f64({1, 5, 2}, 3, false);
  EXPECT_EQ(rel_error(merge_tokens(tokens, 5), tokens), 0.0);
  EXPECT_THROW(merge_tokens(tokens, 0), Error);
}

}  // namespace
}  // namespace bvllm::layers
