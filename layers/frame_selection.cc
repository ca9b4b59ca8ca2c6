#include "layers/frame_selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/error.h"
#include "runtime/ops.h"

namespace bvllm::layers {

SelectionFeature parse_selection_feature(const std::string& name) {
  if (name == "cls") return SelectionFeature::Cls;
  if (name == "mean") return SelectionFeature::MeanPool;
  if (name == "max") return SelectionFeature::MaxPool;
  throw Error(str_cat("selection feature must be one of cls, mean, max; got '", name, "'"));
}

const char* selection_feature_name(SelectionFeature feature) {
  switch (feature) {
    case SelectionFeature::Cls: return "cls";
    case SelectionFeature::MeanPool: return "mean";
    case SelectionFeature::MaxPool: return "max";
  }
  return "?";
}

Tensor selection_feature(const Tensor& vision, SelectionFeature feature) {
  BVLLM_REQUIRE(vision.dim() == 3 && vision.size(1) >= 2,
                "frame selection: vision features must be [T, 1 + P, C], got ", shape_str(vision.shape()));
  switch (feature) {
    case SelectionFeature::Cls: return vision.select(1, 0);
    case SelectionFeature::MeanPool: return ops::mean(vision.narrow(1, 1, vision.size(1) - 1), {1});
    case SelectionFeature::MaxPool: return ops::max(vision.narrow(1, 1, vision.size(1) - 1), 1);
  }
  return {};
}

Tensor selection_scores(const Tensor& a, const Tensor& features) {
  BVLLM_REQUIRE(a.dim() == 2 && features.dim() == 2 && a.size(1) == features.size(1),
                "frame selection: queries [K, C] and frame features [T, C] must agree, got ", shape_str(a.shape()),
                " and ", shape_str(features.shape()));
  return ops::mul(ops::matmul(a, features.transpose(0, 1)), 1.0 / std::sqrt(static_cast<double>(a.size(1))));
}

Tensor gumbel_softmax(const Tensor& scores, double tau, const Tensor& noise) {
  BVLLM_REQUIRE(tau > 0, "gumbel_softmax: tau must be positive, got ", tau);
  Tensor logits = scores;
  if (noise.defined()) {
    BVLLM_REQUIRE(noise.shape() == scores.shape(), "gumbel_softmax: noise ", shape_str(noise.shape()),
                  " does not match scores ", shape_str(scores.shape()));
    logits = ops::add(logits, noise.to(scores.dtype()).to(scores.device()));
  }
  return ops::softmax(ops::mul(logits, 1.0 / tau), -1);
}

Tensor gumbel_noise_like(const Tensor& scores, Generator& gen) {
  return ops::gumbel(scores.shape(), gen, scores.dtype(), scores.device());
}

Tensor mix_frames(const Tensor& weights, const Tensor& patches) {
  BVLLM_REQUIRE(weights.dim() == 2 && patches.dim() == 3 && weights.size(1) == patches.size(0),
                "frame selection: weights [K, T] and patches [T, P, C] must agree, got ", shape_str(weights.shape()),
                " and ", shape_str(patches.shape()));
  const int64_t t = patches.size(0), p = patches.size(1), c = patches.size(2);
  Tensor mixed = ops::matmul(weights.to(patches.dtype()), patches.reshape({t, p * c}));
  return mixed.reshape({weights.size(0), p, c});
}

std::vector<int64_t> chronological_order(const Tensor& weights) {
  BVLLM_REQUIRE(weights.dim() == 2, "chronological_order: weights must be [K, T], got ", shape_str(weights.shape()));
  const int64_t k = weights.size(0), t = weights.size(1);
  std::vector<float> w = weights.detach().to(DType::F32).to(Device::cpu()).to_vector<float>();
  std::vector<double> expected(k, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < t; ++j) expected[i] += static_cast<double>(w[i * t + j]) * static_cast<double>(j);
  }
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return expected[x] < expected[y]; });
  return order;
}

}  // namespace bvllm::layers
