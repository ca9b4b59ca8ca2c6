// scaled_dot_product_attention: argument checks and autograd around the blockwise kernels.
#include <cmath>

#include "runtime/ops/common.h"

namespace bvllm::ops {

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options) {
  const char* op = "scaled_dot_product_attention";
  detail::check_floating(q, op);
  detail::check_same_dtype_device(q, k, op);
  detail::check_same_dtype_device(q, v, op);
  BVLLM_REQUIRE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k, v must be [B, H, L, D], got ",
                shape_str(q.shape()), ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  BVLLM_REQUIRE(k.shape() == v.shape(), op, ": k ", shape_str(k.shape()), " and v ", shape_str(v.shape()), " differ");
  BVLLM_REQUIRE(q.size(0) == k.size(0) && q.size(3) == k.size(3), op, ": q ", shape_str(q.shape()), " and k ",
                shape_str(k.shape()), " differ in batch or head dim");
  BVLLM_REQUIRE(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": ", q.size(1), " query heads are not a multiple of ",
                k.size(1), " kv heads");
  Tensor mask;
  if (options.key_padding_mask.defined()) {
    const Tensor& m = options.key_padding_mask;
    BVLLM_REQUIRE(m.dim() == 2 && m.size(0) == k.size(0) && m.size(1) == k.size(2), op, ": key_padding_mask must be [",
                  k.size(0), ", ", k.size(2), "], got ", shape_str(m.shape()));
    BVLLM_REQUIRE(m.device() == q.device(), op, ": key_padding_mask is on ", m.device().str(), ", q on ",
                  q.device().str());
    mask = m.to(DType::Bool).contiguous();
  }
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  if (detail::widen_on_cpu(q)) {
    AttentionOptions o = options;
    o.scale = scale;
    return scaled_dot_product_attention(q.to(DType::F32), k.to(DType::F32), v.to(DType::F32), o).to(q.dtype());
  }
  Tensor qc = q.detach().contiguous(), kc = k.detach().contiguous(), vc = v.detach().contiguous();
  const Device device = q.device();
  Tensor out = Tensor::empty(qc.shape(), qc.dtype(), device);
  Tensor lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, detail::stat_dtype(qc.dtype()), device);
  const bool causal = options.causal;
  BVLLM_KERNEL(device, attention_forward, qc, kc, vc, mask, causal, scale, out, lse);
  Tensor saved_out = out.detach();
  record("scaled_dot_product_attention", {q, k, v}, out, [=](const GradContext& ctx) {
    Tensor g = ctx.grad().contiguous();
    Tensor gq = Tensor::empty(qc.shape(), qc.dtype(), device);
    Tensor gk = Tensor::empty(kc.shape(), kc.dtype(), device), gv = Tensor::empty(vc.shape(), vc.dtype(), device);
    BVLLM_KERNEL(device, attention_backward, qc, kc, vc, mask, causal, scale, saved_out, lse, g, gq, gk, gv);
    return std::vector<Tensor>{gq, gk, gv};
  });
  return out;
}

}  // namespace bvllm::ops
