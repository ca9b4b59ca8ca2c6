#include "layers/token_merge.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "runtime/error.h"
#include "runtime/ops.h"

namespace bvllm::layers {

int64_t spatial_tokens_per_frame(int64_t kept_frames, int64_t queries, int64_t token_budget) {
  BVLLM_REQUIRE(kept_frames > 0 && queries > 0 && token_budget >= 0, "token budget: need kept frames > 0 (got ",
                kept_frames, "), queries > 0 (got ", queries, ") and budget >= 0 (got ", token_budget, ")");
  if (token_budget == 0) return queries;
  // bvlm_arch.py: max_T = budget // Q; N = int(max(1, max_T / K' * Q)) (true division, then truncation).
  const double max_frames = static_cast<double>(token_budget / queries);
  const auto n = static_cast<int64_t>(std::max(1.0, max_frames / static_cast<double>(kept_frames) * queries));
  return std::min(n, queries);
}

namespace {

using Rows = std::vector<std::vector<double>>;

// One bipartite merge of r tokens. `x` holds the current tokens (the metric) and `mix` their
// expressions as combinations of the original tokens; both are replaced by the merged rows.
void bipartite_merge(Rows& x, Rows& mix, int64_t r) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<int64_t> a, b;
  for (int64_t i = 0; i < n; ++i) (i % 2 == 0 ? a : b).push_back(i);
  auto unit = [&](int64_t i) {
    double s = 0.0;
    for (double v : x[i]) s += v * v;
    return std::sqrt(s);
  };
  std::vector<double> norms(n);
  for (int64_t i = 0; i < n; ++i) norms[i] = unit(i);
  std::vector<double> best(a.size(), -INFINITY);
  std::vector<int64_t> match(a.size(), 0);
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t j = 0; j < b.size(); ++j) {
      double dot = 0.0;
      for (size_t c = 0; c < x[a[i]].size(); ++c) dot += x[a[i]][c] * x[b[j]][c];
      const double s = dot / (norms[a[i]] * norms[b[j]]);
      if (s > best[i]) best[i] = s, match[i] = static_cast<int64_t>(j);
    }
  }
  std::vector<int64_t> order(a.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return best[p] > best[q]; });

  // merge_wavg with unit sizes: dst = (b + sum of its sources) / (1 + #sources).
  Rows out_x, out_mix;
  for (size_t k = static_cast<size_t>(r); k < order.size(); ++k) {
    out_x.push_back(x[a[order[k]]]);
    out_mix.push_back(mix[a[order[k]]]);
  }
  Rows dst_x, dst_mix;
  std::vector<double> count(b.size(), 1.0);
  for (int64_t j : b) dst_x.push_back(x[j]), dst_mix.push_back(mix[j]);
  for (int64_t k = 0; k < r; ++k) {
    const int64_t src = a[order[k]], j = match[order[k]];
    for (size_t c = 0; c < x[src].size(); ++c) dst_x[j][c] += x[src][c];
    for (size_t c = 0; c < mix[src].size(); ++c) dst_mix[j][c] += mix[src][c];
    count[j] += 1.0;
  }
  for (size_t j = 0; j < b.size(); ++j) {
    for (double& v : dst_x[j]) v /= count[j];
    for (double& v : dst_mix[j]) v /= count[j];
    out_x.push_back(std::move(dst_x[j]));
    out_mix.push_back(std::move(dst_mix[j]));
  }
  x = std::move(out_x);
  mix = std::move(out_mix);
}

}  // namespace

Tensor merge_tokens(const Tensor& tokens, int64_t target) {
  BVLLM_REQUIRE(tokens.dim() == 3, "merge_tokens: tokens must be [F, n, C], got ", shape_str(tokens.shape()));
  BVLLM_REQUIRE(target >= 1, "merge_tokens: target must be >= 1, got ", target);
  const int64_t frames = tokens.size(0), n = tokens.size(1), c = tokens.size(2);
  if (target >= n) return tokens;
  // The matching is planned on the host in f64; the result is one batched GEMM of a per-frame
  // averaging matrix [target, n] with the tokens, so autograd needs nothing special.
  std::vector<double> host;
  for (float v : tokens.detach().to(DType::F32).to(Device::cpu()).to_vector<float>()) host.push_back(v);
  std::vector<float> matrix(frames * target * n);
  for (int64_t f = 0; f < frames; ++f) {
    Rows x(n), mix(n, std::vector<double>(n, 0.0));
    for (int64_t i = 0; i < n; ++i) {
      x[i].assign(host.begin() + (f * n + i) * c, host.begin() + (f * n + i + 1) * c);
      mix[i][i] = 1.0;
    }
    while (static_cast<int64_t>(x.size()) / 2 > target) bipartite_merge(x, mix, static_cast<int64_t>(x.size()) / 2);
    if (static_cast<int64_t>(x.size()) > target) bipartite_merge(x, mix, static_cast<int64_t>(x.size()) - target);
    CHECK_EQ(static_cast<int64_t>(mix.size()), target);
    for (int64_t i = 0; i < target; ++i) {
      for (int64_t j = 0; j < n; ++j) matrix[(f * target + i) * n + j] = static_cast<float>(mix[i][j]);
    }
  }
  Tensor average = Tensor::from<float>(matrix, {frames, target, n}).to(tokens.dtype()).to(tokens.device());
  return ops::matmul(average, tokens);
}

}  // namespace bvllm::layers
