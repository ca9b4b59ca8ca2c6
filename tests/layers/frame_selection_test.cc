// Text-conditioned frame selection against PyTorch (tests/reference/make_bvllm_fixtures.py,
// following bvlm_arch.py L402-461): scores, Gumbel-Softmax weights with fixed noise and without
// noise, the mixed frames, the chronological order, and the gradients of the projector, the
// layer norm, the temporal states and the vision features.
#include "layers/frame_selection.h"

#include <gtest/gtest.h>

#include "layers/layer_norm.h"
#include "layers/linear.h"
#include "runtime/autograd.h"
#include "runtime/ops.h"
#include "tests/support/fixtures.h"

namespace bvllm::layers {
namespace {

using testing::Fixture;
using testing::rel_error;

constexpr double kTolerance = 1e-5;

struct Selection {
  Tensor scores, weights, frames;
};

Selection run(const Linear& projector, const LayerNorm& ln, const Tensor& vision, const Tensor& states,
              const Tensor& noise) {
  Tensor features = selection_feature(vision, SelectionFeature::Cls);
  Tensor scores = selection_scores(projector.forward(states), features);
  Tensor weights = gumbel_softmax(scores, 0.5, noise);
  Tensor patches = ln.forward(vision.narrow(1, 1, vision.size(1) - 1));
  return {scores, weights, mix_frames(weights, patches)};
}

TEST(FrameSelection, MatchesPyTorchWithFixedNoise) {
  Fixture f("frame_selection");
  Linear projector(32, 24, true);
  LayerNorm ln(24, 1e-5);
  projector.load_state_dict(
      {{"weight", f["param.vlm_att_projector_temporal.weight"]}, {"bias", f["param.vlm_att_projector_temporal.bias"]}});
  ln.load_state_dict(
      {{"weight", f["param.vlm_att_ln_temporal.weight"]}, {"bias", f["param.vlm_att_ln_temporal.bias"]}});
  Tensor vision = f["input.vision"].detach().set_requires_grad(true);
  Tensor states = f["input.temporal_states"].detach().set_requires_grad(true);

  Selection s = run(projector, ln, vision, states, f["input.gumbel"]);
  EXPECT_LT(rel_error(s.scores, f["output.scores"]), kTolerance);
  EXPECT_LT(rel_error(s.weights, f["output.weights"]), kTolerance);
  EXPECT_LT(rel_error(s.frames, f["output.frames"]), kTolerance);
  EXPECT_EQ(chronological_order(s.weights), f["output.chronological_order"].to_vector<int64_t>());

  ops::sum(ops::mul(s.frames, f["input.grad_weight"])).backward();
  EXPECT_LT(rel_error(projector.weight().grad(), f["grad.vlm_att_projector_temporal.weight"]), kTolerance);
  EXPECT_LT(rel_error(projector.bias().grad(), f["grad.vlm_att_projector_temporal.bias"]), kTolerance);
  EXPECT_LT(rel_error(ln.weight().grad(), f["grad.vlm_att_ln_temporal.weight"]), kTolerance);
  EXPECT_LT(rel_error(ln.bias().grad(), f["grad.vlm_att_ln_temporal.bias"]), kTolerance);
  EXPECT_LT(rel_error(states.grad(), f["grad.input.temporal_states"]), kTolerance);
  EXPECT_LT(rel_error(vision.grad(), f["grad.input.vision"]), kTolerance);
}

TEST(FrameSelection, NoiseFreeSelectionIsTheTemperedSoftmax) {
  Fixture f("frame_selection");
  Linear projector(32, 24, true);
  LayerNorm ln(24, 1e-5);
  projector.load_state_dict(
      {{"weight", f["param.vlm_att_projector_temporal.weight"]}, {"bias", f["param.vlm_att_projector_temporal.bias"]}});
  ln.load_state_dict(
      {{"weight", f["param.vlm_att_ln_temporal.weight"]}, {"bias", f["param.vlm_att_ln_temporal.bias"]}});
  Selection s = run(projector, ln, f["input.vision"], f["input.temporal_states"], Tensor());
  EXPECT_LT(rel_error(s.weights, f["output.weights_noise_free"]), kTolerance);
  EXPECT_LT(rel_error(s.frames, f["output.frames_noise_free"]), kTolerance);
}

TEST(FrameSelection, GeneratorNoiseIsSeededAndStandardGumbel) {
  Tensor scores = ops::zeros({64, 256});
  Generator a{1234}, b{1234}, c{99};
  Tensor na = gumbel_noise_like(scores, a), nb = gumbel_noise_like(scores, b), nc = gumbel_noise_like(scores, c);
  EXPECT_EQ(rel_error(na, nb), 0.0);  // same seed, same noise
  EXPECT_GT(rel_error(na, nc), 0.1);
  // Gumbel(0, 1): mean = Euler-Mascheroni 0.5772, variance pi^2 / 6 = 1.645 (16384 samples).
  std::vector<float> v = na.to_vector<float>();
  double mean = 0, sq = 0;
  for (float x : v) mean += x, sq += static_cast<double>(x) * x;
  mean /= static_cast<double>(v.size());
  const double var = sq / static_cast<double>(v.size()) - mean * mean;
  EXPECT_NEAR(mean, 0.5772, 0.03);
  EXPECT_NEAR(var, 1.6449, 0.08);
}

TEST(FrameSelection, PooledFeaturesAndChronologicalOrder) {
  // vision [T=2, 1 + P=2, C=1]: [CLS, p1, p2] per frame.
  Tensor vision = Tensor::from<float>({9, 1, 3, 7, -2, 4}, {2, 3, 1});
  EXPECT_EQ(selection_feature(vision, SelectionFeature::Cls).to_vector<float>(), (std::vector<float>{9, 7}));
  EXPECT_EQ(selection_feature(vision, SelectionFeature::MeanPool).to_vector<float>(), (std::vector<float>{2, 1}));
  EXPECT_EQ(selection_feature(vision, SelectionFeature::MaxPool).to_vector<float>(), (std::vector<float>{3, 4}));
  EXPECT_EQ(parse_selection_feature("mean"), SelectionFeature::MeanPool);
  EXPECT_THROW(parse_selection_feature("median"), Error);
  // Rows point at frames 2, 0, 1 (expected indices 1.9, 0.1, 1.0): time order is rows 1, 2, 0;
  // rows 0 and 3 tie and keep query order.
  Tensor w = Tensor::from<float>({0, 0.1f, 0.9f, 0.9f, 0.1f, 0, 0, 1, 0, 0, 0.1f, 0.9f}, {4, 3});
  EXPECT_EQ(chronological_order(w), (std::vector<int64_t>{1, 2, 0, 3}));
}

}  // namespace
}  // namespace bvllm::layers
