// Linear and its LoRA adapter as peft builds them: shapes and names, kaiming-uniform A and zero B,
// the forward formula, dropout on the adapter's input only, and merging.
#include "layers/linear.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"

namespace bvllm::layers {
namespace {

using testing::rel_error;

std::shared_ptr<Linear> random_linear(int64_t in, int64_t out, bool bias) {
  auto l = std::make_shared<Linear>(in, out, bias);
  Generator gen{5, 0, 0};
  l->reset_parameters(gen, 0.2);
  if (bias) {
    NoGradGuard no_grad;
    l->find_parameter("bias")->copy_(ops::normal({out}, gen));
  }
  return l;
}

TEST(Linear, ForwardIsTorchLinear) {
  auto l = random_linear(6, 5, true);
  Generator gen{6, 0, 0};
  Tensor x = ops::normal({2, 3, 6}, gen);
  EXPECT_EQ(rel_error(l->forward(x), ops::add(ops::matmul(x, l->weight().transpose(0, 1)), l->bias())), 0.0);
  EXPECT_EQ(l->in_features(), 6);
  EXPECT_EQ(l->out_features(), 5);
}

TEST(Linear, LoraStartsAsTheIdentityWithPeftShapesNamesAndInit) {
  auto l = random_linear(64, 5, true);
  Generator gen{7, 0, 0};
  Tensor x = ops::normal({3, 64}, gen);
  Tensor base = l->forward(x);
  l->add_lora({.rank = 16, .alpha = 32, .dropout = 0.0}, gen);
  EXPECT_DOUBLE_EQ(l->lora_scale(), 2.0);
  std::vector<std::string> names;
  for (const auto& [name, t] : l->named_parameters()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"}));
  EXPECT_EQ(l->lora_A()->weight().shape(), (Shape{16, 64}));
  EXPECT_EQ(l->lora_B()->weight().shape(), (Shape{5, 16}));
  // kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)); variance bound^2 / 3.
  std::vector<float> a = l->lora_A()->weight().to_vector<float>();
  double bound = 1.0 / std::sqrt(64.0), sum2 = 0;
  for (float v : a) {
    EXPECT_LE(std::abs(v), bound);
    sum2 += v * v;
  }
  EXPECT_NEAR(sum2 / a.size(), bound * bound / 3, 0.15 * bound * bound / 3);
  EXPECT_EQ(l->lora_B()->weight().to_vector<float>(), std::vector<float>(80, 0.0f));
  EXPECT_EQ(rel_error(l->forward(x), base), 0.0);
  std::string e;
  try {
    l->add_lora({}, gen);
  } catch (const Error& err) {
    e = err.what();
  }
  EXPECT_NE(e.find("already has an adapter"), std::string::npos);
}

TEST(Linear, LoraForwardAndMerge) {
  auto l = random_linear(8, 6, true);
  Generator gen{8, 0, 0};
  l->add_lora({.rank = 2, .alpha = 6}, gen);
  {
    NoGradGuard no_grad;
    l->lora_B()->weight().copy_(ops::normal({6, 2}, gen));
  }
  Tensor x = ops::normal({4, 8}, gen);
  Tensor a = l->lora_A()->weight(), b = l->lora_B()->weight();
  NoGradGuard no_grad;
  Tensor reference = ops::add(ops::linear(x, l->weight(), l->bias()),
                              ops::mul(ops::matmul(ops::matmul(x, a.transpose(0, 1)), b.transpose(0, 1)), 3.0));
  EXPECT_LT(rel_error(l->forward(x), reference), 1e-6);
  Tensor weight_before = l->weight();
  Tensor merged_weight = ops::add(l->weight(), ops::mul(ops::matmul(b, a), 3.0));
  l->merge_lora();
  EXPECT_FALSE(l->has_lora());
  EXPECT_EQ(l->named_parameters().size(), 2u);
  EXPECT_TRUE(l->weight().same(weight_before));  // merged in place
  EXPECT_LT(rel_error(l->weight(), merged_weight), 1e-7);
  EXPECT_LT(rel_error(l->forward(x), reference), 1e-6);
}

TEST(Linear, LoraDropoutActsOnTheAdapterInputInTrainingOnly) {
  auto l = random_linear(16, 4, false);
  Generator gen{10, 0, 0};
  l->add_lora({.rank = 4, .alpha = 4, .dropout = 0.5}, gen);
  {
    NoGradGuard no_grad;
    l->lora_B()->weight().copy_(ops::normal({4, 4}, gen));
  }
  Tensor x = ops::normal({8, 16}, gen);
  NoGradGuard no_grad;
  Tensor base = ops::linear(x, l->weight());
  Tensor full = ops::add(base, ops::linear(ops::linear(x, l->lora_A()->weight()), l->lora_B()->weight()));
  l->eval();
  EXPECT_LT(rel_error(l->forward(x), full), 1e-6);
  l->train();
  Tensor y = l->forward(x);
  EXPECT_GT(rel_error(y, full), 1e-3);  // some adapter inputs were dropped
  EXPECT_GT(rel_error(y, base), 1e-3);  // but not all
  l->eval();
  EXPECT_LT(rel_error(l->forward(x), full), 1e-6);
}

TEST(Linear, AddLoraByPatternSkipsAdaptersAndCounts) {
  struct Pair : Module {
    Pair() {
      q = register_module("q_proj", std::make_shared<Linear>(4, 4, true));
      o = register_module("o_proj", std::make_shared<Linear>(4, 4, false));
    }
    std::shared_ptr<Linear> q, o;
  };
  auto pair = std::make_shared<Pair>();
  struct Holder : Module {
    explicit Holder(std::shared_ptr<Module> m) { register_module("attn", std::move(m)); }
  } holder(pair);
  Generator gen{11, 0, 0};
  EXPECT_EQ(add_lora(holder, NamePattern::glob("*"), {.rank = 2}, gen), 2);
  EXPECT_TRUE(pair->q->has_lora() && pair->o->has_lora());
  EXPECT_FALSE(pair->q->lora_A()->has_lora());
  EXPECT_TRUE(has_lora(holder));
  EXPECT_EQ(merge_lora(holder), 2);
  EXPECT_FALSE(has_lora(holder));
}

}  // namespace
}  // namespace bvllm::layers
