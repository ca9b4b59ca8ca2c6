// Learning-rate schedules against transformers' lambdas (tables written by
// tests/reference/optim_reference.py), hand-computed values and argument errors.
#include "runtime/optim/schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "tests/support/fixtures.h"

namespace bvllm::optim {
namespace {

// Rows of W, T, num_cycles, step, lambda.
void check_table(const std::string& kind) {
  const testing::Fixture f("optim_schedule");
  const Tensor table = f["schedule/" + kind];
  ASSERT_EQ(table.dim(), 2);
  ASSERT_EQ(table.size(1), 5);
  const std::vector<double> v = table.to_vector<double>();
  for (int64_t r = 0; r < table.size(0); ++r) {
    const double* row = &v[r * 5];
    const Schedule s{parse_schedule_kind(kind), static_cast<int64_t>(row[0]), static_cast<int64_t>(row[1]), row[2]};
    const double got = s(static_cast<int64_t>(row[3]));
    EXPECT_NEAR(got, row[4], 1e-15) << kind << " W=" << row[0] << " T=" << row[1] << " c=" << row[2]
                                    << " step=" << row[3];
  }
  EXPECT_GT(table.size(0), 20);
}

TEST(Schedule, ConstantWithWarmupMatchesTransformers) { check_table("constant_with_warmup"); }
TEST(Schedule, LinearWithWarmupMatchesTransformers) { check_table("linear"); }
TEST(Schedule, CosineWithWarmupMatchesTransformers) { check_table("cosine"); }

TEST(Schedule, WarmupFromRatioMatchesTransformers) {
  const testing::Fixture f("optim_schedule");
  const Tensor table = f["schedule/warmup_from_ratio"];
  const std::vector<double> v = table.to_vector<double>();
  for (int64_t r = 0; r < table.size(0); ++r) {
    EXPECT_EQ(warmup_steps_from_ratio(static_cast<int64_t>(v[3 * r]), v[3 * r + 1]), static_cast<int64_t>(v[3 * r + 2]))
        << "total " << v[3 * r] << " ratio " << v[3 * r + 1];
  }
}

TEST(Schedule, HandComputedValues) {
  // Warmup 2 of 10 steps: 0, 1/2, then down from 1.
  EXPECT_EQ(linear_with_warmup_lambda(0, 2, 10), 0.0);
  EXPECT_EQ(linear_with_warmup_lambda(1, 2, 10), 0.5);
  EXPECT_EQ(linear_with_warmup_lambda(2, 2, 10), 1.0);
  EXPECT_EQ(linear_with_warmup_lambda(6, 2, 10), 0.5);
  EXPECT_EQ(linear_with_warmup_lambda(10, 2, 10), 0.0);
  EXPECT_EQ(linear_with_warmup_lambda(12, 2, 10), 0.0);  // clamped at 0 past the end
  EXPECT_EQ(constant_with_warmup_lambda(0, 4), 0.0);
  EXPECT_EQ(constant_with_warmup_lambda(3, 4), 0.75);
  EXPECT_EQ(constant_with_warmup_lambda(4, 4), 1.0);
  EXPECT_EQ(constant_with_warmup_lambda(0, 0), 1.0);  // no warmup: the first step has the full lr
  EXPECT_EQ(cosine_with_warmup_lambda(0, 0, 4), 1.0);
  EXPECT_NEAR(cosine_with_warmup_lambda(2, 0, 4), 0.5, 1e-16);
  EXPECT_NEAR(cosine_with_warmup_lambda(1, 0, 4), 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-16);
  EXPECT_NEAR(cosine_with_warmup_lambda(4, 0, 4), 0.0, 1e-16);
  EXPECT_NEAR(cosine_with_warmup_lambda(2, 0, 4, 1.0), 0.0, 1e-16);  // a full cycle: back up at T
  EXPECT_NEAR(cosine_with_warmup_lambda(4, 0, 4, 1.0), 1.0, 1e-16);
  EXPECT_EQ(cosine_with_warmup_lambda(1, 3, 10), 1.0 / 3.0);
  // Video-LLM recipes: cosine with warmup_ratio 0.03.
  EXPECT_EQ(warmup_steps_from_ratio(1000, 0.03), 30);
  EXPECT_EQ(warmup_steps_from_ratio(1001, 0.03), 31);
  EXPECT_EQ(warmup_steps_from_ratio(5, 0.0), 0);
}

TEST(Schedule, StructPicksTheKind) {
  const Schedule lin{ScheduleKind::Linear, 2, 10};
  EXPECT_EQ(lin(6), 0.5);
  const Schedule cos{parse_schedule_kind("cosine"), 0, 4};
  EXPECT_NEAR(cos(2), 0.5, 1e-16);
  const Schedule constant{parse_schedule_kind("constant_with_warmup"), 4};
  EXPECT_EQ(constant(100), 1.0);
  EXPECT_EQ(parse_schedule_kind("linear"), ScheduleKind::Linear);
}

TEST(Schedule, RejectsInvalidArguments) {
  EXPECT_THROW(linear_with_warmup_lambda(-1, 2, 10), Error);
  EXPECT_THROW(linear_with_warmup_lambda(0, -2, 10), Error);
  EXPECT_THROW(linear_with_warmup_lambda(0, 2, -10), Error);
  EXPECT_THROW(cosine_with_warmup_lambda(0, 2, -1), Error);
  EXPECT_THROW(cosine_with_warmup_lambda(0, 2, 10, std::nan("")), Error);
  EXPECT_THROW(constant_with_warmup_lambda(-3, 0), Error);
  EXPECT_THROW(warmup_steps_from_ratio(100, -0.1), Error);
  EXPECT_THROW(warmup_steps_from_ratio(100, 1.5), Error);
  EXPECT_THROW(warmup_steps_from_ratio(-1, 0.1), Error);
  EXPECT_THROW(parse_schedule_kind("cosine_with_restarts"), Error);
}

}  // namespace
}  // namespace bvllm::optim
