// Every differentiable op against central finite differences in f64.
#include <gtest/gtest.h>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/gradcheck.h"

namespace bvllm {
namespace {

using testing::gradcheck;
using testing::rand_f64;
using Inputs = std::vector<Tensor>;

Tensor positive(const Shape& shape, uint64_t seed) {
  Tensor t;
  {
    NoGradGuard no_grad;
    t = ops::add(ops::abs(rand_f64(shape, seed, false)), 0.5);
  }
  return t.set_requires_grad(true);
}

#define EXPECT_GRAD_OK(...) EXPECT_EQ(gradcheck(__VA_ARGS__), "")

TEST(Gradcheck, BroadcastingArithmetic) {
  Inputs in{rand_f64({3, 4}, 1), rand_f64({4}, 2)};
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::add(x[0], x[1]); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::sub(x[1], x[0]); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::mul(x[0], x[1]); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::div(x[0], x[1]); },
                 Inputs{rand_f64({3, 4}, 1), positive({3, 1}, 3)});
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0] * 3.0 + 1.0; }, Inputs{rand_f64({3, 4}, 1)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::rsub(2.0, x[0]); }, Inputs{rand_f64({3, 4}, 1)});
}

TEST(Gradcheck, UnaryFunctions) {
  Inputs any{rand_f64({2, 5}, 4)};
  Inputs pos{positive({2, 5}, 5)};
  for (auto f : {ops::neg, ops::exp, ops::tanh, ops::sigmoid, ops::silu, ops::relu})
    EXPECT_GRAD_OK([f](const Inputs& x) { return f(x[0]); }, any);
  for (auto f : {ops::log, ops::sqrt, ops::rsqrt, ops::abs})
    EXPECT_GRAD_OK([f](const Inputs& x) { return f(x[0]); }, pos);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::pow(x[0], 2.5); }, pos);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::gelu(x[0]); }, any);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::gelu(x[0], ops::GeluApprox::Tanh); }, any);
}

TEST(Gradcheck, SwiGLU) {
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::swiglu(x[0], x[1]); },
                 Inputs{rand_f64({3, 7}, 60), rand_f64({3, 7}, 61)});
  // A transposed gate is made contiguous first; its gradient goes back through the transpose.
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::swiglu(x[0].transpose(0, 1), x[1]); },
                 Inputs{rand_f64({7, 3}, 62), rand_f64({3, 7}, 63)});
  // Only up requires grad (gate frozen).
  Tensor gate = rand_f64({2, 5}, 64, false);
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::swiglu(gate, x[0]); }, Inputs{rand_f64({2, 5}, 65)});
  // No broadcasting: the shapes must match.
  EXPECT_THROW(ops::swiglu(rand_f64({3, 7}, 66, false), rand_f64({7}, 67, false)), Error);
}

TEST(Gradcheck, Reductions) {
  Inputs in{rand_f64({3, 4, 5}, 6)};
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::sum(x[0]); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::sum(x[0], {0, 2}); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::mean(x[0], {1}, true); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::mean(x[0]); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::max(x[0], 1); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::max(x[0], -1, true); }, in);
}

TEST(Gradcheck, Views) {
  Inputs in{rand_f64({2, 3, 4}, 7)};
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].transpose(0, 2).reshape({4, 6}); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].permute({1, 2, 0}).contiguous(); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].slice(2, 1, 4, 2); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].select(1, 2); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].narrow(0, 1, 1).expand({3, 3, 4}); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].unsqueeze(1).squeeze(1).flatten(); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return x[0].to(DType::F32).to(DType::F64); }, in, 1e-3, 1e-4, 1e-3);
}

TEST(Gradcheck, Matmul) {
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::matmul(x[0], x[1]); },
                 Inputs{rand_f64({3, 4}, 8), rand_f64({4, 5}, 9)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::matmul(x[0], x[1].transpose(-1, -2)); },
                 Inputs{rand_f64({2, 3, 4}, 10), rand_f64({2, 5, 4}, 11)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::matmul(x[0], x[1]); },
                 Inputs{rand_f64({2, 1, 3, 4}, 12), rand_f64({3, 4, 2}, 13)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::linear(x[0], x[1], x[2]); },
                 Inputs{rand_f64({2, 3, 4}, 14), rand_f64({5, 4}, 15), rand_f64({5}, 16)});
}

TEST(Gradcheck, SoftmaxAndNorms) {
  Inputs in{rand_f64({3, 6}, 17)};
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::softmax(x[0], -1); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::softmax(x[0], 0); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::log_softmax(x[0], 1); }, in);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::layer_norm(x[0], x[1], x[2], 1e-5); },
                 Inputs{rand_f64({2, 3, 6}, 18), rand_f64({6}, 19), rand_f64({6}, 20)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::layer_norm(x[0], Tensor(), Tensor(), 1e-5); },
                 Inputs{rand_f64({4, 6}, 21)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::rms_norm(x[0], x[1], 1e-6); },
                 Inputs{rand_f64({2, 3, 6}, 22), rand_f64({6}, 23)});
}

TEST(Gradcheck, Rotary) {
  for (auto style : {ops::RotaryStyle::HalfSplit, ops::RotaryStyle::Interleaved}) {
    auto [cos, sin] = ops::rotary_tables(Tensor::from<int64_t>({3, 0, 7, 1, 2, 9, 4, 5}, {2, 4}), 6, 10000.0, style);
    Tensor c = cos.to(DType::F64), s = sin.to(DType::F64);
    EXPECT_GRAD_OK([&](const Inputs& x) { return ops::rotary(x[0], c, s, style); }, Inputs{rand_f64({2, 3, 4, 6}, 24)});
  }
}

TEST(Gradcheck, Attention) {
  // GQA (4 query heads over 2 kv heads), longer keys than queries, causal, padding.
  Tensor mask = Tensor::from<bool>(
      {true, true, true, false, true, true, true, true, true, true, false, false, true, true, true, true, true, true},
      {2, 9});
  for (bool causal : {false, true}) {
    ops::AttentionOptions opt;
    opt.causal = causal;
    opt.key_padding_mask = mask;
    EXPECT_GRAD_OK([&](const Inputs& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], opt); },
                   Inputs{rand_f64({2, 4, 5, 3}, 25), rand_f64({2, 2, 9, 3}, 26), rand_f64({2, 2, 9, 3}, 27)});
  }
}

TEST(Gradcheck, EmbeddingAndCrossEntropy) {
  Tensor ids = Tensor::from<int64_t>({1, 3, 1, 0, 4, 3}, {2, 3});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::embedding(x[0], ids); }, Inputs{rand_f64({5, 4}, 28)});
  Tensor targets = Tensor::from<int64_t>({2, -100, 0, 4});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::cross_entropy(x[0], targets); }, Inputs{rand_f64({4, 5}, 29)});
}

TEST(Gradcheck, JoiningAndIndexing) {
  Inputs two{rand_f64({2, 3}, 30), rand_f64({2, 2}, 31)};
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::concat({x[0], x[1]}, 1); }, two);
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::stack({x[0], x[0] * 2.0}, 1); }, Inputs{rand_f64({2, 3}, 32)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::split(x[0], {1, 2}, 1)[1]; }, Inputs{rand_f64({2, 3}, 33)});
  Tensor idx = Tensor::from<int64_t>({2, 0, 2});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::index_select(x[0], 1, idx); }, Inputs{rand_f64({2, 3}, 34)});
  Tensor gidx = Tensor::from<int64_t>({0, 2, 1, 1}, {2, 2});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::gather(x[0], 1, gidx); }, Inputs{rand_f64({2, 3}, 35)});
  Tensor cond = Tensor::from<bool>({true, false, true});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::where(cond, x[0], x[1]); },
                 Inputs{rand_f64({2, 3}, 36), rand_f64({3}, 37)});
  EXPECT_GRAD_OK([&](const Inputs& x) { return ops::masked_fill(x[0], cond, -1.0); }, Inputs{rand_f64({2, 3}, 38)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::topk(x[0], 2, 1).values; }, Inputs{rand_f64({3, 5}, 39)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::topk(x[0], 2, 0).values; }, Inputs{rand_f64({3, 5}, 40)});
}

TEST(Gradcheck, CosineSimilarityAndBicubic) {
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::cosine_similarity(x[0], x[1], -1); },
                 Inputs{rand_f64({3, 4}, 41), rand_f64({3, 4}, 42)});
  EXPECT_GRAD_OK([](const Inputs& x) { return ops::interpolate_bicubic(x[0], 5, 3); },
                 Inputs{rand_f64({1, 2, 3, 4}, 43)});
}

TEST(Gradcheck, DropoutUsesOneMaskForForwardAndBackward) {
  EXPECT_GRAD_OK(
      [](const Inputs& x) {
        Generator gen{99, 0, 0};  // same draw on every evaluation
        return ops::dropout(x[0], 0.3, true, gen);
      },
      Inputs{rand_f64({4, 8}, 44)});
}

TEST(Gradcheck, ActivationCheckpointingMatchesPlainBackward) {
  Tensor w = rand_f64({4, 4}, 45);
  auto block = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::dropout(ops::tanh(ops::matmul(in[0], w)), 0.25, true, default_generator())};
  };
  Tensor x = rand_f64({3, 4}, 46);
  manual_seed(5);
  ops::sum(block({x})[0]).backward();
  Tensor gx = x.grad(), gw = w.grad();
  x.set_grad(Tensor());
  w.set_grad(Tensor());
  manual_seed(5);
  ops::sum(checkpoint(block, {x})[0]).backward();
  ASSERT_TRUE(x.grad().defined() && w.grad().defined());
  EXPECT_EQ(x.grad().to_vector<double>(), gx.to_vector<double>());
  EXPECT_EQ(w.grad().to_vector<double>(), gw.to_vector<double>());
}

}  // namespace
}  // namespace bvllm
