// matmul with broadcast batch dims, and linear on top of it.
#include "runtime/ops/common.h"

namespace bvllm::ops {

namespace {

// A [batch, rows, cols] view BLAS can read: last two dims row- or column-major.
Tensor as_gemm_operand(const Tensor& t, int64_t batch) {
  Tensor v = t.dim() == 3 ? t : t.reshape({batch, t.size(-2), t.size(-1)});
  const Shape& s = v.strides();
  bool row_major = s[2] == 1 || v.shape()[2] == 1;
  bool col_major = s[1] == 1 || v.shape()[1] == 1;
  return row_major || col_major ? v : v.contiguous();
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_same_dtype_device(a, b, "matmul");
  detail::check_floating(a, "matmul");
  BVLLM_REQUIRE(a.dim() >= 2 && b.dim() >= 2, "matmul: expected operands of rank >= 2, got ", shape_str(a.shape()),
                " and ", shape_str(b.shape()));
  BVLLM_REQUIRE(a.size(-1) == b.size(-2), "matmul: inner dims differ: ", shape_str(a.shape()), " @ ",
                shape_str(b.shape()));
  if (detail::widen_on_cpu(a)) return matmul(a.to(DType::F32), b.to(DType::F32)).to(a.dtype());

  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  Shape batch_shape = broadcast_shapes(batch_a, batch_b, "matmul");
  Shape out_shape = batch_shape;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());

  Tensor ad = a.detach(), bd = b.detach();
  if (batch_b.empty() && ad.is_contiguous() && !batch_shape.empty()) {
    // [..., M, K] @ [K, N]: fold the batch into M (one large GEMM instead of many).
    Tensor a2 = ad.reshape({1, numel(batch_shape) * m, k});
    Tensor o2 = out.view({1, numel(batch_shape) * m, n});
    BVLLM_KERNEL(a.device(), gemm_batched, a2, as_gemm_operand(bd.unsqueeze(0), 1), o2);
  } else {
    int64_t batch = numel(batch_shape);
    Shape ea = batch_shape, eb = batch_shape;
    ea.insert(ea.end(), {m, k});
    eb.insert(eb.end(), {k, n});
    Tensor o3 = out.view({batch, m, n});
    BVLLM_KERNEL(a.device(), gemm_batched, as_gemm_operand(ad.expand(ea), batch), as_gemm_operand(bd.expand(eb), batch),
                 o3);
  }
  record("matmul", {a, b}, out, [ad, bd](const GradContext& ctx) {
    const Tensor& g = ctx.grad();
    Tensor ga, gb;
    if (ctx.needs(0)) ga = sum_to(matmul(g, bd.transpose(-1, -2)), ad.shape());
    if (ctx.needs(1)) {
      if (bd.dim() == 2 && g.dim() > 2) {
        // Weight gradient of a batched input: one GEMM over the folded batch.
        Tensor a2 = ad.reshape({-1, ad.size(-1)});
        Tensor g2 = g.reshape({-1, g.size(-1)});
        gb = matmul(a2.transpose(0, 1), g2);
      } else {
        gb = sum_to(matmul(ad.transpose(-1, -2), g), bd.shape());
      }
    }
    return std::vector<Tensor>{ga, gb};
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_defined(weight, "linear", "weight");
  BVLLM_REQUIRE(weight.dim() == 2, "linear: weight must be [out, in], got ", shape_str(weight.shape()));
  BVLLM_REQUIRE(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ", shape_str(x.shape()),
                " does not end in in_features ", weight.size(1));
  Tensor x2 = x.dim() == 1 ? x.unsqueeze(0) : x;
  Tensor y = matmul(x2, weight.transpose(0, 1));
  if (bias.defined()) {
    BVLLM_REQUIRE(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias must be [", weight.size(0),
                  "], got ", shape_str(bias.shape()));
    y = add(y, bias);
  }
  return x.dim() == 1 ? y.squeeze(0) : y;
}

}  // namespace bvllm::ops
