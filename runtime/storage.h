// A block of bytes on a device. Tensors share Storage; views differ only in shape/strides/offset.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "runtime/device.h"

namespace bvllm {

class Storage {
 public:
  using Deleter = std::function<void(void*)>;
  // Takes ownership of `data`; `deleter` frees it (an allocator's free, munmap, ...).
  Storage(void* data, size_t nbytes, Device device, Deleter deleter);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  // Fresh, uninitialized bytes from the device's allocator (64-byte aligned on the CPU).
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  Deleter deleter_;
};

}  // namespace bvllm
