// Multi-tensor AdamW on CUDA: one launch updates many parameter tensors, each with its own
// scalars (step, lr, weight decay). The per-element math is optim::adamw_element
// (runtime/optim/adamw_math.h), the same function the CPU kernel calls. runtime/optim/adamw.cc
// collects a step's CUDA parameters and calls this; only CUDA builds compile it.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/optim/adamw_math.h"

namespace bvllm::cuda {

// One parameter's update: every buffer is contiguous, n elements, on the same device.
struct AdamWTensor {
  void* param;                  // f32, f64, bf16 or f16
  const void* grad;             // the param's dtype, or f32 for a bf16/f16 param
  void* exp_avg;                // the param's dtype, f32 for a bf16/f16 param
  void* exp_avg_sq;             // likewise
  float* master;                // the f32 master copy of a bf16/f16 param; null for f32/f64
  int64_t n;                    // elements
  optim::AdamWScalars scalars;  // this tensor's step, lr and weight decay
};

// Updates `tensors` (params of dtype `param`, grads of dtype `grad`, as above) on CUDA device
// `device`, on its current stream; asynchronous. Supported pairs: (f32, f32), (f64, f64),
// (bf16, bf16), (bf16, f32), (f16, f16), (f16, f32).
void adamw(int device, DType param, DType grad, const std::vector<AdamWTensor>& tensors);

}  // namespace bvllm::cuda
