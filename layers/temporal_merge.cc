#include "layers/temporal_merge.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"
#include "runtime/ops.h"

namespace bvllm::layers {

TemporalMergePlan plan_temporal_merge(const Tensor& weights, double threshold) {
  BVLLM_REQUIRE(weights.dim() == 2 && weights.size(0) > 0, "temporal merge: weights must be [K > 0, T], got ",
                shape_str(weights.shape()));
  const int64_t k = weights.size(0), t = weights.size(1);
  std::vector<double> w;
  for (float x : weights.detach().to(DType::F32).to(Device::cpu()).to_vector<float>()) w.push_back(x);
  std::vector<double> norm(k, 0.0);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < t; ++j) norm[i] += w[i * t + j] * w[i * t + j];
    norm[i] = std::sqrt(norm[i]);
  }
  auto similarity = [&](int64_t i, int64_t j) {  // (cos + 1) / 2, as merge.py on normalized rows
    double dot = 0.0;
    for (int64_t c = 0; c < t; ++c) dot += w[i * t + c] * w[j * t + c];
    const double denom = norm[i] * norm[j];
    return (denom > 0.0 ? dot / denom : 0.0) * 0.5 + 0.5;
  };

  TemporalMergePlan plan;
  plan.group.assign(k, -1);
  for (int64_t i = 0; i < k; ++i) {
    // Entries j >= i are zero in the released score matrix, so with no earlier row the best is 0.
    double best = 0.0;
    int64_t target = 0;
    for (int64_t j = 0; j < i; ++j) {
      const double s = similarity(i, j);
      if (s > best) best = s, target = j;
    }
    if (i > 0 && best > threshold) {
      plan.group[i] = plan.group[target];  // target < i: its chain is already resolved
    } else {
      plan.group[i] = static_cast<int64_t>(plan.kept.size());
      plan.kept.push_back(i);
    }
  }
  return plan;
}

Tensor apply_temporal_merge(const Tensor& rows, const TemporalMergePlan& plan) {
  const int64_t k = static_cast<int64_t>(plan.group.size()), kept = static_cast<int64_t>(plan.kept.size());
  BVLLM_REQUIRE(rows.dim() >= 1 && rows.size(0) == k, "temporal merge: ", k, " rows planned, got tensor ",
                shape_str(rows.shape()));
  if (kept == k) return rows;  // nothing merged
  // An averaging matrix M [K', K], M[g, i] = 1 / |group g| for i in g: one GEMM, and autograd
  // routes each kept row's gradient back to every member of its group.
  std::vector<int64_t> sizes(kept, 0);
  for (int64_t g : plan.group) ++sizes[g];
  std::vector<float> m(kept * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) m[plan.group[i] * k + i] = 1.0f / static_cast<float>(sizes[plan.group[i]]);
  Tensor average = Tensor::from<float>(m, {kept, k}).to(rows.dtype()).to(rows.device());
  Shape out_shape = rows.shape();
  out_shape[0] = kept;
  return ops::matmul(average, rows.reshape({k, rows.numel() / std::max<int64_t>(k, 1)})).reshape(out_shape);
}

}  // namespace bvllm::layers
