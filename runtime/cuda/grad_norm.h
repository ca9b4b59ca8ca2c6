// The CUDA reduction behind gradient-norm clipping (runtime/optim/clip.cc), the counterpart of
// runtime/cpu/grad_norm.h for many tensors at once. Only CUDA builds compile it.
#pragma once

#include <vector>

#include "runtime/tensor.h"

namespace bvllm::cuda {

// Over every element of `tensors` (contiguous CUDA tensors of f32, f64, bf16 or f16 on device
// `device`), accumulated in f64: p finite and > 0: Σ |x|^p (p = 2: Σ x²); p = inf: max |x| (NaN if
// any element is NaN). Per-block partials are combined in a fixed order, so the result is the
// same on every run (it may differ from the CPU's in the last bits: the summation order differs).
// Synchronizes the device's current stream to return the value.
double norm_partial(int device, const std::vector<Tensor>& tensors, double p);

}  // namespace bvllm::cuda
