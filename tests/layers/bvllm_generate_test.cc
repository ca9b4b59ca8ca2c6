// Generation with a B-VLLM (layers/generate.h generate_from_embeds over
// BvllmForCausalLM::input_embeds): one sample's spliced input embeddings give the logits forward()
// gives; greedy generation from them, with a KV cache, gives the tokens of a greedy loop that runs
// the whole model (vision side included) over the whole sequence at every step; a second turn
// appended to the cache gives what the whole conversation recomputed gives.
#include <gtest/gtest.h>

#include <algorithm>

#include "layers/bvllm.h"
#include "layers/generate.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/messages.h"
#include "tests/support/tiny_models.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;
using testing::rel_error;

// The bvllm_forward fixture's model (tiny config, LoRA on every projection) and its samples: a
// 5-frame video, an image, a text-only one (tests/reference/make_bvllm_fixtures.py).
std::shared_ptr<BvllmForCausalLM> fixture_model(const Fixture& f) {
  auto model = std::make_shared<BvllmForCausalLM>(testing::tiny_bvllm_config());
  Generator gen{1};
  add_lora(*model, NamePattern::regex(R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)"), {.rank = 4, .alpha = 8.0},
           gen);
  const NamedTensors params = f.tensors("param.");
  model->load_state_dict({params.begin(), params.end()});
  model->eval();
  return model;
}

BvllmSample fixture_sample(const Fixture& f, int s) {
  BvllmSample sample;
  const std::string k = std::to_string(s);
  sample.ids = f["input.ids." + k];
  sample.labels = f["input.labels." + k];
  if (s < 2) sample.pixels = f["input.pixels." + k];
  sample.bert_ids = f["input.bert_ids"].select(0, s).contiguous();
  sample.bert_mask = f["input.bert_mask"].select(0, s).contiguous();
  return sample;
}

std::vector<int64_t> ids_of(const BvllmSample& sample) { return sample.ids.to_vector<int64_t>(); }

BvllmSample with_ids(BvllmSample sample, const std::vector<int64_t>& ids) {
  sample.ids = Tensor::from<int64_t>(ids);
  sample.labels = Tensor();
  return sample;
}

int64_t argmax(const Tensor& row) {
  const std::vector<float> x = row.to(DType::F32).to_vector<float>();
  return std::max_element(x.begin(), x.end()) - x.begin();
}

// Greedy decoding the slow way: every step runs forward() over the whole sequence so far.
std::vector<int64_t> greedy_by_full_forward(const BvllmForCausalLM& model, const BvllmSample& sample,
                                            std::vector<int64_t> ids, int64_t steps) {
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < steps; ++i) {
    BvllmOutput out = model.forward({with_ids(sample, ids)}, {.noise_free = true});
    const int64_t last = out.lengths[0] - 1;
    tokens.push_back(argmax(out.logits.select(0, 0).select(0, last)));
    ids.push_back(tokens.back());
  }
  return tokens;
}

TEST(BvllmInputEmbeds, GiveTheLogitsOfForward) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  for (int s = 0; s < 3; ++s) {
    const BvllmSample sample = fixture_sample(f, s);
    const BvllmOutput full = model->forward({sample}, {.noise_free = true});
    const BvllmInput input = model->input_embeds(sample, {.noise_free = true});
    ASSERT_EQ(input.embeds.dim(), 2);
    EXPECT_EQ(input.embeds.size(0), full.lengths[0]) << "sample " << s;
    Tensor logits = model->forward_embeds(input.embeds.reshape({1, input.embeds.size(0), input.embeds.size(1)}));
    EXPECT_EQ(rel_error(logits, full.logits), 0.0) << "sample " << s;
    EXPECT_EQ(input.labels.to_vector<int64_t>(), full.labels.select(0, 0).to_vector<int64_t>()) << "sample " << s;
    const std::vector<int64_t> ids = ids_of(sample);
    if (s < 2) {
      const int64_t at = std::find_if(ids.begin(), ids.end(), [](int64_t id) { return id < 0; }) - ids.begin();
      EXPECT_EQ(input.visual_start, at);
      EXPECT_EQ(input.visual.tokens, full.visual[0].tokens);
      EXPECT_EQ(input.embeds.size(0), static_cast<int64_t>(ids.size()) - 1 + input.visual.tokens);
      EXPECT_EQ(rel_error(input.visual.weights, full.visual[0].weights), 0.0);
    } else {
      EXPECT_EQ(input.visual.tokens, 0);
      EXPECT_EQ(input.embeds.size(0), static_cast<int64_t>(ids.size()));
    }
  }
}

TEST(BvllmGenerate, GreedyFromEmbedsEqualsTheFullForwardLoop) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  for (int s = 0; s < 3; ++s) {
    const BvllmSample sample = fixture_sample(f, s);
    const std::vector<int64_t> ids = ids_of(sample);
    const std::vector<int64_t> expected = greedy_by_full_forward(*model, sample, ids, 6);
    KVCache cache(model->config());
    std::vector<int64_t> streamed;
    const BvllmInput input = model->input_embeds(with_ids(sample, ids), {.noise_free = true});
    GenerationResult r = generate_from_embeds(*model, cache, input.embeds, {.max_new_tokens = 6},
                                              [&](int64_t t) { streamed.push_back(t); });
    EXPECT_EQ(r.tokens, expected) << "sample " << s;
    EXPECT_EQ(streamed, expected);
    EXPECT_EQ(cache.length(), input.embeds.size(0) + 5);  // the last token is not in it yet
  }
}

TEST(BvllmGenerate, ASecondTurnContinuesTheCache) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  const BvllmSample sample = fixture_sample(f, 0);  // the video
  const std::vector<int64_t> ids = ids_of(sample);
  KVCache cache(model->config());
  const BvllmInput input = model->input_embeds(with_ids(sample, ids), {.noise_free = true});
  GenerationResult first = generate_from_embeds(*model, cache, input.embeds, {.max_new_tokens = 3});
  ASSERT_EQ(first.tokens.size(), 3u);
  // Turn two: the answer's last token, then more text; only these ids run through the model.
  const std::vector<int64_t> turn = {first.tokens.back(), 7, 11, 3};
  GenerationResult second = generate(*model, cache, turn, {.max_new_tokens = 4});

  std::vector<int64_t> whole = ids;
  whole.insert(whole.end(), first.tokens.begin(), first.tokens.end());
  whole.insert(whole.end(), turn.begin() + 1, turn.end());
  EXPECT_EQ(second.tokens, greedy_by_full_forward(*model, sample, whole, 4));
  // Stopping at an eos id works from embeddings too.
  KVCache fresh(model->config());
  GenerationResult stopped =
      generate_from_embeds(*model, fresh, input.embeds, {.max_new_tokens = 8, .eos_token_ids = {first.tokens[1]}});
  EXPECT_TRUE(stopped.stopped_at_eos);
  const auto eos = std::find(first.tokens.begin(), first.tokens.end(), first.tokens[1]);  // [0] may equal [1]
  EXPECT_EQ(stopped.tokens, std::vector<int64_t>(first.tokens.begin(), eos + 1));
}

TEST(BvllmGenerate, BadEmbeddingsAreRefused) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  KVCache cache(model->config());
  const int64_t hidden = model->config().hidden_size;
  EXPECT_NE(testing::error_of([&] {
              generate_from_embeds(*model, cache, ops::zeros({3, hidden + 1}), {});
            }).find("must be [L > 0, " + std::to_string(hidden) + "], got [3, " + std::to_string(hidden + 1) + "]"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { generate_from_embeds(*model, cache, Tensor(), {}); }).find("undefined"),
            std::string::npos);
}

}  // namespace
}  // namespace bvllm::layers
