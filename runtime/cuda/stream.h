// Streams and events (RAII), and the stream every bvllm kernel launches on.
// CUDA-only header: include from .cu files and CUDA-only .cc files.
#pragma once

#include <cuda_runtime.h>

#include "runtime/cuda/check.h"

namespace bvllm::cuda {

class Stream {
 public:
  // A non-blocking stream on `device` (it does not synchronize with the legacy default stream).
  explicit Stream(int device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }
  void synchronize() const { BVLLM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
  int device_;
};

class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t stream) { BVLLM_CUDA_CHECK(cudaEventRecord(event_, stream)); }
  bool done() const;  // true once the recorded work has finished
  void synchronize() const { BVLLM_CUDA_CHECK(cudaEventSynchronize(event_)); }
  cudaEvent_t get() const { return event_; }
  // Milliseconds between two recorded timing events.
  static float elapsed_ms(const Event& start, const Event& end);

 private:
  cudaEvent_t event_ = nullptr;
};

// The stream kernels launch on: per thread and device, bvllm's own stream unless a StreamGuard
// says otherwise.
cudaStream_t current_stream(int device);
cudaStream_t current_stream();  // of the current device

// Makes `stream` current for this thread while in scope.
class StreamGuard {
 public:
  StreamGuard(int device, cudaStream_t stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

// Launch geometry for a grid-stride loop over n elements.
inline unsigned blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// Checks the last launch (file and line of the caller).
#define BVLLM_CUDA_CHECK_LAUNCH() BVLLM_CUDA_CHECK(cudaGetLastError())

}  // namespace bvllm::cuda
