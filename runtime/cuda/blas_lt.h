// cuBLASLt plumbing: the checked-call macro, one handle per device, one workspace per (device,
// stream), and the fused-epilogue GEMM that later fused linear layers call. gemm_batched itself
// (kernels.h) is built on the same plan cache in gemm.cu.
//
// Row-major convention (research/cuda-backend.md §1.2): cuBLASLt is column-major, and a row-major
// [R, C] buffer is the column-major [C, R] matrix, so out[M, N] = A[M, K] B[K, N] runs as the
// column-major product out^T[N, M] = B^T A^T with the operands swapped. Callers here think in
// row-major terms only; gemm.cu does the swap.
//
// CUDA-only header: include from .cu files and CUDA-only .cc files.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "runtime/error.h"

namespace bvllm {
class Tensor;
}

// Every cuBLASLt call is checked; a failure names the call, the file, the line and the status.
#define BVLLM_CUBLAS_CHECK(call)                                                                 \
  do {                                                                                           \
    cublasStatus_t bvllm_status_ = (call);                                                       \
    if (bvllm_status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      throw ::bvllm::Error(::bvllm::str_cat(#call, " failed at ", __FILE__, ":", __LINE__, ": ", \
                                            cublasLtGetStatusName(bvllm_status_), " (",          \
                                            cublasLtGetStatusString(bvllm_status_), ")"));       \
  } while (0)

namespace bvllm::cuda {

// The cuBLASLt handle of `device`, created on first use and kept for the process (one per device;
// a cuBLASLt handle holds no stream, and the plans that do hold per-call state are per thread).
cublasLtHandle_t blas_lt_handle(int device);

// Scratch for cuBLASLt kernels (split-K partials and the like): 32 MiB on Hopper and later, 4 MiB
// before (research §1.5), one per (device, stream) because two streams must not share one.
struct BlasLtWorkspace {
  void* data;
  size_t bytes;
};
BlasLtWorkspace blas_lt_workspace(int device, cudaStream_t stream);

// What cuBLASLt does after the product (research §1.3), in row-major terms for out[M, N] = A B:
enum class GemmEpilogue {
  kNone,
  kBias,         // out = A B + bias[N] (bias broadcast over rows: a linear layer's bias)
  kGeluAuxBias,  // aux = A B + bias[N]; out = gelu(aux)
  kDGelu,        // out = (A B) * gelu'(aux), aux the pre-activation that kGeluAuxBias saved
  kBGradB,       // out = A B; bias[M] = sum over k of A[m, k] (A = dY^T: a linear's bias grad)
};
const char* epilogue_name(GemmEpilogue epilogue);

// out[M, N] = A[M, K] B[K, N] followed by `epilogue`, on the current stream of out's device: the
// fused form of a linear layer (forward: A = x, B = W^T with kBias or kGeluAuxBias; backward:
// dX = dY W with kDGelu for the layer after a GELU, dW = dY^T X with kBGradB).
// - a, b: 2-D row- or column-major views; out: contiguous [M, N]; all of one dtype.
// - bias: contiguous, that dtype; [N] and read for kBias/kGeluAuxBias, [M] and written for kBGradB.
// - aux: contiguous [M, N], that dtype, N a multiple of 8 (cuBLASLt's rule for its leading
//   dimension); written by kGeluAuxBias, read by kDGelu.
// Tensors an epilogue does not use may be undefined. bias and aux are handles: the epilogue
// writes through them although they are passed const.
// cuBLASLt's GELU is, as far as llm.c's use shows, the tanh approximation; check it against a
// reference before a model with erf GELU (ViT) fuses it (research §1.3).
// Throws bvllm::Error naming the shapes when cuBLASLt has no kernel for the combination (epilogues
// have gaps, research §1.6); callers then run the plain GEMM and a separate bias/activation kernel.
void gemm_bias_act(const Tensor& a, const Tensor& b, Tensor& out, GemmEpilogue epilogue, const Tensor& bias,
                   const Tensor& aux);

}  // namespace bvllm::cuda
