// bf16 and f16 on the CPU: each op computes in f32 and rounds once at the end, so its result is
// exactly the f32 op on the widened inputs, rounded to nearest even. Gradients flow back in the
// input dtype.
#include <gtest/gtest.h>

#include <functional>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm {
namespace {

Tensor sample(const Shape& shape, uint64_t seed, DType dtype) {
  Generator gen{seed, 0, 0};
  return ops::normal(shape, gen, 0.0, 1.0, dtype);
}

using Op = std::function<Tensor(const std::vector<Tensor>&)>;

void expect_computed_through_f32(const std::string& name, const Op& op, const std::vector<Shape>& shapes) {
  for (DType half : {DType::BF16, DType::F16}) {
    std::vector<Tensor> low, wide;
    for (size_t i = 0; i < shapes.size(); ++i) {
      low.push_back(sample(shapes[i], 10 + i, half));
      wide.push_back(low.back().to(DType::F32));
    }
    Tensor got = op(low);
    EXPECT_EQ(got.dtype(), half) << name;
    EXPECT_EQ(got.to_vector<float>(), op(wide).to(half).to_vector<float>()) << name << " " << dtype_name(half);
  }
}

TEST(HalfPrecision, OpsComputeInF32AndRoundOnce) {
  expect_computed_through_f32("add", [](auto& x) { return ops::add(x[0], x[1]); }, {{4, 8}, {8}});
  expect_computed_through_f32("gelu", [](auto& x) { return ops::gelu(x[0]); }, {{4, 8}});
  expect_computed_through_f32("matmul", [](auto& x) { return ops::matmul(x[0], x[1]); }, {{3, 16}, {16, 5}});
  expect_computed_through_f32("softmax", [](auto& x) { return ops::softmax(x[0], -1); }, {{4, 8}});
  expect_computed_through_f32("layer_norm", [](auto& x) { return ops::layer_norm(x[0], x[1], x[2], 1e-5); },
                              {{4, 8}, {8}, {8}});
  expect_computed_through_f32("sum", [](auto& x) { return ops::sum(x[0], {1}); }, {{4, 8}});
  expect_computed_through_f32(
      "attention", [](auto& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], {.causal = true}); },
      {{1, 2, 5, 8}, {1, 1, 5, 8}, {1, 1, 5, 8}});
  expect_computed_through_f32("cross_entropy",
                              [](auto& x) {
                                return ops::cross_entropy(x[0], Tensor::from<int64_t>({1, 0, 3}));
                              },
                              {{3, 6}});
}

TEST(HalfPrecision, RmsNormRoundsBeforeTheWeightAsQwen2Does) {
  // Qwen2RMSNorm: weight * (x32 * rsqrt(mean(x32^2) + eps)).to(bf16): two roundings.
  Tensor x = sample({3, 8}, 1, DType::BF16), w = sample({8}, 2, DType::BF16);
  Tensor normed = ops::rms_norm(x.to(DType::F32), ops::ones({8}), 1e-6).to(DType::BF16);
  Tensor expected = ops::mul(normed, w);  // bf16 x bf16, rounded again
  EXPECT_EQ(ops::rms_norm(x, w, 1e-6).to_vector<float>(), expected.to_vector<float>());
}

TEST(HalfPrecision, GradientsArriveInTheParameterDtype) {
  Tensor w = sample({4, 4}, 3, DType::BF16).set_requires_grad(true);
  Tensor x = sample({2, 4}, 4, DType::BF16);
  ops::sum(ops::matmul(x, w)).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().dtype(), DType::BF16);
  // d sum(x w) / d w[i][j] = sum_rows x[:, i]
  std::vector<float> xs = x.to_vector<float>(), g = w.grad().to_vector<float>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(g[i * 4 + j], to_float(to_bf16(xs[i] + xs[4 + i])));
}

}  // namespace
}  // namespace bvllm
