#include "layers/layer_norm.h"

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

LayerNorm::LayerNorm(int64_t dim, double eps, DType dtype) : eps_(eps) {
  BVLLM_REQUIRE(dim > 0, "LayerNorm: dim must be positive, got ", dim);
  BVLLM_REQUIRE(eps > 0, "LayerNorm: eps must be positive, got ", eps);
  weight_ = empty_parameter({dim}, dtype);
  bias_ = empty_parameter({dim}, dtype);
  if (!weight_.device().is_meta()) {  // torch's init: ones and zeros
    weight_.fill_(1.0);
    bias_.zero_();
  }
  register_parameter("weight", &weight_);
  register_parameter("bias", &bias_);
}

Tensor LayerNorm::forward(const Tensor& x) const {
  BVLLM_REQUIRE(x.dim() >= 1 && x.size(-1) == dim(), "LayerNorm: input must be [..., ", dim(), "], got ",
                shape_str(x.shape()));
  return ops::layer_norm(x, weight_, bias_, eps_);
}

void LayerNorm::reset_parameters(Generator&, double) {
  NoGradGuard no_grad;
  weight_.fill_(1.0);
  bias_.zero_();
}

}  // namespace bvllm::layers
