// Device memory through the caching allocator, and host/device copies (fill and strided copy
// are kernels: runtime/cuda/copy.cu).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

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

namespace {

// Copies between the device and pageable host memory go through pinned staging buffers, chunk by
// chunk. The GPU can DMA only from and to pinned memory, so for pageable memory the driver stages
// the copy itself, synchronously (CUDA runtime API, "API synchronization behavior"); with two
// pinned buffers of our own the host memcpy of one chunk overlaps the DMA of the next (to the
// device) or of the previous one (to the host). Small copies, host memory that is already pinned
// and device-to-device copies go straight to cudaMemcpyAsync.
constexpr size_t kChunkBytes = size_t{8} << 20;
constexpr size_t kDirectBelowBytes = size_t{64} << 10;

// cudaMallocHost memory, freed with the object.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t nbytes) { BVLLM_CUDA_CHECK(cudaMallocHost(&data_, nbytes)); }
  ~PinnedBuffer() {
    if (data_) cudaFreeHost(data_);  // destructors do not throw
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  char* data() const { return static_cast<char*>(data_); }

 private:
  void* data_ = nullptr;
};

struct StagingBuffer {
  PinnedBuffer memory{kChunkBytes};
  Event done;  // recorded after the last DMA that used `memory`
};

// Two staging buffers per device, used in turn; one staged copy at a time per device.
struct Staging {
  std::mutex mutex;
  StagingBuffer buffers[2];
};

// Created on first use with `device` current (its events belong to it) and kept for the process.
Staging& staging_for(int device) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<Staging>> all;
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<Staging>& s = all[device];
  if (!s) {
    int previous = 0;
    BVLLM_CUDA_CHECK(cudaGetDevice(&previous));
    BVLLM_CUDA_CHECK(cudaSetDevice(device));
    try {
      s = std::make_unique<Staging>();
    } catch (...) {
      cudaSetDevice(previous);
      throw;
    }
    BVLLM_CUDA_CHECK(cudaSetDevice(previous));
  }
  return *s;
}

bool is_pageable(const void* host) {
  cudaPointerAttributes attributes{};
  BVLLM_CUDA_CHECK(cudaPointerGetAttributes(&attributes, host));
  return attributes.type == cudaMemoryTypeUnregistered;
}

size_t chunk_size(size_t nbytes, size_t chunk) { return std::min(kChunkBytes, nbytes - chunk * kChunkBytes); }

// Chunk i is copied into buffer i % 2 once the DMA of chunk i - 2 has left it, then queued.
void stage_to_device(char* dst, const char* src, size_t nbytes, Staging& staging, cudaStream_t stream) {
  for (size_t i = 0; i * kChunkBytes < nbytes; ++i) {
    StagingBuffer& b = staging.buffers[i % 2];
    const size_t n = chunk_size(nbytes, i);
    b.done.synchronize();
    std::memcpy(b.memory.data(), src + i * kChunkBytes, n);
    BVLLM_CUDA_CHECK(cudaMemcpyAsync(dst + i * kChunkBytes, b.memory.data(), n, cudaMemcpyHostToDevice, stream));
    b.done.record(stream);
  }
}

// The DMA of chunk i + 1 is queued before chunk i is copied out of its buffer, so the two overlap.
// Buffer (i + 1) % 2 is free by then: chunk i - 1 was copied out of it in the previous step.
void stage_to_host(char* dst, const char* src, size_t nbytes, Staging& staging, cudaStream_t stream) {
  const size_t chunks = (nbytes + kChunkBytes - 1) / kChunkBytes;
  auto queue = [&](size_t i) {
    StagingBuffer& b = staging.buffers[i % 2];
    BVLLM_CUDA_CHECK(
        cudaMemcpyAsync(b.memory.data(), src + i * kChunkBytes, chunk_size(nbytes, i), cudaMemcpyDeviceToHost, stream));
    b.done.record(stream);
  };
  queue(0);
  for (size_t i = 0; i < chunks; ++i) {
    if (i + 1 < chunks) queue(i + 1);
    StagingBuffer& b = staging.buffers[i % 2];
    b.done.synchronize();
    std::memcpy(dst + i * kChunkBytes, b.memory.data(), chunk_size(nbytes, i));
  }
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  // Ordered after the kernels queued on the current stream, then waited for: the host may read dst.
  int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  cudaStream_t stream = current_stream(device);
  const bool staged = nbytes >= kDirectBelowBytes && dst_device.is_cuda() != src_device.is_cuda() &&
                      is_pageable(dst_device.is_cpu() ? dst : src);
  if (!staged) {
    BVLLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, stream));
    BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  Staging& staging = staging_for(device);
  std::lock_guard<std::mutex> lock(staging.mutex);
  // A copy that failed half way may have left DMAs in flight on another stream.
  for (StagingBuffer& b : staging.buffers) b.done.synchronize();
  if (dst_device.is_cuda()) {
    stage_to_device(static_cast<char*>(dst), static_cast<const char*>(src), nbytes, staging, stream);
  } else {
    stage_to_host(static_cast<char*>(dst), static_cast<const char*>(src), nbytes, staging, stream);
  }
  BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace bvllm::cuda
