// Philox4x32-10 known answers, the split-independence contract, and the distributions.
#include "runtime/rng.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/ops.h"

namespace bvllm {
namespace {

TEST(Philox, MatchesRandom123KnownAnswers) {
  // Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
  EXPECT_EQ(philox4x32({0, 0, 0, 0}, {0, 0}),
            (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, UniformIsInTheHalfOpenUnitInterval) {
  EXPECT_GT(uniform_from_u32(0), 0.0f);
  EXPECT_LE(uniform_from_u32(0xffffffffu), 1.0f);
}

TEST(Generator, OneDrawEqualsTwoDrawsSplitOnABlockBoundary) {
  Generator whole{42, 3, 0}, parts{42, 3, 0};
  std::vector<float> all = ops::uniform({64}, whole).to_vector<float>();
  std::vector<float> first = ops::uniform({32}, parts).to_vector<float>();
  std::vector<float> second = ops::uniform({32}, parts).to_vector<float>();
  first.insert(first.end(), second.begin(), second.end());
  EXPECT_EQ(all, first);
  EXPECT_EQ(whole.offset, 16u);  // 64 values = 16 blocks of four
}

TEST(Generator, SeedsAndStreamsGiveDifferentNumbers) {
  Generator a{1, 0, 0}, b{2, 0, 0}, c{1, 1, 0};
  auto x = ops::uniform({8}, a).to_vector<float>();
  EXPECT_NE(x, ops::uniform({8}, b).to_vector<float>());
  EXPECT_NE(x, ops::uniform({8}, c).to_vector<float>());
}

TEST(Distributions, MomentsAreRight) {
  Generator gen{7, 0, 0};
  const int64_t n = 200000;
  auto mean_var = [](const std::vector<double>& v) {
    double m = 0, s = 0;
    for (double x : v) m += x;
    m /= v.size();
    for (double x : v) s += (x - m) * (x - m);
    return std::pair{m, s / v.size()};
  };
  auto [um, uv] = mean_var(ops::uniform({n}, gen, -1, 3, DType::F64).to_vector<double>());
  EXPECT_NEAR(um, 1.0, 0.02);
  EXPECT_NEAR(uv, 16.0 / 12.0, 0.02);
  auto [nm, nv] = mean_var(ops::normal({n}, gen, 2.0, 0.5, DType::F64).to_vector<double>());
  EXPECT_NEAR(nm, 2.0, 0.01);
  EXPECT_NEAR(nv, 0.25, 0.01);
  // Gumbel(0, 1): mean = Euler-Mascheroni constant, variance = pi^2 / 6; always finite.
  std::vector<double> g = ops::gumbel({n}, gen, DType::F64).to_vector<double>();
  for (double x : g) ASSERT_TRUE(std::isfinite(x));
  auto [gm, gv] = mean_var(g);
  EXPECT_NEAR(gm, 0.5772156649, 0.02);
  EXPECT_NEAR(gv, M_PI * M_PI / 6, 0.05);
}

TEST(Distributions, DropoutKeepsTheExpectedFractionAndRescales) {
  Generator gen{9, 0, 0};
  Tensor x = ops::ones({100000});
  std::vector<float> y = ops::dropout(x, 0.3, true, gen).to_vector<float>();
  int kept = 0;
  for (float v : y) {
    ASSERT_TRUE(v == 0.0f || std::abs(v - 1.0f / 0.7f) < 1e-6f);
    kept += v != 0.0f;
  }
  EXPECT_NEAR(kept / 100000.0, 0.7, 0.01);
  EXPECT_TRUE(ops::dropout(x, 0.3, false, gen).same(x));  // eval mode is the identity
}

}  // namespace
}  // namespace bvllm
