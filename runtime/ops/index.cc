// concat/stack/split, index_select, gather, where/masked_fill, topk.
#include "runtime/ops/common.h"

namespace bvllm::ops {

Tensor concat(const std::vector<Tensor>& tensors, int64_t dim) {
  BVLLM_REQUIRE(!tensors.empty(), "concat: no tensors");
  const Tensor& first = tensors[0];
  int d = normalize_dim(dim, first.dim(), "concat");
  Shape shape = first.shape();
  shape[d] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    detail::check_same_dtype_device(first, t, "concat");
    bool compatible = t.dim() == first.dim();
    for (int64_t j = 0; compatible && j < t.dim(); ++j) compatible = j == d || t.shape()[j] == first.shape()[j];
    BVLLM_REQUIRE(compatible, "concat: tensor ", i, " has shape ", shape_str(t.shape()), ", expected ",
                  shape_str(first.shape()), " except in dim ", d);
    shape[d] += t.shape()[d];
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  std::vector<int64_t> sizes;
  {
    NoGradGuard no_grad;
    int64_t offset = 0;
    for (const Tensor& t : tensors) {
      out.narrow(d, offset, t.shape()[d]).copy_(t);
      offset += t.shape()[d];
      sizes.push_back(t.shape()[d]);
    }
  }
  record("concat", tensors, out, [sizes, d](const GradContext& ctx) {
    std::vector<Tensor> grads;
    int64_t offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      grads.push_back(ctx.needs(i) ? ctx.grad().narrow(d, offset, sizes[i]).contiguous() : Tensor());
      offset += sizes[i];
    }
    return grads;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  BVLLM_REQUIRE(!tensors.empty(), "stack: no tensors");
  int d = normalize_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  for (const Tensor& t : tensors) {
    BVLLM_REQUIRE(t.shape() == tensors[0].shape(), "stack: shapes differ: ", shape_str(t.shape()), " vs ",
                  shape_str(tensors[0].shape()));
    expanded.push_back(t.unsqueeze(d));
  }
  return concat(expanded, d);
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim) {
  int d = normalize_dim(dim, a.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  BVLLM_REQUIRE(total == a.shape()[d], "split: sizes add up to ", total, " but dim ", d, " has ", a.shape()[d]);
  std::vector<Tensor> parts;
  int64_t offset = 0;
  for (int64_t s : sizes) {
    parts.push_back(a.narrow(d, offset, s));
    offset += s;
  }
  return parts;
}

namespace {
Tensor check_index(const Tensor& index, const Tensor& a, const char* op) {
  BVLLM_REQUIRE(index.device() == a.device(), op, ": index is on ", index.device().str(), ", input on ",
                a.device().str());
  BVLLM_REQUIRE(index.dtype() == DType::I64 || index.dtype() == DType::I32, op, ": index must be i64 or i32, got ",
                dtype_name(index.dtype()));
  return index.to(DType::I64).contiguous();
}
void check_range(const Tensor& index, int64_t n, const char* op) {
  for (int64_t i : index.to_vector<int64_t>())
    BVLLM_REQUIRE(i >= 0 && i < n, op, ": index ", i, " is out of range [0, ", n, ")");
}
}  // namespace

Tensor index_select(const Tensor& a, int64_t dim, const Tensor& index) {
  int d = normalize_dim(dim, a.dim(), "index_select");
  Tensor idx = check_index(index, a, "index_select");
  BVLLM_REQUIRE(idx.dim() == 1, "index_select: index must be 1-D, got ", shape_str(idx.shape()));
  check_range(idx, a.shape()[d], "index_select");
  Shape shape = a.shape();
  shape[d] = idx.numel();
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  BVLLM_KERNEL(a.device(), index_select, a.detach().contiguous(), d, idx, out);
  Shape in_shape = a.shape();
  record("index_select", {a}, out, [in_shape, d, idx](const GradContext& ctx) {
    Tensor g = zeros(in_shape, ctx.grad().dtype(), idx.device());
    BVLLM_KERNEL(idx.device(), index_add, g, d, idx, ctx.grad().contiguous());
    return std::vector<Tensor>{g};
  });
  return out;
}

Tensor gather(const Tensor& a, int64_t dim, const Tensor& index) {
  int d = normalize_dim(dim, a.dim(), "gather");
  Tensor idx = check_index(index, a, "gather");
  bool ok = idx.dim() == a.dim();
  for (int64_t i = 0; ok && i < a.dim(); ++i) ok = i == d || idx.shape()[i] == a.shape()[i];
  BVLLM_REQUIRE(ok, "gather: index ", shape_str(idx.shape()), " must match input ", shape_str(a.shape()),
                " except in dim ", d);
  check_range(idx, a.shape()[d], "gather");
  Tensor out = Tensor::empty(idx.shape(), a.dtype(), a.device());
  BVLLM_KERNEL(a.device(), gather, a.detach().contiguous(), d, idx, out);
  Shape in_shape = a.shape();
  record("gather", {a}, out, [in_shape, d, idx](const GradContext& ctx) {
    Tensor g = zeros(in_shape, ctx.grad().dtype(), idx.device());
    BVLLM_KERNEL(idx.device(), scatter_add, g, d, idx, ctx.grad().contiguous());
    return std::vector<Tensor>{g};
  });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  detail::check_same_dtype_device(a, b, "where");
  BVLLM_REQUIRE(cond.dtype() == DType::Bool, "where: condition must be bool, got ", dtype_name(cond.dtype()));
  BVLLM_REQUIRE(cond.device() == a.device(), "where: condition is on ", cond.device().str(), ", values on ",
                a.device().str());

  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  BVLLM_KERNEL(a.device(), where, cond.expand(shape), a.detach().expand(shape), b.detach().expand(shape), out);
  Tensor c = cond.detach();
  Shape sa = a.shape(), sb = b.shape();
  record("where", {a, b}, out, [c, sa, sb](const GradContext& ctx) {
    const Tensor& g = ctx.grad();
    Tensor zero = zeros({}, g.dtype(), g.device());
    Tensor ga = ctx.needs(0) ? sum_to(where(c, g, zero), sa) : Tensor();
    Tensor gb = ctx.needs(1) ? sum_to(where(c, zero, g), sb) : Tensor();
    return std::vector<Tensor>{ga, gb};
  });
  return out;
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  return where(mask.to(DType::Bool), full({}, value, a.dtype(), a.device()), a);
}

TopK topk(const Tensor& a, int64_t k, int64_t dim) {
  BVLLM_REQUIRE(a.dim() >= 1, "topk: input must have at least one dim");
  int d = normalize_dim(dim, a.dim(), "topk");
  BVLLM_REQUIRE(k >= 0 && k <= a.shape()[d], "topk: k = ", k, " but dim ", d, " has ", a.shape()[d], " elements");
  if (d != a.dim() - 1) {
    TopK t = topk(a.transpose(d, -1), k, -1);
    return {t.values.transpose(d, -1), t.indices.transpose(d, -1)};
  }
  Tensor x = a.detach().contiguous();
  Shape shape = x.shape();
  shape.back() = k;
  Tensor values = Tensor::empty(shape, x.dtype(), x.device()), indices = Tensor::empty(shape, DType::I64, x.device());
  BVLLM_KERNEL(x.device(), topk, x, k, values, indices);
  if (is_floating(a.dtype())) {
    Shape in_shape = a.shape();
    int last = static_cast<int>(a.dim() - 1);
    record("topk", {a}, values, [in_shape, last, indices](const GradContext& ctx) {
      Tensor g = zeros(in_shape, ctx.grad().dtype(), indices.device());
      BVLLM_KERNEL(indices.device(), scatter_add, g, last, indices, ctx.grad().contiguous());
      return std::vector<Tensor>{g};
    });
  }
  return {values, indices};
}

}  // namespace bvllm::ops
