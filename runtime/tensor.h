// Tensor: a handle to shared Storage plus dtype, shape, strides and offset, and the autograd
// state of that value. Copying a Tensor copies the handle, not the data (like torch.Tensor).
//
// Views (view/reshape, transpose/permute, slice/narrow, expand, squeeze/unsqueeze) share storage
// and are recorded by autograd like any other op. Math lives in ops.h; this header keeps to
// identity, metadata, element access and the autograd entry points.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/shape.h"
#include "runtime/storage.h"

namespace bvllm {

class Tensor;
class Node;
struct AutogradMeta;

// Called with the parameter once its gradient for this backward pass is complete.
using GradReadyHook = std::function<void(Tensor&)>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Shape shape;
  Shape strides;
  int64_t offset = 0;  // in elements
  std::unique_ptr<AutogradMeta> autograd;

  TensorImpl();
  ~TensorImpl();
};

class Tensor {
 public:
  Tensor() = default;  // undefined: no storage, shape or dtype
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Uninitialized contiguous tensor.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  // A CPU tensor holding `values` (copied), shaped `shape`; 1-D when omitted (scalar() makes 0-d).
  template <typename T>
  static Tensor from(std::span<const T> values, Shape shape = {});
  template <typename T>
  static Tensor from(std::initializer_list<T> values, Shape shape = {}) {
    return from(std::span<const T>(values.begin(), values.size()), std::move(shape));
  }
  // A 0-d CPU tensor holding `value`.
  template <typename T>
  static Tensor scalar(T value) {
    return from(std::span<const T>(&value, 1), Shape{1}).reshape({});
  }
  // A view of existing storage.
  static Tensor from_storage(std::shared_ptr<Storage> storage, DType dtype, Shape shape, Shape strides, int64_t offset);

  bool defined() const { return impl_ != nullptr; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t dim() const { return static_cast<int64_t>(impl_->shape.size()); }
  int64_t numel() const { return bvllm::numel(impl_->shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }
  bool shares_storage(const Tensor& other) const { return impl_->storage == other.impl_->storage; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& other) const { return impl_ == other.impl_; }  // identity, not value

  // Raw element pointer at offset(); T must match dtype (checked).
  template <typename T>
  T* data() const;
  void* raw_data() const;
  // The single element of a one-element tensor, converted to T.
  template <typename T>
  T item() const;
  // All elements in logical (row-major) order, converted to T.
  template <typename T>
  std::vector<T> to_vector() const;

  // Views: share storage, recorded by autograd.
  Tensor view(const Shape& shape) const;     // requires compatible strides; -1 infers one dim
  Tensor reshape(const Shape& shape) const;  // view when possible, else a contiguous copy
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const { return slice(dim, start, start + length); }
  Tensor select(int64_t dim, int64_t index) const;  // removes `dim`
  Tensor expand(const Shape& shape) const;          // -1 keeps a dim; size-1 dims broadcast
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor contiguous() const;  // this tensor when already contiguous, else a copy

  Tensor to(DType dtype) const;    // cast (a copy unless already that dtype)
  Tensor to(Device device) const;  // copy across devices
  Tensor clone() const;            // contiguous copy, recorded by autograd
  // Same storage and metadata, no autograd history and requires_grad false.
  Tensor detach() const;

  // In-place writes. Refused on tensors that autograd is tracking while grad mode is on.
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // broadcasts src, converts dtype

  // --- autograd --------------------------------------------------------------------------
  bool requires_grad() const;
  Tensor& set_requires_grad(bool requires_grad = true);  // leaves only
  bool is_leaf() const;
  const Tensor& grad() const;  // undefined until a backward reaches this leaf
  void set_grad(Tensor grad);  // undefined clears it (zero_grad with set_to_none)
  const std::shared_ptr<Node>& grad_fn() const;
  uint32_t output_nr() const;
  // Runs after backward has accumulated this leaf's gradient for the pass (ZeRO-2 buckets).
  void register_grad_ready_hook(GradReadyHook hook);
  // Backpropagates from this tensor; `grad` defaults to ones for a one-element tensor.
  void backward(const Tensor& grad = Tensor()) const;

  std::string str() const;  // shape, dtype, device and (abbreviated) values

 private:
  void check_dtype(DType expected) const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& out, const Tensor& t);

// Element at a logical flat index of any-strided tensor, converted to double (printing, tests).
double element_as_double(const Tensor& t, int64_t flat_index);

}  // namespace bvllm

#include "runtime/tensor_inl.h"
