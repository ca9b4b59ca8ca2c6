// Generation: greedy tokens equal PyTorch's greedy loop (tests/reference/make_qwen2_fixtures.py,
// which recomputes the whole sequence each step), eos and max_new_tokens stop it, sampling is
// reproducible by seed and follows the top-k / top-p warpers.
#include "layers/generate.h"

#include <gtest/gtest.h>

#include <set>

#include "layers/qwen2_checkpoint.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;

std::shared_ptr<Qwen2ForCausalLM> load(const std::string& name) {
  return load_qwen2(std::string(BVLLM_SOURCE_DIR) + "/tests/reference/fixtures/" + name);
}

class GreedyParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyParity, TokensEqualTheReference) {
  Fixture f(GetParam());
  auto model = load(GetParam());
  std::vector<int64_t> prompt = f["generate.prompt"].to_vector<int64_t>();
  std::vector<int64_t> expected = f["generate.tokens"].to_vector<int64_t>();
  std::vector<int64_t> streamed;
  GenerationResult r = generate(*model, prompt, {.max_new_tokens = static_cast<int64_t>(expected.size())},
                                [&](int64_t t) { streamed.push_back(t); });
  EXPECT_EQ(r.tokens, expected);
  EXPECT_EQ(streamed, expected);
  EXPECT_FALSE(r.stopped_at_eos);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GreedyParity, ::testing::Values("qwen2_tied", "qwen2_untied"));

TEST(Generate, StopsAfterAnEosToken) {
  Fixture f("qwen2_untied");
  auto model = load("qwen2_untied");
  std::vector<int64_t> prompt = f["generate.prompt"].to_vector<int64_t>();
  std::vector<int64_t> expected = f["generate.tokens"].to_vector<int64_t>();
  // Call the third greedy token an eos id: generation stops right after producing it.
  GenerationResult r = generate(*model, prompt, {.max_new_tokens = 8, .eos_token_ids = {expected[2]}});
  EXPECT_EQ(r.tokens, std::vector<int64_t>(expected.begin(), expected.begin() + 3));
  EXPECT_TRUE(r.stopped_at_eos);
  EXPECT_TRUE(generate(*model, prompt, {.max_new_tokens = 0}).tokens.empty());
}

TEST(Generate, ContinuesFromAnExistingCache) {
  Fixture f("qwen2_untied");
  auto model = load("qwen2_untied");
  std::vector<int64_t> prompt = f["generate.prompt"].to_vector<int64_t>();
  std::vector<int64_t> expected = f["generate.tokens"].to_vector<int64_t>();
  KVCache cache(model->config());
  GenerationResult first = generate(*model, cache, prompt, {.max_new_tokens = 3});
  EXPECT_EQ(cache.length(), static_cast<int64_t>(prompt.size()) + 2);  // the last token is not in it yet
  GenerationResult rest = generate(*model, cache, {first.tokens.back()}, {.max_new_tokens = 5});
  std::vector<int64_t> all = first.tokens;
  all.insert(all.end(), rest.tokens.begin(), rest.tokens.end());
  EXPECT_EQ(all, expected);
}

TEST(Generate, SamplingIsReproducibleAndRespectsTopKAndTopP) {
  auto model = load("qwen2_untied");
  std::vector<int64_t> prompt = {5, 9, 13};
  GenerationOptions o{.max_new_tokens = 12, .greedy = false, .temperature = 1.5, .seed = 42};
  EXPECT_EQ(generate(*model, prompt, o).tokens, generate(*model, prompt, o).tokens);
  GenerationOptions other = o;
  other.seed = 43;
  EXPECT_NE(generate(*model, prompt, o).tokens, generate(*model, prompt, other).tokens);
  // top_k = 1 and a tiny top_p both leave only the argmax: greedy.
  std::vector<int64_t> greedy = generate(*model, prompt, {.max_new_tokens = 12}).tokens;
  GenerationOptions k1 = o;
  k1.top_k = 1;
  EXPECT_EQ(generate(*model, prompt, k1).tokens, greedy);
  GenerationOptions p0 = o;
  p0.top_p = 1e-6;
  EXPECT_EQ(generate(*model, prompt, p0).tokens, greedy);
}

TEST(NextToken, WarpersKeepWhatTransformersKeeps) {
  // logits with probabilities about 0.5, 0.25, 0.125, ... at temperature 1.
  std::vector<float> logits = {0.0f, -0.6931472f, 2.0f * -0.6931472f, 3.0f * -0.6931472f, -10.0f};
  Tensor t = Tensor::from<float>(logits);
  auto draws = [&](GenerationOptions o) {
    Generator gen{1, 0, 0};
    std::set<int64_t> seen;
    for (int i = 0; i < 400; ++i) seen.insert(next_token(t, o, gen));
    return seen;
  };
  EXPECT_EQ(next_token(t, {}, *std::make_unique<Generator>()), 0);
  EXPECT_EQ(draws({.greedy = false, .top_k = 2}), (std::set<int64_t>{0, 1}));
  // top_p 0.7: 0.5 is below it, so the 0.25 token is kept; the next (mass above it 0.75) is not.
  EXPECT_EQ(draws({.greedy = false, .top_p = 0.7}), (std::set<int64_t>{0, 1}));
  EXPECT_EQ(draws({.greedy = false, .top_p = 0.5}), (std::set<int64_t>{0}));
  EXPECT_EQ(draws({.greedy = false}).count(3), 1u);
  // Ties with the k-th value are kept (TopKLogitsWarper removes only scores below it).
  Tensor tied = Tensor::from<float>({1.0f, 3.0f, 3.0f, 0.0f});
  Generator gen{2, 0, 0};
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(next_token(tied, {.greedy = false, .top_k = 1}, gen));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
  EXPECT_EQ(next_token(tied, {}, gen), 1);  // greedy: the first maximum
}

}  // namespace
}  // namespace bvllm::layers
