// ZeroOptimizer across 2, 3 and 4 ranks (ctest runs each under mpirun): every stage and reduce
// mode, with buckets small enough that parameters straddle owners and buckets that no rank count
// divides, gives the parameters that one process with the same global batch gives (runtime AdamW,
// computed on every rank as the reference), and the per-rank memory falls as 1/dp under ZeRO-2.
#include <gtest/gtest.h>

#include <memory>

#include "parallel/mpi_communicator.h"
#include "parallel/zero_optimizer.h"
#include "tests/support/fixtures.h"
#include "tests/support/zero_toy.h"

namespace bvllm::parallel {
namespace {

struct Mode {
  int stage;
  GradReduce reduce;
  int64_t bucket;
  int64_t accum;
};

class ZeroManyRanks : public ::testing::TestWithParam<Mode> {};

TEST_P(ZeroManyRanks, EqualsOneProcessWithTheGlobalBatch) {
  const Mode mode = GetParam();
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  const int64_t dp = world->size();
  const testing::ZeroToyRun reference = testing::zero_toy_reference(5, mode.accum * dp);
  const testing::ZeroToyRun zero =
      testing::zero_toy_zero(5, mode.accum, *world, testing::zero_options(mode.stage, mode.reduce, mode.bucket));
  ASSERT_EQ(zero.norms.size(), reference.norms.size());
  for (size_t s = 0; s < zero.norms.size(); ++s)
    EXPECT_NEAR(zero.norms[s], reference.norms[s], 1e-6 * reference.norms[s]);
  for (size_t i = 0; i < zero.params.size(); ++i)
    EXPECT_LE(testing::rel_error(zero.params[i], reference.params[i]), 1e-6) << "param " << i;
}

INSTANTIATE_TEST_SUITE_P(Modes, ZeroManyRanks,
                         ::testing::Values(Mode{0, GradReduce::PerStep, 1 << 20, 1}, Mode{0, GradReduce::PerStep, 7, 2},
                                           Mode{1, GradReduce::PerStep, 7, 1}, Mode{1, GradReduce::PerStep, 13, 2},
                                           Mode{2, GradReduce::PerStep, 7, 2}, Mode{2, GradReduce::PerMicroBatch, 7, 2},
                                           Mode{2, GradReduce::PerMicroBatch, 1, 3},
                                           Mode{2, GradReduce::PerMicroBatch, 1 << 20, 1}));

// Every replica must end with the same parameters, bit for bit (they are all-gathered copies).
TEST(ZeroOptimizer, ReplicasAgreeBitwise) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  const testing::ZeroToyRun run =
      testing::zero_toy_zero(3, 2, *world, testing::zero_options(2, GradReduce::PerMicroBatch, 5));
  for (const Tensor& p : run.params) {
    Tensor mine = p.contiguous();
    Tensor max = mine.clone(), min = mine.clone();
    world->all_reduce(max, ReduceOp::Max);
    world->all_reduce(min, ReduceOp::Min);
    EXPECT_EQ(testing::rel_error(max, mine), 0.0);
    EXPECT_EQ(testing::rel_error(min, mine), 0.0);
  }
}

// ZeRO-2 keeps 1/dp of the gradients and of the AdamW state on each rank (up to the padding of
// each bucket to a multiple of dp); stage 0 keeps all of both.
TEST(ZeroOptimizer, MemoryFallsAsOneOverDp) {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  const int64_t dp = world->size();
  testing::ZeroToy m = testing::ZeroToy::make();
  const int64_t total = 35 + 5 + 15 + 3 + 4;
  ZeroOptimizer stage2({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, *world, *world,
                       testing::zero_options(2, GradReduce::PerMicroBatch, 1 << 20));
  const ZeroMemory two = stage2.memory();
  // Two buckets (one per group), each padded by fewer than dp elements.
  EXPECT_GE(two.owned_elements * dp, total);
  EXPECT_LE(two.owned_elements * dp, total + 2 * (dp - 1));
  EXPECT_EQ(two.grad_bytes, two.owned_elements * 4);
  EXPECT_LE(two.state_bytes, two.owned_elements * 8);
  EXPECT_GE(two.state_bytes * dp, (total - 2 * (dp - 1)) * 8);
  ZeroOptimizer stage0({{m.decay(), 0.1}, {m.no_decay(), 0.0}}, *world, *world,
                       testing::zero_options(0, GradReduce::PerStep, 1 << 20));
  const ZeroMemory zero = stage0.memory();
  EXPECT_EQ(zero.state_bytes, total * 8);
  EXPECT_GE(zero.grad_bytes, total * 4);
}

}  // namespace
}  // namespace bvllm::parallel
