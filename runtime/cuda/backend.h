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

bool available();  // built with CUDA and a device is present
int device_count();
void* device_malloc(size_t nbytes, int device);
void device_free(void* p, int device);
// Copies between any two of host and device memory.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);
void fill(Tensor& t, double value);
void copy(const Tensor& src, Tensor& dst);  // same device, same shape

}  // namespace bvllm::cuda
