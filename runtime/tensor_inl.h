// Template members of Tensor. Included at the end of tensor.h only.
#pragma once

#include <cstring>

namespace bvllm {

template <typename T>
Tensor Tensor::from(std::span<const T> values, Shape shape) {
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  BVLLM_REQUIRE(bvllm::numel(shape) == static_cast<int64_t>(values.size()), "Tensor::from: ", values.size(),
                " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>());
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}

template <typename T>
T* Tensor::data() const {
  check_dtype(dtype_of<T>());
  return static_cast<T*>(raw_data());
}

template <typename T>
T Tensor::item() const {
  BVLLM_REQUIRE(numel() == 1, "item(): tensor has ", numel(), " elements, expected 1");
  return static_cast<T>(element_as_double(*this, 0));
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  if (dtype() == dtype_of<T>() && device().is_cpu() && is_contiguous()) {
    const T* p = data<T>();
    return std::vector<T>(p, p + numel());
  }
  Tensor c = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}

}  // namespace bvllm
