// The CUDA seam when bvllm is built without CUDA: host copies work, device requests fail clearly.
#include <cstring>

#include "runtime/cuda/backend.h"
#include "runtime/error.h"

namespace bvllm::cuda {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(str_cat(what, ": bvllm was built without CUDA (configure with BVLLM_CUDA=ON on a machine with nvcc)"));
}
}  // namespace

MemoryStats memory_stats(int) { return {}; }
void reset_peak_memory(int) {}
void empty_cache(int) {}
void set_poison_allocations(bool) {}
bool available() { return false; }
void synchronize(int) { no_cuda("cuda::synchronize"); }
int device_count() { return 0; }
void* device_malloc(size_t, int) { no_cuda("cuda::device_malloc"); }
void device_free(void*, int) {}
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (dst_device.is_cuda() || src_device.is_cuda()) no_cuda("cuda::copy_bytes");
  std::memcpy(dst, src, nbytes);
}
void fill(Tensor&, double) { no_cuda("cuda::fill"); }
void copy(const Tensor&, Tensor&) { no_cuda("cuda::copy"); }

}  // namespace bvllm::cuda
