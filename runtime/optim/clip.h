// Global gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ (torch/nn/utils/clip_grad.py):
//
//   total = (Σ_i ‖g_i‖_p^p)^(1/p)  over every parameter that has a grad (p = inf: max |g|)
//   clip_coef = max_norm / (total + 1e-6)
//   g_i ← g_i · min(clip_coef, 1)
//
// Multiplying by 1 changes nothing, so grads are rescaled only when clip_coef < 1 (or is NaN, which
// torch's clamp propagates into the grads). Norms are accumulated in f64. Grads are replaced, not
// written in place (set_grad(g · coef)), so grads that share storage are each scaled once.
//
// Under ZeRO-2 each rank computes grad_sum_of_squares over the shards it owns, the partial sums
// are all-reduced, and clip_grads_with_norm applies sqrt(sum) to the local shards.
#pragma once

#include <vector>

#include "runtime/tensor.h"

namespace bvllm::optim {

// Σ g² over the grads of `params` (params without a grad are skipped), in f64.
double grad_sum_of_squares(const std::vector<Tensor>& params);

// The total norm alone (norm_type > 0, or infinity).
double grad_norm(const std::vector<Tensor>& params, double norm_type = 2.0);

// Scales every grad by max_norm / (total_norm + 1e-6) when that is below 1.
void clip_grads_with_norm(const std::vector<Tensor>& params, double max_norm, double total_norm);

// torch.nn.utils.clip_grad_norm_: clips in place of the grads and returns the total norm before
// clipping (0 when no param has a grad).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);

}  // namespace bvllm::optim
