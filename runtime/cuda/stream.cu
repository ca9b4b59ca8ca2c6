#include <map>
#include <memory>
#include <mutex>

#include "runtime/cuda/stream.h"

namespace bvllm::cuda {

Stream::Stream(int device) : device_(device) {
  int previous = 0;
  BVLLM_CUDA_CHECK(cudaGetDevice(&previous));
  BVLLM_CUDA_CHECK(cudaSetDevice(device));
  BVLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  BVLLM_CUDA_CHECK(cudaSetDevice(previous));
}

Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);  // destructors do not throw
}

Event::Event(bool timing) {
  BVLLM_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}

bool Event::done() const {
  cudaError_t status = cudaEventQuery(event_);
  if (status == cudaErrorNotReady) return false;
  BVLLM_CUDA_CHECK(status);
  return true;
}

float Event::elapsed_ms(const Event& start, const Event& end) {
  float ms = 0;
  BVLLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, end.event_));
  return ms;
}

namespace {

// bvllm's default stream per device, created on first use and kept for the process.
cudaStream_t owned_stream(int device) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<Stream>> streams;
  std::lock_guard<std::mutex> lock(mutex);
  auto& s = streams[device];
  if (!s) s = std::make_unique<Stream>(device);
  return s->get();
}

thread_local std::map<int, cudaStream_t> t_current;

}  // namespace

cudaStream_t current_stream(int device) {
  auto it = t_current.find(device);
  if (it != t_current.end()) return it->second;
  return t_current[device] = owned_stream(device);
}

cudaStream_t current_stream() {
  int device = 0;
  BVLLM_CUDA_CHECK(cudaGetDevice(&device));
  return current_stream(device);
}

StreamGuard::StreamGuard(int device, cudaStream_t stream) : device_(device), previous_(current_stream(device)) {
  t_current[device] = stream;
}

StreamGuard::~StreamGuard() { t_current[device_] = previous_; }

}  // namespace bvllm::cuda
