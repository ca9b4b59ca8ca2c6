// Device memory through the caching allocator, and host/device copies (fill and strided copy
// are kernels: runtime/cuda/copy.cu).
#include <cstdint>

#include "runtime/cuda/allocator.h"
#include "runtime/cuda/backend.h"
#include "runtime/cuda/check.h"
#include "runtime/cuda/stream.h"
#include "runtime/tensor.h"

namespace bvllm::cuda {

bool available() { return device_count() > 0; }

void synchronize(int device) { BVLLM_CUDA_CHECK(cudaStreamSynchronize(current_stream(device))); }

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

void* device_malloc(size_t nbytes, int device) {
  BVLLM_CUDA_CHECK(cudaSetDevice(device));
  return CachingAllocator::for_device(device).allocate(nbytes, current_stream(device));
}

void device_free(void* p, int device) { CachingAllocator::for_device(device).free(p); }

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  // Ordered after the kernels queued on the current stream, then waited for: the host may read dst.
  int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  cudaStream_t stream = current_stream(device);
  BVLLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream));
  BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace bvllm::cuda
