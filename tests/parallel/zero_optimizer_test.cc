// ZeroOptimizer in one process (a group of one): every stage and reduce mode, with buckets small
// enough that parameters straddle them, equals runtime AdamW with gradient accumulation and
// clipping, including a parameter that gets no gradient on some steps. The multi-rank parity is
// tests/mpi/zero_optimizer_test.cc.
#include "parallel/zero_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "parallel/self_communicator.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"
#include "tests/support/zero_toy.h"

namespace bvllm::parallel {
namespace {

using testing::ZeroToy;

struct Mode {
  int stage;
  GradReduce reduce;
  int64_t bucket;
};

class ZeroOneProcess : public ::testing::TestWithParam<Mode> {};

TEST_P(ZeroOneProcess, EqualsAdamW) {
  const Mode mode = GetParam();
  const testing::ZeroToyRun reference = testing::zero_toy_reference(6, 3);
  SelfCommunicator self;
  const testing::ZeroToyRun zero =
      testing::zero_toy_zero(6, 3, self, testing::zero_options(mode.stage, mode.reduce, mode.bucket));
  ASSERT_EQ(zero.norms.size(), reference.norms.size());
  for (size_t s = 0; s < zero.norms.size(); ++s)
    EXPECT_NEAR(zero.norms[s], reference.norms[s], 1e-12 * reference.norms[s]);
  ASSERT_EQ(zero.params.size(), reference.params.size());
  for (size_t i = 0; i < zero.params.size(); ++i) {
    // The same additions in the same order: equal up to the f64 norm's summation order.
    EXPECT_LE(testing::rel_error(zero.params[i], reference.params[i]), 1e-7) << "param " << i;
    // ... and the parameters moved, so the comparison means something.
    EXPECT_GT(testing::rel_error(zero.params[i], ZeroToy::make().all()[i].detach()), 1e-3) << "param " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, ZeroOneProcess,
                         ::testing::Values(Mode{0, GradReduce::PerStep, 1 << 20}, Mode{1, GradReduce::PerStep, 7},
                                           Mode{2, GradReduce::PerStep, 7}, Mode{2, GradReduce::PerMicroBatch, 7},
                                           Mode{2, GradReduce::PerMicroBatch, 1}));

TEST(ZeroOptimizer, SkipsAParameterWithoutGradientAsTorchDoes) {
  // `unused` joins the loss only on micro-batches with index % 5 == 1: with one micro-batch per
  // step it has no gradient on steps 0, 2, 3, 4, and must not move then (no decay, no momentum).
  ZeroToy m = ZeroToy::make();
  SelfCommunicator self;
  ZeroOptimizer zero({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, self, self,
                     testing::zero_options(2, GradReduce::PerMicroBatch, 5));
  std::vector<float> before(4);
  for (int s = 0; s < 4; ++s) {
    std::memcpy(before.data(), m.unused.data<float>(), 16);
    zero.begin_micro_batch(true);
    m.loss(s).backward();
    zero.end_micro_batch();
    zero.reduce_gradients();
    zero.step(1.0);
    zero.zero_grad();
    const bool moved = std::memcmp(before.data(), m.unused.data<float>(), 16) != 0;
    EXPECT_EQ(moved, s == 1) << "step " << s;
  }
}

TEST(ZeroOptimizer, TakesGradientsOnlyInsideAMicroBatch) {
  ZeroToy m = ZeroToy::make();
  SelfCommunicator self;
  ZeroOptimizer zero({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, self, self, testing::zero_options(2));
  m.loss(0).backward();  // outside begin/end: .grad is left for whoever asked
  EXPECT_TRUE(m.w1.grad().defined());
  m.w1.set_grad(Tensor());
  zero.begin_micro_batch(true);
  m.loss(0).backward();
  EXPECT_FALSE(m.w1.grad().defined());  // taken into the bucket
  zero.end_micro_batch();
  try {
    zero.step(1.0);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "step before reduce_gradients");
  }
}

TEST(ZeroOptimizer, ReportsWhatLivesOnTheRank) {
  ZeroToy m = ZeroToy::make();
  SelfCommunicator self;
  const int64_t total = 35 + 5 + 15 + 3 + 4;
  ZeroOptimizer per_micro({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, self, self,
                          testing::zero_options(2, GradReduce::PerMicroBatch, 8));
  const ZeroMemory a = per_micro.memory();
  EXPECT_EQ(a.total_elements, total);
  EXPECT_EQ(a.owned_elements, total);  // a group of one owns everything
  EXPECT_EQ(a.state_bytes, 2 * total * 4);
  EXPECT_EQ(a.grad_bytes, total * 4);  // the owned shard only
  ZeroOptimizer stage0({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, self, self, testing::zero_options(0));
  EXPECT_EQ(stage0.memory().grad_bytes, total * 4);  // the full buffer (which is the shard)
}

}  // namespace
}  // namespace bvllm::parallel
