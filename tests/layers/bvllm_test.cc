// The whole B-VLLM model against PyTorch (tests/reference/make_bvllm_fixtures.py, following the
// released bvlm_arch.py): a batch of a 5-frame video (whose selection merges rows), an image and a
// text-only sample through a tiny EVA, both Q-Formers, the projector and a tiny Qwen2 with LoRA;
// logits, the one loss, and the gradient of every trainable parameter. Then the behaviours around
// it: noise sources, precomputed features, chronological order, input errors, the trainable sets
// of the two stages, and the paper-scale configuration built on the meta device.
#include "layers/bvllm.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "data/conversation.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"
#include "tests/support/tiny_models.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;
using testing::rel_error;

constexpr double kTolerance = 1e-5;

using testing::tiny_bvllm_config;

// The loader (bvllm_data) and the model (bvllm_layers) share no library, so each states the
// placeholder ids; they must agree.
static_assert(kVideoTokenId == data::kVideoPlaceholder && kImageTokenId == data::kImagePlaceholder &&
              kIgnoreIndex == data::kIgnoreIndex);

const NamePattern kLoraTargets = NamePattern::regex(R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)");

// The fixture's model: tiny config, LoRA r 4 / alpha 8 on every projection, its parameters.
std::shared_ptr<BvllmForCausalLM> fixture_model(const Fixture& f, const BvllmConfig& config = tiny_bvllm_config()) {
  auto model = std::make_shared<BvllmForCausalLM>(config);
  Generator gen{1};
  EXPECT_EQ(add_lora(*model, kLoraTargets, {.rank = 4, .alpha = 8.0}, gen), 14);
  const NamedTensors params = f.tensors("param.");  // every parameter, none missing or extra
  model->load_state_dict({params.begin(), params.end()});
  model->set_trainable_stage(2);
  return model;
}

std::vector<BvllmSample> fixture_batch(const Fixture& f, bool with_noise = true) {
  std::vector<BvllmSample> batch(3);
  Tensor bert_ids = f["input.bert_ids"], bert_mask = f["input.bert_mask"];
  for (int s = 0; s < 3; ++s) {
    const std::string k = std::to_string(s);
    batch[s].ids = f["input.ids." + k];
    batch[s].labels = f["input.labels." + k];
    if (s < 2) {
      batch[s].pixels = f["input.pixels." + k];
      if (with_noise) batch[s].gumbel_noise = f["input.gumbel." + k];
    }
    batch[s].bert_ids = bert_ids.select(0, s).contiguous();
    batch[s].bert_mask = bert_mask.select(0, s).contiguous();
  }
  return batch;
}

TEST(Bvllm, ForwardLossAndGradientsMatchPyTorch) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  BvllmOutput out = model->forward(fixture_batch(f));

  EXPECT_EQ(out.lengths, f["output.lengths"].to_vector<int64_t>());
  EXPECT_EQ(out.visual[0].kept, f["output.kept.0"].to_vector<int64_t>());
  EXPECT_LT(rel_error(out.visual[0].weights, f["output.weights.0"]), kTolerance);
  ASSERT_GT(out.visual[0].kept.size(), 1u);
  ASSERT_LT(out.visual[0].kept.size(), 4u) << "the fixture's video must merge some selected frames";
  EXPECT_TRUE(out.visual[2].kept.empty());  // text only

  Tensor expected_logits = f["output.logits"];
  for (size_t s = 0; s < 3; ++s) {  // padded rows are not compared
    const int64_t l = out.lengths[s];
    EXPECT_LT(rel_error(out.logits.select(0, s).narrow(0, 0, l), expected_logits.select(0, s).narrow(0, 0, l)),
              kTolerance)
        << "sample " << s;
  }
  EXPECT_LT(rel_error(out.loss.reshape({1}), f["output.loss"]), kTolerance);

  out.loss.backward();
  // Gradients are compared against the largest reference gradient of their part (the vision side
  // or the LoRA adapters): f32 backpropagation errors scale with the upstream gradient, not with
  // one tensor's own magnitude. Key biases show why: their exact gradient is zero (softmax does not
  // see a constant added to every key score), so both sides hold only rounding noise (~1e-9).
  std::map<std::string, double> scale;
  auto part = [](const std::string& name) { return name.find("lora_") != std::string::npos ? "lora" : "vision"; };
  for (const auto& [name, p] : model->named_trainable_parameters()) {
    if (!f.has("grad." + name)) continue;
    double& s = scale[part(name)];
    s = std::max(s, static_cast<double>(ops::max(ops::abs(f["grad." + name]).reshape({-1}), 0).item<float>()));
  }
  int64_t compared = 0;
  for (const auto& [name, p] : model->named_trainable_parameters()) {
    if (f.has("grad." + name)) {
      ASSERT_TRUE(p.grad().defined()) << name;
      const double diff = ops::max(ops::abs(ops::sub(p.grad(), f["grad." + name])).reshape({-1}), 0).item<float>();
      EXPECT_LT(diff / scale[part(name)], kTolerance) << name;
      ++compared;
    } else if (p.grad().defined()) {  // PyTorch gives such a parameter no gradient at all
      EXPECT_EQ(ops::sum(ops::abs(p.grad())).item<float>(), 0.0f) << name;
    }
  }
  EXPECT_GT(compared, 200);
  for (const auto& [name, p] : model->named_parameters()) {  // EVA and the LLM's base weights
    const bool trainable = name.find("vlm_att") != std::string::npos || name.find("lora_") != std::string::npos;
    if (!trainable) {
      EXPECT_FALSE(p.grad().defined()) << name << " is frozen";
    }
  }
}

TEST(Bvllm, NoiseComesFromTheSampleTheGeneratorOrNowhere) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  auto batch = fixture_batch(f, /*with_noise=*/false);
  batch.resize(1);
  Generator a{7}, b{7}, c{8};
  Tensor wa = model->forward(batch, {.generator = &a}).visual[0].weights;
  Tensor wb = model->forward(batch, {.generator = &b}).visual[0].weights;
  Tensor wc = model->forward(batch, {.generator = &c}).visual[0].weights;
  EXPECT_EQ(rel_error(wa, wb), 0.0);  // seeded: reproducible
  EXPECT_GT(rel_error(wa, wc), 1e-3);
  // Noise-free: softmax(S / tau), the same every time, and different from any noisy draw.
  Tensor w1 = model->forward(batch, {.noise_free = true}).visual[0].weights;
  Tensor w2 = model->forward(batch, {.noise_free = true}).visual[0].weights;
  EXPECT_EQ(rel_error(w1, w2), 0.0);
  EXPECT_GT(rel_error(w1, wa), 1e-3);
}

TEST(Bvllm, PrecomputedVisionFeaturesGiveTheSameResult) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  auto batch = fixture_batch(f);
  BvllmOutput from_pixels = model->forward(batch);
  batch[0].vision = model->bvllm().vision_tower->vision_tower->forward(batch[0].pixels);
  batch[0].pixels = Tensor();
  BvllmOutput from_features = model->forward(batch);
  EXPECT_EQ(rel_error(from_features.logits, from_pixels.logits), 0.0);
}

TEST(Bvllm, ChronologicalOrderSortsTheSelectedFrames) {
  Fixture f("bvllm_forward");
  BvllmConfig config = tiny_bvllm_config();
  config.chronological_order = true;
  auto model = fixture_model(f, config);
  NoGradGuard no_grad;
  auto batch = fixture_batch(f);
  batch.resize(1);
  Tensor w = model->forward(batch).visual[0].weights;
  std::vector<int64_t> order = chronological_order(w);
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], static_cast<int64_t>(i));
  // The same rows as the released (query) order, permuted.
  Tensor released = f["output.weights.0"];
  std::vector<int64_t> by_time = chronological_order(released);
  EXPECT_LT(rel_error(w, ops::index_select(released, 0, Tensor::from<int64_t>(by_time))), kTolerance);
}

TEST(Bvllm, BadSamplesAreRefusedWithTheReason) {
  Fixture f("bvllm_forward");
  auto model = fixture_model(f);
  NoGradGuard no_grad;
  auto expect_error = [&](std::vector<BvllmSample> batch, const std::string& needle) {
    try {
      model->forward(batch);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto batch = fixture_batch(f);
  auto two = batch;
  two[0].ids = ops::concat({batch[0].ids, Tensor::from<int64_t>({kVideoTokenId})}, 0);
  two[0].labels = ops::concat({batch[0].labels, Tensor::from<int64_t>({-100})}, 0);
  expect_error(two, "more than one");
  auto no_frames = batch;
  no_frames[1].pixels = Tensor();
  expect_error(no_frames, "needs pixels");
  auto stray = batch;
  stray[2].pixels = batch[1].pixels;
  expect_error(stray, "no <video>/<image> placeholder");
  auto negative = batch;
  negative[2].ids = Tensor::from<int64_t>({1, -7, 2});
  negative[2].labels = Tensor::from<int64_t>({1, 2, 3});
  expect_error(negative, "id -7");
  expect_error({}, "empty");
}

TEST(Bvllm, TrainableSetsOfTheTwoStages) {
  BvllmForCausalLM model(tiny_bvllm_config());
  Generator gen{3};
  add_lora(model, kLoraTargets, {.rank = 2, .alpha = 4.0}, gen);
  auto names = [&] {
    std::set<std::string> prefixes;
    for (const auto& [name, p] : model.named_trainable_parameters()) {
      const size_t dot = name.find('.', name.find('.') + 1);
      prefixes.insert(name.find("lora_") != std::string::npos ? "lora" : name.substr(0, dot));
    }
    return prefixes;
  };
  model.set_trainable_stage(1);
  EXPECT_EQ(names(), (std::set<std::string>{"model.vlm_att_encoder_temporal", "model.vlm_att_query_temporal",
                                            "model.vlm_att_ln_temporal", "model.vlm_att_projector_temporal",
                                            "model.vlm_att_projector_spatial", "model.vlm_att_val_projector_spatial"}));
  model.set_trainable_stage(2);
  std::set<std::string> stage2 = names();
  EXPECT_TRUE(stage2.count("lora") && stage2.count("model.vlm_att_encoder_spatial") &&
              stage2.count("model.vlm_att_query_spatial"));
  for (const std::string& n : stage2) EXPECT_TRUE(n == "lora" || n.rfind("model.vlm_att_", 0) == 0) << n;
  EXPECT_THROW(model.set_trainable_stage(3), Error);
}

TEST(Bvllm, ConfigurationErrorsNameTheField) {
  BvllmConfig c = tiny_bvllm_config();
  c.temporal_queries = 7;
  try {
    c.validate("tiny.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tiny.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("temporal_queries"), std::string::npos) << e.what();
  }
  c = tiny_bvllm_config();
  c.qformer.encoder_width = 32;
  EXPECT_THROW(c.validate(), Error);
}

// Closed forms of the parameter counts, written from the architectures (not from the code).
int64_t eva_parameters(int64_t w, int64_t m, int64_t depth, int64_t p, int64_t tokens) {
  const int64_t block = 2 * w + (3 * w * w + 2 * w) + (w * w + w) + 2 * w + (w * m + m) + (m * w + w);
  return 3 * p * p * w + w + w + tokens * w + depth * block;
}
int64_t qformer_parameters(int64_t vocab, int64_t h, int64_t inter, int64_t layers, int64_t positions, int64_t cv) {
  const int64_t self = 3 * (h * h + h) + (h * h + h) + 2 * h;
  const int64_t cross = (h * h + h) + 2 * (cv * h + h) + (h * h + h) + 2 * h;
  const int64_t ffn = (h * inter + inter) + (inter * h + h) + 2 * h;
  return vocab * h + positions * h + 2 * h + layers * (self + 2 * ffn) + (layers / 2) * cross;
}
int64_t qwen2_parameters(int64_t vocab, int64_t h, int64_t inter, int64_t layers, int64_t kv_dim) {
  const int64_t layer = (h * h + h) + 2 * (h * kv_dim + kv_dim) + h * h + 3 * h * inter + 2 * h;
  return 2 * vocab * h + layers * layer + h;
}

TEST(Bvllm, PaperScaleModelBuildsOnTheMetaDeviceAndCountsItsParameters) {
  std::shared_ptr<BvllmForCausalLM> model;
  {
    ParameterDeviceScope meta(Device::meta());
    model = std::make_shared<BvllmForCausalLM>(BvllmConfig::paper(), DType::BF16);
    Generator gen{0};
    // LoRA rank 128, alpha 256 on every projection of the LLM (research/bvllm.md §5.3).
    EXPECT_EQ(add_lora(*model, kLoraTargets, {.rank = 128, .alpha = 256.0}, gen), 7 * 28);
  }
  std::map<std::string, int64_t> counts;
  for (const ParameterCount& c : count_parameters(*model)) counts[c.part] = c.parameters;
  EXPECT_EQ(counts["vision tower (EVA ViT)"], eva_parameters(1408, 6144, 39, 14, 577));
  EXPECT_EQ(counts["temporal Q-Former"], qformer_parameters(30523, 768, 3072, 12, 512, 1408));
  EXPECT_EQ(counts["spatial Q-Former"], counts["temporal Q-Former"]);
  EXPECT_EQ(counts["queries, layer norms, projectors"],
            2 * 32 * 768 + 2 * 2 * 1408 + 2 * (768 * 1408 + 1408) + (1408 * 3584 + 3584));
  EXPECT_EQ(counts["LLM (Qwen2)"], qwen2_parameters(152064, 3584, 18944, 28, 512));
  const int64_t lora_per_layer = 128 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + 3 * (3584 + 18944));
  EXPECT_EQ(counts["LoRA adapters"], 28 * lora_per_layer);
  // research/bvllm.md §12.6: 185.66M per Q-Former; EVA ViT-g without its 40th block ~ 0.99B.
  EXPECT_NEAR(counts["temporal Q-Former"] / 1e6, 185.66, 0.01);
  EXPECT_NEAR(counts["vision tower (EVA ViT)"] / 1e9, 0.985, 0.01);
  EXPECT_NEAR(counts["LLM (Qwen2)"] / 1e9, 7.6, 0.05);  // seed table 4: 7.6B
  for (const auto& [part, n] : counts) std::cout << part << ": " << n << "\n";
}

}  // namespace
}  // namespace bvllm::layers
