// LayerNorm as torch.nn.LayerNorm: names and init, the formula (biased variance, eps inside the
// square root) against a plain double loop, an f64 gradcheck, bf16 through f32, shape errors.
#include "layers/layer_norm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/gradcheck.h"

namespace bvllm::layers {
namespace {

using testing::rel_error;

TEST(LayerNorm, NamesAndInitAreTorchs) {
  LayerNorm ln(5, 1e-6);
  std::vector<std::string> names;
  for (const auto& [name, t] : ln.named_parameters()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(ln.weight().to_vector<float>(), std::vector<float>(5, 1.0f));
  EXPECT_EQ(ln.bias().to_vector<float>(), std::vector<float>(5, 0.0f));
  EXPECT_TRUE(ln.weight().requires_grad());
  EXPECT_EQ(ln.dim(), 5);
  EXPECT_EQ(ln.eps(), 1e-6);
  Generator gen{1, 0, 0};
  {
    NoGradGuard no_grad;
    ln.weight().copy_(ops::normal({5}, gen));
    ln.bias().copy_(ops::normal({5}, gen));
  }
  ln.reset_parameters(gen, 0.02);
  EXPECT_EQ(ln.weight().to_vector<float>(), std::vector<float>(5, 1.0f));
  EXPECT_EQ(ln.bias().to_vector<float>(), std::vector<float>(5, 0.0f));
}

TEST(LayerNorm, ForwardIsTheFormula) {
  const int64_t rows = 6, n = 7;
  const double eps = 1e-2;  // large, so that its place in the formula shows
  LayerNorm ln(n, eps);
  Generator gen{2, 0, 0};
  {
    NoGradGuard no_grad;
    ln.weight().copy_(ops::normal({n}, gen));
    ln.bias().copy_(ops::normal({n}, gen));
  }
  Tensor x = ops::add(ops::mul(ops::normal({2, 3, n}, gen), 0.5), 0.3);
  Tensor y = ln.forward(x);
  ASSERT_EQ(y.shape(), (Shape{2, 3, n}));
  std::vector<double> xs = x.to_vector<double>(), w = ln.weight().to_vector<double>(),
                      b = ln.bias().to_vector<double>();
  std::vector<double> expected(xs.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < n; ++j) mean += xs[r * n + j] / n;
    for (int64_t j = 0; j < n; ++j) var += (xs[r * n + j] - mean) * (xs[r * n + j] - mean) / n;
    for (int64_t j = 0; j < n; ++j) expected[r * n + j] = (xs[r * n + j] - mean) / std::sqrt(var + eps) * w[j] + b[j];
  }
  EXPECT_LT(rel_error(y, Tensor::from<double>(expected, {2, 3, n})), 1e-6);

  // bf16 weights: computed through f32, rounded once.
  LayerNorm half(n, eps, DType::BF16);
  half.load_state_dict({{"weight", ln.weight()}, {"bias", ln.bias()}});
  Tensor yh = half.forward(x.to(DType::BF16));
  EXPECT_EQ(yh.dtype(), DType::BF16);
  EXPECT_LT(rel_error(yh.to(DType::F32), y), 2e-2);
}

TEST(LayerNorm, GradcheckInF64) {
  LayerNorm ln(4, 1e-5, DType::F64);
  Tensor w = testing::rand_f64({4}, 3), b = testing::rand_f64({4}, 4), x = testing::rand_f64({3, 4}, 5);
  std::string e = testing::gradcheck(
      [&](const std::vector<Tensor>& in) {
        *ln.find_parameter("weight") = in[1];
        *ln.find_parameter("bias") = in[2];
        return ln.forward(in[0]);
      },
      {x, w, b});
  EXPECT_EQ(e, "");
}

TEST(LayerNorm, RefusesAWrongWidth) {
  LayerNorm ln(4, 1e-5);
  std::string e;
  try {
    ln.forward(ops::zeros({2, 5}));
  } catch (const Error& err) {
    e = err.what();
  }
  EXPECT_NE(e.find("LayerNorm: input must be [..., 4], got [2, 5]"), std::string::npos) << e;
}

}  // namespace
}  // namespace bvllm::layers
