// The AdamW update of one element, shared by the CPU kernel (runtime/cpu/adamw.cc) and the CUDA
// kernel (runtime/cuda/adamw.cu): the math lives here and nowhere else.
//
// torch.optim.AdamW, single-tensor path, amsgrad off (torch/optim/adamw.py, _single_tensor_adamw;
// research/models-formats.md §6.1), with lr the group's current (scheduled) lr and t the step
// count after this step's increment:
//
//   θ ← θ · (1 − lr·λ)                       decoupled weight decay, first, on the old θ
//   m ← β1·m + (1−β1)·g
//   v ← β2·v + (1−β2)·g²
//   denom = sqrt(v) / sqrt(1 − β2^t) + eps    eps added after bias-correcting v
//   θ ← θ − (lr / (1 − β1^t)) · m / denom
//
// The scalars are computed once per tensor in f64 (torch computes them in Python floats) and cast
// to the math type, as torch casts Python scalars to the tensor's dtype; the elementwise order
// follows torch's kernels (mul_, add_(alpha), addcmul_, sqrt / c + eps, addcdiv_).
#pragma once

#include <cmath>
#include <cstdint>

// The coefficients and the element update also compile as device code for the CUDA kernel
// (runtime/cuda/adamw.cu).
#ifndef BVLLM_HOST_DEVICE
#ifdef __CUDACC__
#define BVLLM_HOST_DEVICE __host__ __device__
#else
#define BVLLM_HOST_DEVICE
#endif
#endif

namespace bvllm::optim {

// Per-tensor, per-step scalars of the update.
struct AdamWScalars {
  double decay;  // 1 − lr·weight_decay
  double beta1, beta2;
  double one_minus_beta1;  // 1 − β1
  double one_minus_beta2;  // 1 − β2
  double step_size;        // lr / (1 − β1^t)
  double bc2_sqrt;         // sqrt(1 − β2^t)
  double eps;
};

// `step` is t, the step count including this step (1 on the first update).
inline AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return AdamWScalars{
      .decay = 1.0 - lr * weight_decay,
      .beta1 = beta1,
      .beta2 = beta2,
      .one_minus_beta1 = 1.0 - beta1,
      .one_minus_beta2 = 1.0 - beta2,
      .step_size = lr / bias_correction1,
      .bc2_sqrt = std::sqrt(bias_correction2),
      .eps = eps,
  };
}

// The scalars in the math type T (f32 or f64), cast once per tensor.
template <typename T>
struct AdamWCoefficients {
  T decay, beta1, beta2, one_minus_beta1, one_minus_beta2, neg_step_size, bc2_sqrt, eps;

  BVLLM_HOST_DEVICE explicit AdamWCoefficients(const AdamWScalars& s)
      : decay(static_cast<T>(s.decay)),
        beta1(static_cast<T>(s.beta1)),
        beta2(static_cast<T>(s.beta2)),
        one_minus_beta1(static_cast<T>(s.one_minus_beta1)),
        one_minus_beta2(static_cast<T>(s.one_minus_beta2)),
        neg_step_size(static_cast<T>(-s.step_size)),
        bc2_sqrt(static_cast<T>(s.bc2_sqrt)),
        eps(static_cast<T>(s.eps)) {}
};

// One element: p (param or f32 master), g (grad), m (exp_avg), v (exp_avg_sq), all in T.
template <typename T>
BVLLM_HOST_DEVICE inline void adamw_element(T& p, T g, T& m, T& v, const AdamWCoefficients<T>& c) {
  p = p * c.decay;
  m = m * c.beta1 + c.one_minus_beta1 * g;
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const T denom = std::sqrt(v) / c.bc2_sqrt + c.eps;
  p = p + c.neg_step_size * m / denom;
}

}  // namespace bvllm::optim
