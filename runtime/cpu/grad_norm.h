// CPU reductions behind gradient-norm clipping (runtime/optim/clip.cc).
#pragma once

#include "runtime/tensor.h"

namespace bvllm::cpu {

// Over a contiguous CPU tensor of f32, f64, bf16 or f16, accumulated in f64 in fixed-size blocks
// summed in order, so the result does not depend on the number of threads.
// p finite and > 0: Σ |x|^p (p = 2: Σ x²). p = inf: max |x| (NaN if any element is NaN).
double norm_partial(const Tensor& x, double p);

}  // namespace bvllm::cpu
