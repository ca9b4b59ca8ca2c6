#include "runtime/tensor.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <numeric>
#include <optional>
#include <sstream>

#include "runtime/autograd.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cuda/backend.h"
#include "runtime/ops.h"

namespace bvllm {

TensorImpl::TensorImpl() = default;
TensorImpl::~TensorImpl() = default;

namespace {

std::shared_ptr<TensorImpl> make_impl(std::shared_ptr<Storage> storage, DType dtype, Shape shape, Shape strides,
                                      int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->dtype = dtype;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  return impl;
}

Tensor alias(const Tensor& t, Shape shape, Shape strides, int64_t offset) {
  return Tensor::from_storage(t.storage(), t.dtype(), std::move(shape), std::move(strides), offset);
}

// Resolves one -1 in a requested shape against numel.
Shape infer_shape(Shape shape, int64_t total, const char* op) {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      BVLLM_REQUIRE(infer < 0, op, ": only one dim may be -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      BVLLM_REQUIRE(shape[i] >= 0, op, ": negative size in ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    BVLLM_REQUIRE(known > 0 && total % known == 0, op, ": cannot infer -1 in ", shape_str(shape), " for ", total,
                  " elements");
    shape[infer] = total / known;
  }
  BVLLM_REQUIRE(numel(shape) == total, op, ": shape ", shape_str(shape), " does not hold ", total, " elements");
  return shape;
}

// Strides for viewing `t` as `shape` without a copy, or empty when impossible (the rule
// torch.Tensor.view uses: each run of merged dims must be contiguous within itself).
std::optional<Shape> view_strides(const Tensor& t, const Shape& shape) {
  if (t.is_contiguous()) return contiguous_strides(shape);
  const Shape& old_shape = t.shape();
  const Shape& old_strides = t.strides();
  Shape strides(shape.size());
  size_t view_d = shape.size();
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (size_t td = old_shape.size(); td-- > 0;) {
    tensor_numel *= old_shape[td];
    if (td == 0 || (old_shape[td - 1] != 1 && old_strides[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d > 0 && (view_numel < tensor_numel || shape[view_d - 1] == 1)) {
        strides[view_d - 1] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d - 1];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (td > 0) {
        chunk_base_stride = old_strides[td - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != 0) return std::nullopt;
  return strides;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) BVLLM_REQUIRE(d >= 0, "empty: negative size in ", shape_str(shape));
  auto storage = Storage::allocate(static_cast<size_t>(bvllm::numel(shape)) * dtype_size(dtype), device);
  return Tensor(make_impl(std::move(storage), dtype, shape, contiguous_strides(shape), 0));
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, DType dtype, Shape shape, Shape strides, int64_t offset) {
  CHECK_EQ(shape.size(), strides.size());
  return Tensor(make_impl(std::move(storage), dtype, std::move(shape), std::move(strides), offset));
}

int64_t Tensor::size(int64_t d) const { return shape()[normalize_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to be out of place (as torch)
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  BVLLM_REQUIRE(!device().is_meta(), "tensor ", shape_str(shape()),
                " is on the meta device: it has a shape but no data (a model built only to be described)");
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * static_cast<int64_t>(dtype_size(dtype()));
}

void Tensor::check_dtype(DType expected) const {
  BVLLM_REQUIRE(dtype() == expected, "tensor has dtype ", dtype_name(dtype()), ", expected ", dtype_name(expected));
}

// --- views -----------------------------------------------------------------------------------

Tensor Tensor::view(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), "view");
  auto strides = view_strides(*this, shape);
  BVLLM_REQUIRE(strides.has_value(), "view: cannot view a tensor of shape ", shape_str(this->shape()), " and strides ",
                shape_str(this->strides()), " as ", shape_str(shape), " without a copy; use reshape");
  Tensor out = alias(*this, shape, *strides, offset());
  Shape in_shape = this->shape();
  record("view", {*this}, out,
         [in_shape](const GradContext& ctx) { return std::vector<Tensor>{ctx.grad().reshape(in_shape)}; });
  return out;
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), "reshape");
  if (view_strides(*this, shape)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int s = normalize_dim(start_dim, dim(), "flatten");
  int e = normalize_dim(end_dim, dim(), "flatten");
  BVLLM_REQUIRE(s <= e, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape shape(this->shape().begin(), this->shape().begin() + s);
  int64_t merged = 1;
  for (int i = s; i <= e; ++i) merged *= this->shape()[i];
  shape.push_back(merged);
  shape.insert(shape.end(), this->shape().begin() + e + 1, this->shape().end());
  return reshape(shape);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> order(dim());
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[normalize_dim(d0, dim(), "transpose")], order[normalize_dim(d1, dim(), "transpose")]);
  return permute(order);
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  BVLLM_REQUIRE(static_cast<int64_t>(order.size()) == dim(), "permute: got ", order.size(),
                " dims for a tensor of rank ", dim());
  Shape shape(order.size()), strides(order.size());
  std::vector<int64_t> inverse(order.size(), -1);
  for (size_t i = 0; i < order.size(); ++i) {
    int d = normalize_dim(order[i], dim(), "permute");
    BVLLM_REQUIRE(inverse[d] < 0, "permute: dim ", d, " repeated");
    inverse[d] = static_cast<int64_t>(i);
    shape[i] = this->shape()[d];
    strides[i] = this->strides()[d];
  }
  Tensor out = alias(*this, shape, strides, offset());
  record("permute", {*this}, out,
         [inverse](const GradContext& ctx) { return std::vector<Tensor>{ctx.grad().permute(inverse)}; });
  return out;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  int dd = normalize_dim(d, dim(), "slice");
  int64_t n = shape()[dd];
  BVLLM_REQUIRE(step > 0, "slice: step must be positive, got ", step);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = this->shape(), strides = this->strides();
  shape[dd] = (end - start + step - 1) / step;
  strides[dd] *= step;
  Tensor out = alias(*this, shape, strides, offset() + start * this->strides()[dd]);
  Shape in_shape = this->shape();
  DType dtype = this->dtype();
  Device device = this->device();
  record("slice", {*this}, out, [=](const GradContext& ctx) {
    Tensor g = ops::zeros(in_shape, dtype, device);
    g.slice(dd, start, end, step).copy_(ctx.grad());
    return std::vector<Tensor>{g};
  });
  return out;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int dd = normalize_dim(d, dim(), "select");
  int64_t n = shape()[dd];
  BVLLM_REQUIRE(index >= -n && index < n, "select: index ", index, " out of range for size ", n);
  if (index < 0) index += n;
  return slice(dd, index, index + 1).squeeze(dd);
}

Tensor Tensor::expand(const Shape& requested) const {
  BVLLM_REQUIRE(requested.size() >= shape().size(), "expand: cannot expand ", shape_str(shape()), " to fewer dims ",
                shape_str(requested));
  size_t lead = requested.size() - shape().size();
  Shape shape(requested.size()), strides(requested.size());
  for (size_t i = 0; i < requested.size(); ++i) {
    if (i < lead) {
      BVLLM_REQUIRE(requested[i] >= 0, "expand: new leading dim ", i, " cannot be -1");
      shape[i] = requested[i];
      strides[i] = 0;
      continue;
    }
    int64_t have = this->shape()[i - lead];
    int64_t want = requested[i] == -1 ? have : requested[i];
    BVLLM_REQUIRE(have == want || have == 1, "expand: cannot expand ", shape_str(this->shape()), " to ",
                  shape_str(requested));
    shape[i] = want;
    strides[i] = have == want ? this->strides()[i - lead] : 0;
  }
  Tensor out = alias(*this, shape, strides, offset());
  Shape in_shape = this->shape();
  record("expand", {*this}, out,
         [in_shape](const GradContext& ctx) { return std::vector<Tensor>{ops::sum_to(ctx.grad(), in_shape)}; });
  return out;
}

Tensor Tensor::squeeze(int64_t d) const {
  int dd = normalize_dim(d, dim(), "squeeze");
  if (shape()[dd] != 1) return *this;
  Shape shape = this->shape();
  shape.erase(shape.begin() + dd);
  return view(shape);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int dd = normalize_dim(d, dim() + 1, "unsqueeze");
  Shape shape = this->shape();
  shape.insert(shape.begin() + dd, 1);
  return view(shape);
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  {
    NoGradGuard no_grad;
    out.copy_(*this);
  }
  record("clone", {*this}, out, [](const GradContext& ctx) { return std::vector<Tensor>{ctx.grad()}; });
  return out;
}

Tensor Tensor::to(DType target) const { return target == dtype() ? *this : ops::cast(*this, target); }

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  cuda::copy_bytes(out.raw_data(), target, src.raw_data(), src.device(), src.nbytes());
  Device source = device();
  record("to_device", {*this}, out,
         [source](const GradContext& ctx) { return std::vector<Tensor>{ctx.grad().to(source)}; });
  return out;
}

Tensor Tensor::detach() const { return alias(*this, shape(), strides(), offset()); }

// --- in-place writes -------------------------------------------------------------------------

namespace {
void check_writable(const Tensor& t, const char* op) {
  BVLLM_REQUIRE(!(grad_mode_enabled() && t.requires_grad()), op,
                ": in-place write to a tensor that requires grad; use NoGradGuard or detach()");
}
}  // namespace

Tensor& Tensor::fill_(double value) {
  check_writable(*this, "fill_");
  if (device().is_cuda()) {
    cuda::fill(*this, value);
  } else {
    cpu::fill(*this, value);
  }
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_writable(*this, "copy_");
  Tensor s = src.shape() == shape() ? src : src.detach().expand(shape());
  if (s.device() != device()) s = s.contiguous().to(device());
  if (device().is_cuda()) {
    cuda::copy(s, *this);
  } else {
    cpu::copy(s, *this);
  }
  return *this;
}

// --- autograd accessors ----------------------------------------------------------------------

namespace {
AutogradMeta& meta(TensorImpl* impl) {
  if (!impl->autograd) impl->autograd = std::make_unique<AutogradMeta>();
  return *impl->autograd;
}
}  // namespace

bool Tensor::requires_grad() const {
  return impl_->autograd && (impl_->autograd->requires_grad || impl_->autograd->grad_fn);
}

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  BVLLM_REQUIRE(is_leaf(), "set_requires_grad: only leaf tensors can change requires_grad");
  BVLLM_REQUIRE(!requires_grad || is_floating(dtype()), "set_requires_grad: dtype ", dtype_name(dtype()),
                " cannot require grad");
  meta(impl_.get()).requires_grad = requires_grad;
  return *this;
}

bool Tensor::is_leaf() const { return !impl_->autograd || !impl_->autograd->grad_fn; }

const Tensor& Tensor::grad() const {
  static const Tensor kUndefined;
  return impl_->autograd ? impl_->autograd->grad : kUndefined;
}

void Tensor::set_grad(Tensor grad) {
  if (grad.defined()) {
    BVLLM_REQUIRE(grad.shape() == shape(), "set_grad: gradient shape ", shape_str(grad.shape()), " does not match ",
                  shape_str(shape()));
  }
  meta(impl_.get()).grad = std::move(grad);
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> kNone;
  return impl_->autograd ? impl_->autograd->grad_fn : kNone;
}

uint32_t Tensor::output_nr() const { return impl_->autograd ? impl_->autograd->output_nr : 0; }

void Tensor::register_grad_ready_hook(GradReadyHook hook) {
  BVLLM_REQUIRE(is_leaf(), "register_grad_ready_hook: only leaf tensors have grad-ready hooks");
  meta(impl_.get()).grad_ready_hooks.push_back(std::move(hook));
}

void Tensor::backward(const Tensor& grad) const {
  BVLLM_REQUIRE(requires_grad(), "backward: tensor does not require grad");
  Tensor g = grad;
  if (!g.defined()) {
    BVLLM_REQUIRE(numel() == 1, "backward: a gradient is needed for a tensor of shape ", shape_str(shape()),
                  " (only one-element tensors default to 1)");
    g = ops::ones(shape(), dtype(), device());
  }
  run_backward({*this}, {g});
}

// --- printing --------------------------------------------------------------------------------

double element_as_double(const Tensor& t, int64_t flat) {
  Tensor c = t.device().is_cpu() ? t : t.to(Device::cpu());
  int64_t off = c.offset();
  for (size_t i = c.shape().size(); i-- > 0;) {
    off += (flat % c.shape()[i]) * c.strides()[i];
    flat /= c.shape()[i];
  }
  const char* base = static_cast<const char*>(c.storage()->data()) + off * static_cast<int64_t>(dtype_size(c.dtype()));
  switch (c.dtype()) {
    case DType::F32: return *reinterpret_cast<const float*>(base);
    case DType::F64: return *reinterpret_cast<const double*>(base);
    case DType::BF16: return to_float(*reinterpret_cast<const bf16*>(base));
    case DType::F16: return to_float(*reinterpret_cast<const f16*>(base));
    case DType::I32: return *reinterpret_cast<const int32_t*>(base);
    case DType::I64: return static_cast<double>(*reinterpret_cast<const int64_t*>(base));
    case DType::U8: return *reinterpret_cast<const uint8_t*>(base);
    case DType::Bool: return *reinterpret_cast<const bool*>(base) ? 1.0 : 0.0;
  }
  return 0.0;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream out;
  out << "Tensor(" << shape_str(shape()) << ", " << dtype_name(dtype()) << ", " << device().str();
  if (requires_grad()) out << ", requires_grad";
  out << ") [";
  constexpr int64_t kShown = 8;
  int64_t n = numel();
  for (int64_t i = 0; i < std::min(n, kShown); ++i) {
    if (i) out << ", ";
    out << std::setprecision(6) << element_as_double(*this, i);
  }
  if (n > kShown) out << ", ... (" << n << " values)";
  out << "]";
  return out.str();
}

std::ostream& operator<<(std::ostream& out, const Tensor& t) { return out << t.str(); }

}  // namespace bvllm
