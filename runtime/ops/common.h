// Helpers shared by the op front-ends in runtime/ops/.
#pragma once

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::ops::detail {

void check_defined(const Tensor& t, const char* op, const char* what);
void check_same_dtype_device(const Tensor& a, const Tensor& b, const char* op);
void check_floating(const Tensor& t, const char* op);
// In a build without CUDA, a CUDA tensor reaching an op fails clearly.
void require_cpu(Device device, const char* op);
// CPU kernels compute f32/f64; bf16 and f16 inputs are widened to f32 and results narrowed back.
inline bool widen_on_cpu(const Tensor& t) { return t.device().is_cpu() && is_half(t.dtype()); }
// Per-row statistics (norm mean/rstd, logsumexp) are f32, or f64 for f64 inputs.
inline DType stat_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

}  // namespace bvllm::ops::detail

// Calls cuda::NAME or cpu::NAME (runtime/{cuda,cpu}/kernels.h) by device: the one place ops pick
// a backend. Without CUDA the CPU kernel runs after require_cpu has refused CUDA tensors.
#if BVLLM_WITH_CUDA
#include "runtime/cuda/kernels.h"
#define BVLLM_KERNEL(device, name, ...) \
  ((device).is_cuda() ? ::bvllm::cuda::name(__VA_ARGS__) : ::bvllm::cpu::name(__VA_ARGS__))
#else
#include "runtime/cpu/kernels.h"
#define BVLLM_KERNEL(device, name, ...) \
  (::bvllm::ops::detail::require_cpu((device), #name), ::bvllm::cpu::name(__VA_ARGS__))
#endif
