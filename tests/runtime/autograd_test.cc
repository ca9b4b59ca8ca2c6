// The autograd engine: accumulation, ordering, hooks, grad mode, freeing, checkpointing.
#include "runtime/autograd.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/ops.h"

namespace bvllm {
namespace {

Tensor leaf(std::initializer_list<double> v) { return Tensor::from<double>(v).set_requires_grad(true); }

TEST(Autograd, GradientsAccumulateAcrossUsesAndBackwards) {
  Tensor x = leaf({1, 2, 3});
  Tensor y = ops::sum(ops::add(ops::mul(x, x), x));  // d/dx = 2x + 1
  y.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{3, 5, 7}));
  ops::sum(x).backward();  // accumulates into .grad
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{4, 6, 8}));
  x.set_grad(Tensor());
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, SharedGradientsDoNotAliasBetweenLeaves) {
  Tensor a = leaf({1, 2}), b = leaf({3, 4});
  ops::sum(ops::add(a, b)).backward();  // add passes one gradient tensor to both leaves
  EXPECT_FALSE(a.grad().shares_storage(b.grad()));
}

TEST(Autograd, DiamondGraphSumsBothPaths) {
  Tensor x = leaf({2});
  Tensor h = ops::exp(x);
  Tensor y = ops::add(ops::mul(h, h), h);  // e^2x + e^x
  y.backward(Tensor::from<double>({1.0}));
  EXPECT_NEAR(x.grad().item<double>(), 2 * std::exp(4.0) + std::exp(2.0), 1e-9);
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = leaf({1, 2});
  {
    NoGradGuard no_grad;
    Tensor y = ops::mul(x, x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
  }
  EXPECT_TRUE(ops::mul(x, x).requires_grad());
  EXPECT_TRUE(grad_mode_enabled());
}

TEST(Autograd, SavedTensorsAreFreedAfterBackward) {
  Tensor x = leaf({1, 2, 3});
  std::weak_ptr<Storage> saved;
  Tensor y;
  {
    Tensor e = ops::exp(x);  // exp saves its output
    saved = e.storage();
    y = ops::sum(ops::mul(e, 2.0));
  }
  EXPECT_FALSE(saved.expired());  // held by the graph
  y.backward();
  EXPECT_TRUE(saved.expired());
  EXPECT_THROW(y.backward(), std::exception);  // the graph was consumed
}

TEST(Autograd, GradReadyHooksRunOncePerPassAfterAccumulation) {
  Tensor w = leaf({1, 2});
  std::vector<double> seen;
  int calls = 0;
  w.register_grad_ready_hook([&](Tensor& p) {
    ++calls;
    seen = p.grad().to_vector<double>();
  });
  Tensor y = ops::sum(ops::add(ops::mul(w, 3.0), ops::mul(w, w)));  // two uses, one hook call
  y.backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, (std::vector<double>{5, 7}));
}

TEST(Autograd, HooksFireInReverseOrderOfUse) {
  // ZeRO-2 relies on this: the last layer's parameters are ready first.
  Tensor w1 = leaf({1}), w2 = leaf({2}), w3 = leaf({3});
  std::vector<int> order;
  w1.register_grad_ready_hook([&](Tensor&) { order.push_back(1); });
  w2.register_grad_ready_hook([&](Tensor&) { order.push_back(2); });
  w3.register_grad_ready_hook([&](Tensor&) { order.push_back(3); });
  Tensor x = Tensor::from<double>({1.5});
  Tensor h = ops::tanh(ops::mul(x, w1));
  h = ops::tanh(ops::mul(h, w2));
  h = ops::tanh(ops::mul(h, w3));
  ops::sum(h).backward();
  EXPECT_EQ(order, (std::vector<int>{3, 2, 1}));
}

TEST(Autograd, InPlaceWritesToTrackedTensorsAreRefused) {
  Tensor x = leaf({1, 2});
  EXPECT_THROW(x.fill_(0), Error);
  NoGradGuard no_grad;
  x.fill_(0);
  EXPECT_EQ(x.to_vector<double>(), (std::vector<double>{0, 0}));
}

TEST(Autograd, IntegerOutputsCarryNoGradient) {
  Tensor x = leaf({3, 1, 2});
  ops::TopK t = ops::topk(x, 2);
  EXPECT_TRUE(t.values.requires_grad());
  EXPECT_FALSE(t.indices.requires_grad());
  EXPECT_FALSE(ops::argmax(x, 0).requires_grad());
}

TEST(Autograd, BackwardNeedsAGradientForNonScalars) {
  Tensor x = leaf({1, 2});
  EXPECT_THROW(ops::mul(x, x).backward(), Error);
  EXPECT_THROW(Tensor::from<double>({1.0}).backward(), Error);
}

TEST(Autograd, CheckpointRecomputesWithTheSameNoiseAndFreesActivations) {
  Tensor x = leaf({0.5, -1.0, 2.0, 0.1});
  Tensor w = leaf({1.5, 0.5, -0.7, 1.1});
  int calls = 0;
  auto block = [&](const std::vector<Tensor>& in) {
    ++calls;
    return std::vector<Tensor>{ops::dropout(ops::sigmoid(ops::mul(in[0], w)), 0.5, true, default_generator())};
  };
  manual_seed(11);
  Tensor plain = block({x})[0];
  ops::sum(plain).backward();
  std::vector<double> gx = x.grad().to_vector<double>(), gw = w.grad().to_vector<double>();
  x.set_grad(Tensor());
  w.set_grad(Tensor());

  manual_seed(11);
  calls = 0;
  Tensor ck = checkpoint(block, {x})[0];
  EXPECT_EQ(ck.to_vector<double>(), plain.to_vector<double>());
  EXPECT_EQ(calls, 1);
  ops::sum(ck).backward();
  EXPECT_EQ(calls, 2);  // recomputed once in backward
  EXPECT_EQ(x.grad().to_vector<double>(), gx);
  EXPECT_EQ(w.grad().to_vector<double>(), gw);
}

TEST(Autograd, CheckpointWithOnlyParametersRequiringGrad) {
  Tensor x = Tensor::from<double>({1, 2});
  Tensor w = leaf({3, 4});
  auto out = checkpoint([&](const std::vector<Tensor>& in) { return std::vector<Tensor>{ops::mul(in[0], w)}; }, {x});
  ops::sum(out[0]).backward();
  EXPECT_EQ(w.grad().to_vector<double>(), (std::vector<double>{1, 2}));
}

}  // namespace
}  // namespace bvllm
