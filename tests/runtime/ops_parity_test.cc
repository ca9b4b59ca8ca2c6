// Every op against PyTorch 1.13 on the inputs in tests/reference/fixtures/ops.safetensors
// (made by tests/reference/make_op_fixtures.py): outputs and input gradients, f32.
#include <gtest/gtest.h>

#include <functional>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"

namespace bvllm {
namespace {

using testing::Fixture;
using testing::rel_error;
using Inputs = std::vector<Tensor>;
using Op = std::function<Tensor(const Inputs&)>;

constexpr double kTolerance = 1e-5;

const Fixture& fixture() {
  static const Fixture f("ops");
  return f;
}

// Runs `op` on NAME.in*, compares NAME.out, backpropagates NAME.gout and compares NAME.grad*.
void check(const std::string& name, const Op& op, double tolerance = kTolerance) {
  SCOPED_TRACE(name);
  const Fixture& f = fixture();
  Inputs inputs;
  for (int i = 0; f.has(name + ".in" + std::to_string(i)); ++i) {
    Tensor t = f[name + ".in" + std::to_string(i)];
    if (f.has(name + ".grad" + std::to_string(i))) t.set_requires_grad(true);
    inputs.push_back(t);
  }
  Tensor out = op(inputs);
  EXPECT_LT(rel_error(out, f[name + ".out"]), tolerance) << "forward";
  run_backward({out}, {f[name + ".gout"]});
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    ASSERT_TRUE(inputs[i].grad().defined()) << "input " << i << " got no gradient";
    EXPECT_LT(rel_error(inputs[i].grad(), f[name + ".grad" + std::to_string(i)]), tolerance) << "grad of input " << i;
  }
}

TEST(OpsParity, Elementwise) {
  check("add", [](const Inputs& x) { return ops::add(x[0], x[1]); });
  check("sub", [](const Inputs& x) { return ops::sub(x[0], x[1]); });
  check("mul", [](const Inputs& x) { return ops::mul(x[0], x[1]); });
  check("div", [](const Inputs& x) { return ops::div(x[0], x[1]); });
  check("exp", [](const Inputs& x) { return ops::exp(x[0]); });
  check("log", [](const Inputs& x) { return ops::log(x[0]); });
  check("sqrt", [](const Inputs& x) { return ops::sqrt(x[0]); });
  check("rsqrt", [](const Inputs& x) { return ops::rsqrt(x[0]); });
  check("pow", [](const Inputs& x) { return ops::pow(x[0], 1.7); });
  check("tanh", [](const Inputs& x) { return ops::tanh(x[0]); });
  check("sigmoid", [](const Inputs& x) { return ops::sigmoid(x[0]); });
  check("silu", [](const Inputs& x) { return ops::silu(x[0]); });
  check("swiglu", [](const Inputs& x) { return ops::swiglu(x[0], x[1]); });
  check("gelu", [](const Inputs& x) { return ops::gelu(x[0]); });
  check("gelu_tanh", [](const Inputs& x) { return ops::gelu(x[0], ops::GeluApprox::Tanh); });
  check("relu", [](const Inputs& x) { return ops::relu(x[0]); });
  check("neg", [](const Inputs& x) { return ops::neg(x[0]); });
  check("scalar_affine", [](const Inputs& x) { return ops::rsub(2.5, x[0] * 3.0 + 0.5); });
}

TEST(OpsParity, Reductions) {
  check("sum_dims", [](const Inputs& x) { return ops::sum(x[0], {0, 2}); });
  check("mean_keepdim", [](const Inputs& x) { return ops::mean(x[0], {1}, true); });
  check("mean_all", [](const Inputs& x) { return ops::mean(x[0]); });
  check("max_dim", [](const Inputs& x) { return ops::max(x[0], 1); });
  check("softmax", [](const Inputs& x) { return ops::softmax(x[0], -1); });
  check("softmax_dim0", [](const Inputs& x) { return ops::softmax(x[0], 0); });
  check("log_softmax", [](const Inputs& x) { return ops::log_softmax(x[0], -1); });
}

TEST(OpsParity, MatmulAndLinear) {
  check("matmul_batched", [](const Inputs& x) { return ops::matmul(x[0], x[1]); });
  check("linear", [](const Inputs& x) { return ops::linear(x[0], x[1], x[2]); });
}

TEST(OpsParity, Norms) {
  check("layer_norm", [](const Inputs& x) { return ops::layer_norm(x[0], x[1], x[2], 1e-5); });
  check("rms_norm", [](const Inputs& x) { return ops::rms_norm(x[0], x[1], 1e-6); });
}

TEST(OpsParity, RotaryTablesAndRotation) {
  const Fixture& f = fixture();
  for (auto [name, style] : {std::pair{"rope_half", ops::RotaryStyle::HalfSplit},
                             std::pair{"rope_interleaved", ops::RotaryStyle::Interleaved}}) {
    auto [cos, sin] = ops::rotary_tables(f[std::string(name) + ".in1"], 8, 10000.0, style);
    EXPECT_LT(rel_error(cos, f[std::string(name) + ".cos"]), 1e-6) << name;
    EXPECT_LT(rel_error(sin, f[std::string(name) + ".sin"]), 1e-6) << name;
    check(name, [&, style = style](const Inputs& x) { return ops::rotary(x[0], cos, sin, style); });
  }
}

TEST(OpsParity, AttentionAcrossBlockEdges) {
  for (bool causal : {false, true}) {
    check(causal ? "attention_causal" : "attention_full", [causal](const Inputs& x) {
      ops::AttentionOptions opt;
      opt.causal = causal;
      opt.key_padding_mask = x[3];
      return ops::scaled_dot_product_attention(x[0], x[1], x[2], opt);
    });
  }
}

TEST(OpsParity, EmbeddingAndCrossEntropy) {
  check("embedding", [](const Inputs& x) { return ops::embedding(x[0], x[1]); });
  check("cross_entropy", [](const Inputs& x) { return ops::cross_entropy(x[0], x[1]); });
}

TEST(OpsParity, JoiningAndIndexing) {
  check("concat", [](const Inputs& x) { return ops::concat({x[0], x[1]}, 1); });
  check("stack", [](const Inputs& x) { return ops::stack({x[0], x[1]}, 0); });
  check("index_select", [](const Inputs& x) { return ops::index_select(x[0], 0, x[1]); });
  check("gather", [](const Inputs& x) { return ops::gather(x[0], 1, x[1]); });
  check("where", [](const Inputs& x) { return ops::where(x[0], x[1], x[2]); });
  check("masked_fill", [](const Inputs& x) { return ops::masked_fill(x[0], x[1], -2.0); });
  check("split", [](const Inputs& x) { return ops::split(x[0], {2, 3}, 1)[1]; });
  check("topk", [](const Inputs& x) { return ops::topk(x[0], 3, -1).values; });
  check("cosine_similarity", [](const Inputs& x) { return ops::cosine_similarity(x[0], x[1], -1); });
  check("bicubic", [](const Inputs& x) { return ops::interpolate_bicubic(x[0], 7, 5); });
  check("bicubic_down", [](const Inputs& x) { return ops::interpolate_bicubic(x[0], 3, 2); });
}

}  // namespace
}  // namespace bvllm
