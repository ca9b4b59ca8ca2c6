// Attention behaviours beyond parity: memory linear in sequence length, fully masked rows,
// cross-attention shapes and argument errors.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm {
namespace {

long peak_rss_kb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

TEST(Attention, MemoryDoesNotGrowWithTheSquareOfTheLength) {
  // One head of 16384 positions: a materialized score matrix would take 1 GiB in f32.
  constexpr int64_t kLen = 16384, kDim = 8;
  Generator gen{3, 0, 0};
  Tensor q = ops::normal({1, 1, kLen, kDim}, gen), k = ops::normal({1, 1, kLen, kDim}, gen),
         v = ops::normal({1, 1, kLen, kDim}, gen);
  NoGradGuard no_grad;
  const long before = peak_rss_kb();
  Tensor out = ops::scaled_dot_product_attention(q, k, v, {.causal = true});
  const long grown_mb = (peak_rss_kb() - before) / 1024;
  EXPECT_LT(grown_mb, 64) << "peak memory grew by " << grown_mb << " MiB";
  EXPECT_EQ(out.shape(), q.shape());
}

TEST(Attention, RowsThatSeeNoKeyAreZeroAndPassNoGradient) {
  Generator gen{4, 0, 0};
  Tensor q = ops::normal({1, 1, 2, 4}, gen, 0, 1, DType::F64).set_requires_grad(true);
  Tensor k = ops::normal({1, 1, 3, 4}, gen, 0, 1, DType::F64).set_requires_grad(true);
  Tensor v = ops::normal({1, 1, 3, 4}, gen, 0, 1, DType::F64).set_requires_grad(true);
  Tensor mask = Tensor::from<bool>({false, false, false}, {1, 3});
  Tensor out = ops::scaled_dot_product_attention(q, k, v, {.key_padding_mask = mask});
  for (double x : out.to_vector<double>()) EXPECT_EQ(x, 0.0);
  ops::sum(out).backward();
  for (const Tensor* t : {&q, &k, &v})
    for (double g : t->grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
}

TEST(Attention, CrossAttentionTakesAnotherKeyLength) {
  Generator gen{5, 0, 0};
  Tensor q = ops::normal({2, 4, 3, 8}, gen), kv = ops::normal({2, 2, 11, 8}, gen);
  EXPECT_EQ(ops::scaled_dot_product_attention(q, kv, kv).shape(), (Shape{2, 4, 3, 8}));
}

TEST(Attention, ArgumentErrorsSayWhatWasExpected) {
  Tensor q = ops::zeros({1, 3, 4, 8}), kv = ops::zeros({1, 2, 4, 8});
  try {
    ops::scaled_dot_product_attention(q, kv, kv);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 query heads are not a multiple of 2 kv heads"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ops::scaled_dot_product_attention(ops::zeros({1, 2, 4, 8}), kv, ops::zeros({1, 2, 5, 8})), Error);
  EXPECT_THROW(ops::scaled_dot_product_attention(ops::zeros({1, 2, 4, 8}), kv, kv,
                                                 {.key_padding_mask = ops::ones({1, 3}, DType::Bool)}),
               Error);
}

TEST(CrossEntropy, AllTargetsIgnoredGivesZeroLossAndZeroGradient) {
  Tensor logits = ops::ones({2, 3}, DType::F64).set_requires_grad(true);
  Tensor loss = ops::cross_entropy(logits, Tensor::from<int64_t>({-100, -100}));
  EXPECT_EQ(loss.item<double>(), 0.0);
  loss.backward();
  for (double g : logits.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
}

TEST(CrossEntropy, TargetsOutsideTheVocabularyAreNamed) {
  try {
    ops::cross_entropy(ops::zeros({1, 3}), Tensor::from<int64_t>({7}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 7 is outside [0, 3)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace bvllm
