// The CUDA seam of the runtime: device memory, copies and the few kernels Tensor itself needs.
// Built from backend.cu when the CUDA toolkit is present, else from backend_none.cc, whose
// functions fail with a clear error. Op kernels join in runtime/cuda/ with the CPU signatures.
#pragma once

#include <cstddef>

#include "runtime/device.h"

namespace bvllm {
class Tensor;
}

namespace bvllm::cuda {

// Device memory statistics (the caching allocator's); zeros without CUDA.
struct MemoryStats {
  int64_t allocated_bytes = 0;       // in live tensors
  int64_t reserved_bytes = 0;        // held from the driver (allocated + cached)
  int64_t peak_allocated_bytes = 0;  // since start or reset_peak_memory
  int64_t peak_reserved_bytes = 0;
  int64_t allocations = 0;     // allocate() calls
  int64_t device_mallocs = 0;  // cudaMalloc calls (cache misses)
  int64_t cache_flushes = 0;   // cache released to retry after an out-of-memory
};
MemoryStats memory_stats(int device);
void reset_peak_memory(int device);
void empty_cache(int device);
// Tests: fill every new device allocation with 0xFF bytes (NaN in every float dtype), so a kernel
// that leaves an output element unwritten is caught.
void set_poison_allocations(bool poison);

bool available();              // built with CUDA and a device is present
void synchronize(int device);  // waits for the device's current stream
int device_count();
// Device memory from the caching allocator, ordered on the device's current stream.
void* device_malloc(size_t nbytes, int device);
void device_free(void* p, int device);
// Copies between any two of host and device memory.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);
void fill(Tensor& t, double value);
void copy(const Tensor& src, Tensor& dst);  // same device, same shape

}  // namespace bvllm::cuda
