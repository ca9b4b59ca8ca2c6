#include "runtime/storage.h"

#include <cstdlib>
#include <new>

#include "runtime/cuda/backend.h"
#include "runtime/error.h"

namespace bvllm {

Storage::Storage(void* data, size_t nbytes, Device device, Deleter deleter)
    : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}

Storage::~Storage() {
  if (deleter_) deleter_(data_);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  if (device.is_meta()) return std::make_shared<Storage>(nullptr, nbytes, device, Deleter());
  if (device.is_cuda()) {
    void* p = cuda::device_malloc(nbytes, device.index);
    return std::make_shared<Storage>(p, nbytes, device,
                                     [index = device.index](void* q) { cuda::device_free(q, index); });
  }
  constexpr size_t kAlign = 64;  // a cache line, and enough for any SIMD load
  size_t rounded = (nbytes + kAlign - 1) / kAlign * kAlign;
  void* p = rounded ? std::aligned_alloc(kAlign, rounded) : nullptr;
  if (rounded && !p) throw std::bad_alloc();
  return std::make_shared<Storage>(p, nbytes, device, [](void* q) { std::free(q); });
}

}  // namespace bvllm
