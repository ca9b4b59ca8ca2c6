// The optional spatial token budget of B-VLLM (../shared/research/bvllm.md §2.7; merge.py
// multi_layer_merge, bipartite_soft_matching and merge_wavg, after ToMe, Bolya et al. 2023).
//
// With K' kept frames of Q spatial tokens each and a budget of B tokens for the whole video,
// each frame keeps N = int(max(1, (B // Q) / K' * Q)) tokens. When N < Q, the frame's tokens are
// merged down by bipartite soft matching, repeated while it halves them and then once for the rest:
//   while n // 2 > N:  merge r = n // 2;   then merge r = n - N if positive.
// One merge of r tokens (per frame, x [n, C]):
//   a = even tokens, b = odd tokens, scores = norm(a) norm(b)^T (the tokens are their own metric);
//   each a token's best b match; the r a tokens with the highest best score are averaged into
//   their match (sizes start at 1 on every call, as released); output = [the other a tokens in
//   descending score order, every b token in order].
// With the released configuration (L* = 16 frames, Q = 32, B = 576) N >= 36 and nothing merges;
// it matters with L* = 32 as the paper trains (K' > 18).
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace bvllm::layers {

// N above; `queries` when `token_budget` is 0 (no budget) or the frames fit.
int64_t spatial_tokens_per_frame(int64_t kept_frames, int64_t queries, int64_t token_budget);

// tokens [F, n, C] -> [F, target, C] (unchanged when target >= n). Differentiable in `tokens`
// (the matching itself is a discrete choice made on detached values).
Tensor merge_tokens(const Tensor& tokens, int64_t target);

}  // namespace bvllm::layers
