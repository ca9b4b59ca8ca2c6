#include "layers/rms_norm.h"

#include "runtime/autograd.h"
#include "runtime/ops.h"

namespace bvllm::layers {

RMSNorm::RMSNorm(int64_t hidden, double eps, DType dtype) : eps_(eps) {
  BVLLM_REQUIRE(hidden > 0, "RMSNorm: hidden size must be positive, got ", hidden);
  BVLLM_REQUIRE(eps > 0, "RMSNorm: eps must be positive, got ", eps);
  weight_ = empty_parameter({hidden}, dtype);
  if (!weight_.device().is_meta()) weight_.fill_(1.0);  // torch's init: ones
  register_parameter("weight", &weight_);
}

Tensor RMSNorm::forward(const Tensor& x) const { return ops::rms_norm(x, weight_, eps_); }

void RMSNorm::reset_parameters(Generator&, double) {
  NoGradGuard no_grad;
  weight_.fill_(1.0);
}

}  // namespace bvllm::layers
