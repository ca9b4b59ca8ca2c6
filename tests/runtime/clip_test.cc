// Gradient-norm clipping against torch.nn.utils.clip_grad_norm_ (fixtures from
// tests/reference/optim_reference.py), hand-computed cases, shared grad storage and errors.
#include "runtime/optim/clip.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"

namespace bvllm::optim {
namespace {

Tensor leaf(const Shape& shape, DType dtype = DType::F64) {
  Tensor t = ops::zeros(shape, dtype);
  t.set_requires_grad(true);
  return t;
}

class ClipFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(ClipFixture, MatchesTorch) {
  const std::string dtype = GetParam();
  const double rtol = dtype == "f64" ? 1e-12 : 1e-6;
  const testing::Fixture f("optim_clip");
  const Tensor ga = f[dtype + "/grad/a"], gb = f[dtype + "/grad/b"];
  int cases = 0;
  for (int j = 0; f.has(dtype + "/case" + std::to_string(j) + "/config"); ++j, ++cases) {
    const std::string prefix = dtype + "/case" + std::to_string(j) + "/";
    const std::vector<double> config = f[prefix + "config"].to_vector<double>();
    const double norm_type = config[0], max_norm = config[1];
    std::vector<Tensor> params = {leaf(ga.shape(), ga.dtype()), leaf(gb.shape(), gb.dtype()), leaf({2, 2}, ga.dtype())};
    params[0].set_grad(ga);
    params[1].set_grad(gb);  // params[2] has no grad
    const double expected = f[prefix + "total"].item<double>();
    if (norm_type == 2.0) {
      EXPECT_NEAR(grad_sum_of_squares(params), expected * expected, 2 * rtol * expected * expected) << prefix;
    }
    const double total = clip_grad_norm(params, max_norm, norm_type);
    EXPECT_NEAR(total, expected, rtol * expected) << prefix << " p=" << norm_type;
    EXPECT_LE(testing::max_rel_error(params[0].grad(), f[prefix + "grad/a"], 1e-6), rtol) << prefix;
    EXPECT_LE(testing::max_rel_error(params[1].grad(), f[prefix + "grad/b"], 1e-6), rtol) << prefix;
    EXPECT_FALSE(params[2].grad().defined());
  }
  EXPECT_EQ(cases, 6);
}

INSTANTIATE_TEST_SUITE_P(Torch, ClipFixture, ::testing::Values("f64", "f32"));

TEST(Clip, HandComputed) {
  Tensor a = leaf({2});
  Tensor b = leaf({1});
  a.set_grad(Tensor::from<double>({3.0, 0.0}));
  b.set_grad(Tensor::from<double>({4.0}, {1}));
  EXPECT_EQ(grad_sum_of_squares({a, b}), 25.0);
  EXPECT_EQ(grad_norm({a, b}), 5.0);
  EXPECT_EQ(grad_norm({a, b}, 1.0), 7.0);
  EXPECT_EQ(grad_norm({a, b}, std::numeric_limits<double>::infinity()), 4.0);

  // Below max_norm: grads are left alone (the same tensors).
  const Tensor before = a.grad();
  EXPECT_EQ(clip_grad_norm({a, b}, 10.0), 5.0);
  EXPECT_TRUE(a.grad().same(before));

  // Above: scaled by max_norm / (total + 1e-6).
  EXPECT_EQ(clip_grad_norm({a, b}, 1.0), 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_DOUBLE_EQ(a.grad().to_vector<double>()[0], 3.0 * coef);
  EXPECT_DOUBLE_EQ(b.grad().item<double>(), 4.0 * coef);
  EXPECT_EQ(before.to_vector<double>()[0], 3.0);  // out of place: the old grad tensor is untouched
  EXPECT_NEAR(grad_norm({a, b}), 1.0, 1e-6);
}

TEST(Clip, GradsSharingStorageAreEachScaledOnce) {
  // Two params whose grads are views of one buffer (as with bucketed grads), and a third param
  // holding the very same grad tensor as the first.
  Tensor buffer = Tensor::from<double>({3.0, 4.0, 12.0});
  Tensor a = leaf({2}), b = leaf({1}), c = leaf({2});
  a.set_grad(buffer.narrow(0, 0, 2));
  b.set_grad(buffer.narrow(0, 2, 1));
  c.set_grad(a.grad());
  // total = sqrt(9 + 16 + 144 + 9 + 16) = sqrt(194)
  const double total = clip_grad_norm({a, b, c}, 1.0);
  EXPECT_DOUBLE_EQ(total, std::sqrt(194.0));
  const double coef = 1.0 / (total + 1e-6);
  EXPECT_DOUBLE_EQ(a.grad().to_vector<double>()[1], 4.0 * coef);
  EXPECT_DOUBLE_EQ(b.grad().item<double>(), 12.0 * coef);
  EXPECT_DOUBLE_EQ(c.grad().to_vector<double>()[0], 3.0 * coef);
  EXPECT_EQ(buffer.to_vector<double>(), (std::vector<double>{3.0, 4.0, 12.0}));
}

TEST(Clip, HalfAndStridedGrads) {
  Tensor a = leaf({2, 2}, DType::BF16);
  a.set_grad(Tensor::from<float>({1.0f, 2.0f, 2.0f, 4.0f}, {2, 2}).to(DType::BF16).transpose(0, 1));
  EXPECT_EQ(grad_norm({a}), 5.0);
  clip_grad_norm({a}, 0.5);
  EXPECT_EQ(a.grad().dtype(), DType::BF16);
  EXPECT_NEAR(grad_norm({a}), 0.5, 0.5 * 1e-2);  // bf16 rounding
}

// Large grads go through the blocked parallel reduction; it must agree with a serial f64 sum.
TEST(Clip, LargeGradsMatchSerialSum) {
  const int64_t n = 300001;
  Generator gen{.seed = 3};
  Tensor a = leaf({n}, DType::F32);
  a.set_grad(ops::normal({n}, gen, 0.0, 1.0, DType::F32));
  double serial = 0;
  for (float x : a.grad().to_vector<float>()) serial += static_cast<double>(x) * x;
  EXPECT_NEAR(grad_sum_of_squares({a}), serial, 1e-12 * serial);
  EXPECT_EQ(grad_sum_of_squares({a}), grad_sum_of_squares({a}));  // deterministic
}

TEST(Clip, NoGradsGiveZero) {
  Tensor a = leaf({3});
  EXPECT_EQ(clip_grad_norm({a}, 1.0), 0.0);
  EXPECT_EQ(grad_sum_of_squares({}), 0.0);
  EXPECT_FALSE(a.grad().defined());
}

TEST(Clip, ClipWithPrecomputedNorm) {
  // The ZeRO-2 path: partial sums of squares combined elsewhere, then applied locally.
  Tensor a = leaf({1});
  a.set_grad(Tensor::from<double>({2.0}, {1}));
  clip_grads_with_norm({a}, 1.0, 4.0);
  EXPECT_DOUBLE_EQ(a.grad().item<double>(), 2.0 / (4.0 + 1e-6));
}

TEST(Clip, RejectsInvalidArguments) {
  Tensor a = leaf({1});
  a.set_grad(Tensor::from<double>({2.0}, {1}));
  EXPECT_THROW(clip_grad_norm({a}, 1.0, 0.0), Error);
  EXPECT_THROW(clip_grad_norm({a}, 1.0, -2.0), Error);
  EXPECT_THROW(clip_grad_norm({a}, -1.0), Error);
  EXPECT_THROW(clip_grad_norm({Tensor()}, 1.0), Error);
  EXPECT_EQ(a.grad().item<double>(), 2.0);
}

}  // namespace
}  // namespace bvllm::optim
