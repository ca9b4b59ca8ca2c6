// Temporal merging of the selected frames (../shared/research/bvllm.md §2.5; merge.py
// threshold_soft_matching + merge_wavg). Rows whose selection weights point at the same frames
// are duplicates; they are averaged into one.
//
// On the rows of the selection weights W [K, T] (detached):
//   sim[i, j] = (cos(W_i, W_j) + 1) / 2 for j < i (0 otherwise)
//   row i (i > 0) is merged when max_j sim[i, j] > threshold, into d_i = the first j attaining it
//   kept rows: the rows not merged, in ascending order (row 0 is always kept)
//   each kept row u becomes the plain mean of its group: u and every row whose chain of merges
//   i -> d_i -> d_{d_i} -> ... ends at u.
//
// The released code averages row i into d_i even when d_i is itself merged, so the content of
// such a chained row is lost with the dropped d_i. Here chains are followed to their kept row.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace bvllm::layers {

struct TemporalMergePlan {
  std::vector<int64_t> kept;   // ascending row indices of W that survive
  std::vector<int64_t> group;  // per row of W: the position in `kept` of the row it ends in
};

// weights [K, T] -> the plan; computed in f64 on the host from the detached weights.
TemporalMergePlan plan_temporal_merge(const Tensor& weights, double threshold = 0.75);

// rows [K, ...] -> [K', ...] with row g the mean of the rows in group g. Differentiable in `rows`.
Tensor apply_temporal_merge(const Tensor& rows, const TemporalMergePlan& plan);

}  // namespace bvllm::layers
