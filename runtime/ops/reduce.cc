// Reductions over dims: sum, mean, max, argmax, and sum_to (the backward of broadcasting).
#include <algorithm>

#include "runtime/ops/common.h"

namespace bvllm::ops {

namespace {

Tensor sum_one_dim(const Tensor& a, int d) {
  Tensor x = a.contiguous();
  DimSplit s = split_at(x.shape(), d);
  Shape out_shape = x.shape();
  out_shape[d] = 1;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  BVLLM_KERNEL(x.device(), sum_dim, x, s.outer, s.size, s.inner, out);
  return out;
}

}  // namespace

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_floating(a, "sum");
  if (detail::widen_on_cpu(a)) return sum(a.to(DType::F32), dims, keepdim).to(a.dtype());

  std::vector<int> ds;
  for (int64_t d : dims) ds.push_back(normalize_dim(d, a.dim(), "sum"));
  std::sort(ds.begin(), ds.end());
  BVLLM_REQUIRE(std::adjacent_find(ds.begin(), ds.end()) == ds.end(), "sum: a dim is repeated");
  Tensor out = a.detach();
  for (int d : ds) out = sum_one_dim(out, d);
  if (!keepdim) {
    for (size_t i = ds.size(); i-- > 0;) out = out.squeeze(ds[i]);
  }
  Shape in_shape = a.shape();
  Shape kept_shape = in_shape;
  for (int d : ds) kept_shape[d] = 1;
  record("sum", {a}, out, [in_shape, kept_shape](const GradContext& ctx) {
    return std::vector<Tensor>{ctx.grad().reshape(kept_shape).expand(in_shape).contiguous()};
  });
  return out;
}

Tensor sum(const Tensor& a) {
  std::vector<int64_t> dims(a.dim());
  for (int64_t i = 0; i < a.dim(); ++i) dims[i] = i;
  return sum(a, dims, false);
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  int64_t count = 1;
  for (int64_t d : dims) count *= a.shape()[normalize_dim(d, a.dim(), "mean")];
  return mul(sum(a, dims, keepdim), 1.0 / static_cast<double>(std::max<int64_t>(count, 1)));
}

Tensor mean(const Tensor& a) { return mul(sum(a), 1.0 / static_cast<double>(std::max<int64_t>(a.numel(), 1))); }

namespace {
std::pair<Tensor, Tensor> max_with_indices(const Tensor& a, int64_t dim, bool keepdim, const char* op) {
  detail::check_defined(a, op, "input");
  int d = normalize_dim(dim, a.dim(), op);
  BVLLM_REQUIRE(a.dim() > 0 && a.shape()[d] > 0, op, ": cannot reduce an empty dim");
  // The CPU compares in f32 (f64 for f64 and integers); CUDA reads floating dtypes directly.
  DType compute = a.device().is_cuda() && is_floating(a.dtype())      ? a.dtype()
                  : is_floating(a.dtype()) && a.dtype() != DType::F64 ? DType::F32
                                                                      : DType::F64;
  Tensor x = a.detach().to(compute).contiguous();
  DimSplit s = split_at(x.shape(), d);
  Shape out_shape = x.shape();
  out_shape[d] = 1;
  Tensor values = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(out_shape, DType::I64, x.device());
  BVLLM_KERNEL(x.device(), max_dim, x, s.outer, s.size, s.inner, values, indices);
  if (!keepdim) {
    values = values.squeeze(d);
    indices = indices.squeeze(d);
  }
  return {values, indices};
}
}  // namespace

Tensor max(const Tensor& a, int64_t dim, bool keepdim) {
  detail::check_floating(a, "max");
  auto [values, indices] = max_with_indices(a, dim, keepdim, "max");
  values = values.to(a.dtype());
  int d = normalize_dim(dim, a.dim(), "max");
  Shape in_shape = a.shape();
  record("max", {a}, values, [=](const GradContext& ctx) {
    Tensor g = ctx.grad(), idx = indices;
    if (!keepdim) {
      g = g.unsqueeze(d);
      idx = idx.unsqueeze(d);
    }
    Tensor out = zeros(in_shape, g.dtype(), g.device());
    BVLLM_KERNEL(g.device(), scatter_add, out, d, idx.contiguous(), g.contiguous());
    return std::vector<Tensor>{out};
  });
  return values;
}

Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) { return max_with_indices(a, dim, keepdim, "argmax").second; }

Tensor sum_to(const Tensor& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  BVLLM_REQUIRE(a.dim() >= static_cast<int64_t>(shape.size()), "sum_to: cannot reduce ", shape_str(a.shape()), " to ",
                shape_str(shape));
  size_t lead = a.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < a.shape().size(); ++i) {
    if (i < lead || (shape[i - lead] == 1 && a.shape()[i] != 1)) dims.push_back(static_cast<int64_t>(i));
  }
  Tensor out = dims.empty() ? a : sum(a, dims, true);
  return out.reshape(shape);
}

}  // namespace bvllm::ops
