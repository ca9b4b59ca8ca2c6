// Helpers shared by the op front-ends in runtime/ops/.
#pragma once

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::ops::detail {

void check_defined(const Tensor& t, const char* op, const char* what);
void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* op);
void check_floating(const Tensor& t, const char* op);
// Until runtime/cuda has the kernel, a CUDA tensor reaching a CPU-only op fails clearly.
void require_cpu(const Tensor& t, const char* op);
// CPU kernels compute f32/f64; bf16 and f16 inputs are widened to f32 and results narrowed back.
inline bool widen_on_cpu(const Tensor& t) { return t.device().is_cpu() && is_half(t.dtype()); }

}  // namespace bvllm::ops::detail
