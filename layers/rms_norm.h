// RMSNorm as Qwen2RMSNorm: y = weight * (x * rsqrt(mean(x^2) + eps) computed in f32, cast back
// to x's dtype before the multiply) — ops::rms_norm.
#pragma once

#include "layers/module.h"

namespace bvllm::layers {

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t hidden, double eps, DType dtype = DType::F32);  // weight starts at one

  Tensor forward(const Tensor& x) const;

  double eps() const { return eps_; }
  Tensor& weight() { return weight_; }
  const Tensor& weight() const { return weight_; }

  void reset_parameters(Generator& gen, double std) override;  // ones

 private:
  Tensor weight_;
  double eps_;
};

}  // namespace bvllm::layers
