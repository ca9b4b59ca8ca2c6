// Temporal merging against PyTorch (tests/reference/make_bvllm_fixtures.py, which follows the
// released merge.py): kept rows and merged frames for a random case, a constructed chain
// (2 -> 1 -> 0, where the released code loses row 2), no merge, all rows equal, and one row.
#include "layers/temporal_merge.h"

#include <gtest/gtest.h>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;
using testing::rel_error;

TEST(TemporalMerge, MatchesPyTorchWithChainsResolved) {
  Fixture f("temporal_merge");
  for (int c = 0; c < 5; ++c) {
    const std::string k = "case" + std::to_string(c) + ".";
    SCOPED_TRACE(k);
    TemporalMergePlan plan = plan_temporal_merge(f[k + "weights"], 0.75);
    EXPECT_EQ(plan.kept, f[k + "kept"].to_vector<int64_t>());
    Tensor merged = apply_temporal_merge(f[k + "frames"], plan);
    ASSERT_EQ(merged.shape(), f[k + "merged"].shape());
    EXPECT_LT(rel_error(merged, f[k + "merged"]), 1e-6);
  }
}

TEST(TemporalMerge, TheChainedCaseDiffersFromTheReleasedCode) {
  // Guards the fixture itself: case1 must be a real chain, or the test above proves nothing.
  Fixture f("temporal_merge");
  TemporalMergePlan plan = plan_temporal_merge(f["case1.weights"], 0.75);
  EXPECT_EQ(plan.group[2], plan.group[0]) << "row 2 -> row 1 -> row 0 ends in kept row 0";
  EXPECT_GT(rel_error(apply_temporal_merge(f["case1.frames"], plan), f["case1.released"]), 1e-3);
}

TEST(TemporalMerge, ThresholdIsStrictAndRowZeroIsAlwaysKept) {
  // Rows (1, 0) and (1, 1) have cos = 1/sqrt(2): sim = 0.8536 merges at 0.85, not at 0.86.
  Tensor w = Tensor::from<float>({1, 0, 1, 1}, {2, 2});
  EXPECT_EQ(plan_temporal_merge(w, 0.85).kept, (std::vector<int64_t>{0}));
  EXPECT_EQ(plan_temporal_merge(w, 0.86).kept, (std::vector<int64_t>{0, 1}));
  // Orthogonal rows: sim = 0.5, never above a threshold of 0.5.
  Tensor orthogonal = Tensor::from<float>({1, 0, 0, 1}, {2, 2});
  EXPECT_EQ(plan_temporal_merge(orthogonal, 0.5).kept, (std::vector<int64_t>{0, 1}));
}

TEST(TemporalMerge, GradientsReachEveryMemberOfAGroup) {
  // Rows 0, 1 merge (identical weights); row 2 stays. d(sum(out * g))/d(rows) in f64 by finite
  // differences.
  Tensor w = Tensor::from<float>({0.9f, 0.1f, 0.0f, 0.9f, 0.1f, 0.0f, 0.0f, 0.1f, 0.9f}, {3, 3});
  TemporalMergePlan plan = plan_temporal_merge(w, 0.75);
  ASSERT_EQ(plan.kept, (std::vector<int64_t>{0, 2}));
  std::string failure =
      testing::gradcheck([&](const std::vector<Tensor>& in) { return apply_temporal_merge(in[0], plan); },
                         {testing::rand_f64({3, 2, 4}, 7)});
  EXPECT_EQ(failure, "");
}

TEST(TemporalMerge, RejectsMismatchedRows) {
  TemporalMergePlan plan = plan_temporal_merge(Tensor::from<float>({1, 0, 0, 1}, {2, 2}), 0.75);
  EXPECT_THROW(apply_temporal_merge(ops::zeros({3, 4}), plan), Error);
  EXPECT_THROW(plan_temporal_merge(ops::zeros({4}), 0.75), Error);
}

}  // namespace
}  // namespace bvllm::layers
