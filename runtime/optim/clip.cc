#include "runtime/optim/clip.h"

#include <algorithm>
#include <cmath>

#include "runtime/autograd.h"
#include "runtime/cpu/grad_norm.h"
#include "runtime/ops.h"

#if BVLLM_WITH_CUDA
#include <map>

#include "runtime/cuda/grad_norm.h"
#endif

namespace bvllm::optim {

namespace {

// Σ |g|^p (or max |g| for p = inf) over the defined grads. CPU grads are reduced one by one in
// param order; CUDA grads are gathered per device and reduced in one multi-tensor pass each
// (runtime/cuda/grad_norm.h), added after the CPU ones in device order.
double partial_norm(const std::vector<Tensor>& params, double p, const char* what) {
  NoGradGuard no_grad;
  double acc = 0.0;
  auto combine = [&](double part) {
    if (std::isinf(p)) {
      acc = (std::isnan(acc) || acc > part) ? acc : part;  // NaN-propagating max
    } else {
      acc += part;
    }
  };
#if BVLLM_WITH_CUDA
  std::map<int, std::vector<Tensor>> cuda_grads;  // device index -> contiguous grads
#endif
  for (size_t i = 0; i < params.size(); ++i) {
    BVLLM_REQUIRE(params[i].defined(), what, ": parameter ", i, " is undefined");
    const Tensor& g = params[i].grad();
    if (!g.defined()) continue;
    BVLLM_REQUIRE(is_floating(g.dtype()), what, ": grad of parameter ", i, " has dtype ", dtype_name(g.dtype()));
#if BVLLM_WITH_CUDA
    if (g.device().is_cuda()) {
      cuda_grads[g.device().index].push_back(g.contiguous());
      continue;
    }
#else
    BVLLM_REQUIRE(g.device().is_cpu(), what, ": grad of parameter ", i, " is on ", g.device().str(),
                  " (this build has no CUDA)");
#endif
    combine(cpu::norm_partial(g.contiguous(), p));
  }
#if BVLLM_WITH_CUDA
  for (const auto& [device, grads] : cuda_grads) combine(cuda::norm_partial(device, grads, p));
#endif
  return acc;
}

void check_norm_type(double norm_type, const char* what) {
  BVLLM_REQUIRE(norm_type > 0.0, what, ": norm_type ", norm_type, " (expected > 0 or infinity)");
}

}  // namespace

double grad_sum_of_squares(const std::vector<Tensor>& params) {
  return partial_norm(params, 2.0, "grad_sum_of_squares");
}

double grad_norm(const std::vector<Tensor>& params, double norm_type) {
  check_norm_type(norm_type, "grad_norm");
  const double acc = partial_norm(params, norm_type, "grad_norm");
  if (std::isinf(norm_type)) return acc;
  if (norm_type == 2.0) return std::sqrt(acc);
  if (norm_type == 1.0) return acc;
  return std::pow(acc, 1.0 / norm_type);
}

void clip_grads_with_norm(const std::vector<Tensor>& params, double max_norm, double total_norm) {
  BVLLM_REQUIRE(max_norm >= 0.0, "clip_grad_norm: max_norm ", max_norm, " (expected >= 0)");
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (clip_coef >= 1.0) return;  // torch multiplies by clamp(coef, max=1) = 1: nothing changes
  NoGradGuard no_grad;
  for (Tensor p : params) {  // a handle copy: set_grad acts on the shared parameter
    const Tensor g = p.grad();
    if (g.defined()) p.set_grad(ops::mul(g, clip_coef));
  }
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  const double total = grad_norm(params, norm_type);
  clip_grads_with_norm(params, max_norm, total);
  return total;
}

}  // namespace bvllm::optim
